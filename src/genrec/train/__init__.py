"""Training: the loop, atomic checkpoints with exact resume, logs, and data parallelism."""
