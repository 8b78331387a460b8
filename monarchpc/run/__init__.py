"""Running a training job: the loop (trainer.py) and the run directory it owns: lock,
atomic checkpoints, records, evaluation, interruption, progress, data parallel ranks."""
