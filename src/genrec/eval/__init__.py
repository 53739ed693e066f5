"""Evaluation: one entry for every kind (``evaluate.py``), the metric registry, the per-kind metrics and the one
results-record builder that stamps the protocol, version, commit and date."""
