"""Reports: the paper's tables and figures regenerated from run records.

``records`` finds and loads runs (run directories, wandb), ``paper`` holds the paper's
numbers, ``tables`` and ``plots`` build the outputs, ``measure`` takes the measurements
that need a checkpoint (sampling time, hidden-state pruning).
"""
