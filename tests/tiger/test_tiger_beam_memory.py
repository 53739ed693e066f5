"""TIGER and GLASS beams that read their user's encoder memory once (``beam_memory: shared``) find what the
per-row reference path (the memory copied for every beam and step) finds, on models sharp enough that a wrong
key row or mask changes the beams: the same items in the same order, the same scores to float rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genrec.models.tiger import TIGER
from genrec.sid import SIDTable
from tests.glass import conftest as glass_conf

NUM_ITEMS = 40
# float64: nothing but the paths can separate them; fp32: 1e-5 on the scores (plus 1e-6 relative, as the sharp
# models give log-probabilities of -10 to -30)
TOLERANCE = {torch.float64: {"atol": 1e-9, "rtol": 0.0}, torch.float32: {"atol": 1e-5, "rtol": 1e-6}}


def sharpen(model: torch.nn.Module, seed: int) -> None:
    """Large random weights: peaked attention over the memory."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (1.0 if "norm" in name else 0.4))


def sharp_tiger(seed: int) -> TIGER:
    model = TIGER(TIGER.Config(d_model=32, num_encoder_layers=2, num_decoder_layers=2, num_heads=2, head_dim=16,
                               d_ff=64, dropout=0.0, codebook_size=8, sid_length=4, num_user_buckets=16),
                  num_items=NUM_ITEMS, max_len=12)
    ids = np.arange(1, NUM_ITEMS + 1)
    codes = np.random.default_rng(seed).integers(0, 4, size=(NUM_ITEMS, 3))
    model.set_sid_table(SIDTable.build(ids, codes, [4, 4, 4], quantizer="random"))
    sharpen(model, seed)
    return model.eval()


def both_paths(model: TIGER, hist: list[list[int]], users: np.ndarray, beam: int, constrained: bool = True):
    out = []
    for mode in ("per_row", "shared"):
        model.cfg.beam_memory = mode
        out.append(model.generate(hist, users, beam_size=beam, constrained=constrained))
    model.cfg.beam_memory = "shared"
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tiger_shared_memory_beams_equal_the_per_row_reference(seed, dtype):
    model = sharp_tiger(seed).to(dtype)
    g = np.random.default_rng(seed)
    hist = [g.integers(1, NUM_ITEMS + 1, int(k)).tolist() for k in [1, *g.integers(1, 16, 5)]]
    for constrained in (True, False):
        ref, new = both_paths(model, hist, np.arange(6), 8, constrained)
        assert torch.equal(new.items, ref.items) and torch.equal(new.sids, ref.sids)
        assert torch.allclose(new.scores, ref.scores, **TOLERANCE[dtype])
        assert float((ref.scores[:, 0] - ref.scores[:, -1]).min()) > 0.05  # told apart by the model, not by ties


@pytest.mark.parametrize("over", [{}, {"gate": "fixed"}, {"neighbour_codes": 1, "neighbour_min": 2, "long_pool": True}])
def test_glass_shared_memory_beams_equal_the_per_row_reference(over):
    """GLASS decodes through TIGER's step: the same on top of hard search (keyed by each beam's first code); fp32
    only, as its hard-search branch always runs in fp32."""
    model = glass_conf.tiny_model(seed=4, **over)
    sharpen(model, 4)
    g = np.random.default_rng(4)
    hist = [(g.permutation(glass_conf.NUM_ITEMS)[:int(k)] + 1).tolist() for k in (2, 5, 9, 12)]
    ref, new = both_paths(model, hist, np.arange(4), 6)
    assert torch.equal(new.items, ref.items) and torch.equal(new.sids, ref.sids)
    assert torch.allclose(new.scores, ref.scores, **TOLERANCE[torch.float32])
