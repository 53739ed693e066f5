"""Training: the loop, exact resume, logs, and data parallelism (checkpoints and the run-folder layout are in
:mod:`genrec.runs`)."""
