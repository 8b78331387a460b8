"""monarchpc: probabilistic circuits with dense or Monarch sum blocks, trained by stochastic EM.

Data flow: ``data`` -> ``circuits`` -> ``learning`` -> ``train`` (the loop) -> ``reports``.
"""

__version__ = "0.1.0"
