"""Evaluation: full-catalogue ranking metrics and the results files that carry the protocol."""
