"""Recipe search on validation (``genrec tune``): grid, seeded random, or Optuna TPE (the ``tune`` extra)."""
