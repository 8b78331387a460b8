"""GPU kernels (Triton), each with the PyTorch twin it is tested against."""
