"""Session-based MIM: masking rules (padding, whole sessions, rate, determinism) and the tied-embedding loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from genrec.models.hpgr_sem import MASK_ID
from genrec.objectives.mim import MIMConfig, MIMLoss, mask_items

torch.set_num_threads(1)


def _batch(B: int = 64, N: int = 30, items: int = 100, seed: int = 0):
    """Random padded batch with 1..6 sessions per row (session ids increase along a row, 0 on padding)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, N + 1, (B,), generator=g)
    valid = torch.arange(N)[None] < lengths[:, None]
    ids = torch.randint(1, items + 1, (B, N), generator=g) * valid
    starts = torch.rand(B, N, generator=g) < 0.2
    sess = (torch.cumsum(starts.long(), 1) + 1 + 100 * torch.arange(B)[:, None]) * valid
    return ids, lengths, sess


def test_padding_is_never_touched():
    ids, lengths, sess = _batch()
    pad = ~(torch.arange(ids.shape[1])[None] < lengths[:, None])
    cfg = MIMConfig(mask_ratio=0.9, session_mask_prob=1.0)
    for seed in range(20):
        m = mask_items(ids, lengths, sess, 100, cfg, torch.Generator().manual_seed(seed))
        assert torch.equal(m.items[pad], ids[pad])  # still 0
        assert not m.positions[pad].any() and not (m.targets[pad] != 0).any()
        assert not m.session_positions[pad].any()
        # every loss slot targets the original (real) item
        assert torch.equal(m.targets[m.positions], ids[m.positions]) and (m.targets[m.positions] > 0).all()


def test_whole_session_masked_when_asked():
    ids, lengths, sess = _batch(seed=1)
    cfg = MIMConfig(mask_ratio=0.0, session_mask_prob=1.0)
    m = mask_items(ids, lengths, sess, 100, cfg, torch.Generator().manual_seed(3))
    for b in range(ids.shape[0]):
        n = int(lengths[b])
        row_sessions = sess[b, :n].unique()
        if len(row_sessions) < 2:  # nothing would be left to reconstruct from
            assert int(m.masked_session[b]) == -1 and not m.positions[b].any()
            continue
        s = int(m.masked_session[b])
        assert s in row_sessions.tolist()
        inside = (sess[b] == s) & (torch.arange(ids.shape[1]) < n)
        assert (m.items[b][inside] == MASK_ID).all() and m.positions[b][inside].all()
        assert m.session_positions[b].eq(inside).all()
        # no slot of another session is touched by the session rule (item rule is off here)
        assert torch.equal(m.items[b][~inside], ids[b][~inside]) and not m.positions[b][~inside].any()


def test_mask_rate_and_bert_split():
    ids, lengths, sess = _batch(B=128, N=40, seed=2)
    real = torch.arange(ids.shape[1])[None] < lengths[:, None]
    cfg = MIMConfig(session_mask_prob=0.0)
    picked = as_mask = as_same = 0
    total = 0
    for seed in range(30):
        m = mask_items(ids, lengths, sess, 100, cfg, torch.Generator().manual_seed(seed))
        picked += int(m.positions.sum())
        as_mask += int((m.items[m.positions] == MASK_ID).sum())
        as_same += int((m.items[m.positions] == ids[m.positions]).sum())
        total += int(real.sum())
    assert abs(picked / total - 0.2) < 0.01
    assert abs(as_mask / picked - 0.8) < 0.02
    # unchanged = the 10% "keep" share plus random draws that hit the same id (1%)
    assert abs(as_same / picked - 0.1) < 0.02


def test_masking_is_deterministic_given_generator():
    ids, lengths, sess = _batch(seed=4)
    a = mask_items(ids, lengths, sess, 100, MIMConfig(session_mask_prob=0.5), torch.Generator().manual_seed(7))
    b = mask_items(ids, lengths, sess, 100, MIMConfig(session_mask_prob=0.5), torch.Generator().manual_seed(7))
    for f in ("items", "targets", "positions", "masked_session"):
        assert torch.equal(getattr(a, f), getattr(b, f))


def test_loss_full_softmax_matches_definition_and_sampled_path_is_finite():
    torch.manual_seed(0)
    table = torch.randn(51, 8)
    states = torch.randn(6, 8, requires_grad=True)
    targets = torch.tensor([1, 5, 50, 7, 7, 2])
    full = MIMLoss(MIMConfig(), num_items=50)
    assert full.full
    logits = F.normalize(states, dim=-1) @ F.normalize(table[1:], dim=-1).T / 0.05
    want = F.cross_entropy(logits, targets - 1, reduction="sum")
    assert torch.allclose(full(states, targets, table), want, atol=1e-4)
    sampled = MIMLoss(MIMConfig(full_softmax_max_items=10, num_negatives=512), num_items=50)
    assert not sampled.full
    loss = sampled(states, targets, table, torch.Generator().manual_seed(0))  # most positives are drawn too
    loss.backward()
    assert torch.isfinite(loss) and states.grad is not None and torch.isfinite(states.grad).all()


def test_bad_config_is_rejected():
    from genrec.errors import ConfigError

    with pytest.raises(ConfigError):
        MIMLoss(MIMConfig(mask_token_frac=0.95, random_token_frac=0.1), num_items=5)
