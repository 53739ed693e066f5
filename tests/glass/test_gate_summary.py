"""benchmarks/glass_gate.py: the summary that tells a mixing gate from a saturated switch."""

import pytest
import torch

from genrec.errors import GenrecError
from tests.conftest import load_benchmark


def test_gate_summary_separates_switching_from_mixing():
    mod = load_benchmark("glass_gate")
    switch = mod.gate_summary(torch.tensor([0.001, 0.999] * 500))
    assert switch["saturated"] == 1.0 and switch["mean"] == pytest.approx(0.5)
    assert switch["p10"] < 0.01 and switch["p90"] > 0.99
    mix = mod.gate_summary(torch.full((1000,), 0.5))
    assert mix["saturated"] == 0.0 and mix["p50"] == pytest.approx(0.5)
    with pytest.raises(GenrecError):
        mod.gate_summary(torch.empty(0))
