"""Shared-prefix decoding: beams read their user's prompt keys/values without a copy, and find what the per-row
reference path (the whole cache copied per beam and step) finds: the same items in the same order, the same
scores to float rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genrec.errors import ConfigError
from genrec.models.gamer import GAMER, PrefixCache, SharedState
from genrec.models.gamer_layers import SplitKV, masked_attention, split_attention
from genrec.sid import SIDTable, reorder_tensors, score_sids
from genrec.sid.beam import beam_search
from tests.gamer.conftest import TINY

NUM_ITEMS = 60


def sharp_model(seed: int, **over) -> GAMER:
    """A tiny GAMER with large random weights (peaked attention: a wrong key or mask changes the beams) over 60
    items whose SIDs are 3 x 4 codes + the collision level (codebook 8)."""
    torch.manual_seed(seed)
    cfg = {**TINY, "sid_length": 4, "codebook_size": 8, **over}
    model = GAMER(GAMER.Config(**cfg), num_items=NUM_ITEMS, max_len=8)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 1.0 if "norm" in name else 0.4)
    model.set_sid_table(random_sids(seed))
    return model.eval()


def random_sids(seed: int) -> SIDTable:
    ids = np.arange(1, NUM_ITEMS + 1)
    codes = np.random.default_rng(seed).integers(0, 4, size=(NUM_ITEMS, 3))
    return SIDTable.build(ids, codes, [4, 4, 4], quantizer="random")


def histories(seed: int, n: int = 5) -> tuple[list[list[int]], list[list[int]]]:
    """Histories of 0..11 interactions (the window keeps 8), one of them empty."""
    g = np.random.default_rng(seed)
    lengths = [0, *g.integers(1, 12, n - 1).tolist()]
    return ([g.integers(1, NUM_ITEMS + 1, k).tolist() for k in lengths],
            [g.integers(0, 4, k).tolist() for k in lengths])


def both_paths(model: GAMER, *args, **kwargs):
    """``generate`` with ``model.beam_memory`` per_row (the reference), then shared (the default)."""
    out = []
    for mode in ("per_row", "shared"):
        model.cfg.beam_memory = mode
        out.append(model.generate(*args, **kwargs))
    return out


def test_unknown_beam_memory_is_refused():
    with pytest.raises(ConfigError, match="beam_memory"):
        GAMER(GAMER.Config(**{**TINY, "beam_memory": "copy"}), num_items=NUM_ITEMS)


CONFIGS = [
    {},  # GQA 4 heads over 2 key heads, 2 cross-level layers
    {"released_mask": True},  # empty cross-level rows are uniform over prompt and generated keys
    {"num_kv_heads": 1, "cross_layers": 4, "injection_layers": 0},
    {"num_kv_heads": 4, "cross_layers": 0, "position_experts": False},
]


# float64: the two paths compute the same function, so only rounding far below fp32's separates them; fp32: the
# scores agree to 1e-5 (plus 1e-6 relative: these sharp models give log-probabilities of -10 to -30)
# float64 is the exactness check; float32 only has to agree to its rounding, which scales with the logits (up to
# about 50 with these weights), not with the summed score: the two paths reduce in other shapes, and on some CPUs
# (an AMD EPYC, measured) they differ by up to 2.3e-5 on scores of magnitude 28-49.
TOLERANCE = {torch.float64: {"atol": 1e-9, "rtol": 0.0}, torch.float32: {"atol": 1e-4, "rtol": 1e-6}}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("over", CONFIGS)
@pytest.mark.parametrize("seed", [0, 1])
def test_shared_prefix_beams_equal_the_per_row_reference(over, seed, dtype):
    model = sharp_model(seed, **over).to(dtype)
    items, behaviors = histories(seed)
    spread = []
    for behavior in range(4):  # behavior 0 is the lowest level: no cross-level key at all
        for constrained in (True, False):
            ref, new = both_paths(model, items, behaviors, behavior, beam_size=7, constrained=constrained)
            assert torch.equal(new.items, ref.items) and torch.equal(new.sids, ref.sids)
            assert torch.allclose(new.scores, ref.scores, **TOLERANCE[dtype])
            spread.append(float((ref.scores[:, 0] - ref.scores[:, -1]).min()))
    assert min(spread) > 0.05  # the beams are told apart by the model, not by ties


def test_shared_prefix_beams_of_a_default_initialised_model():
    """The model as training starts it (N(0, 0.02) weights): the brief's 1e-5 on the scores, same lists."""
    torch.manual_seed(11)
    model = GAMER(GAMER.Config(**{**TINY, "sid_length": 4, "codebook_size": 8}), num_items=NUM_ITEMS, max_len=8)
    model.set_sid_table(random_sids(11))
    model.eval()
    items, behaviors = histories(11, n=9)
    for behavior in range(4):
        ref, new = both_paths(model, items, behaviors, behavior, beam_size=10)
        assert torch.equal(new.items, ref.items)
        assert torch.allclose(new.scores, ref.scores, atol=1e-5, rtol=0)


@pytest.mark.parametrize("released", [False, True])
def test_shared_prefix_scores_are_the_teacher_forced_ones(released):
    """Every returned SID scored one row per SID through the shared state equals its beam score and its score
    through the reference state (in float64: nothing but the paths can differ)."""
    model = sharp_model(3, released_mask=released).double()
    items, behaviors = histories(3)
    it, bh = model.history_tensors(items, behaviors)
    res = model.generate(it, bh, 2, beam_size=6)
    with torch.no_grad():
        for u in range(it.shape[0]):
            prompt = model.prompt_tokens(it[u:u + 1].expand(6, -1), bh[u:u + 1].expand(6, -1), 2)
            step, st = model.step_fn(prompt)
            shared = score_sids(step, res.sids[u], st)
            step, st = model.step_fn(prompt, shared=False)
            ref = score_sids(step, res.sids[u], st)
            assert torch.allclose(shared, res.scores[u], atol=1e-5, rtol=0)  # the search's sums, in fp32
            assert torch.allclose(shared, ref, **TOLERANCE[torch.float64])


def test_the_prompt_cache_stays_one_row_per_user_and_is_never_copied():
    model = sharp_model(4)
    items, behaviors = histories(4)
    prompts = model.prompt_tokens(*model.history_tensors(items, behaviors), 3)
    b = prompts.shape[0]
    step, state = model.step_fn(prompts)
    prefix = state.prefix
    seen = []

    def watch(codes, st):
        assert isinstance(st, SharedState) and st.prefix is prefix  # the same object, never reordered
        seen.append((codes.shape[0], st.generated[0][0].shape))
        return step(codes, st)

    beam_search(watch, model.trie(), b, 5, state)
    assert all(c[0].shape[0] == b for c in prefix.caches)
    assert seen[0] == (b, (b, 2, 0, 8))
    assert [s for s in seen[1:]] == [(5 * b, (5 * b, 2, t, 8)) for t in range(3)]  # only generated tokens per row


def test_rows_that_are_not_runs_per_user_read_their_own_prefix():
    """A state reordered out of user order falls back to a prefix copy per row: the same logits."""
    model = sharp_model(5)
    items, behaviors = histories(5, n=3)
    prompts = model.prompt_tokens(*model.history_tensors(items, behaviors), 1)
    with torch.no_grad():
        outs = []
        for shared in (True, False):
            step, state = model.step_fn(prompts, shared)
            _, state = step(torch.zeros(3, 0, dtype=torch.long), state)
            state = reorder_tensors(state, torch.tensor([2, 0, 1, 0, 2, 1]))  # users of rows: not runs
            outs.append(step(torch.tensor([[0], [1], [2], [3], [1], [0]]), state)[0])
    assert torch.allclose(outs[0], outs[1], **TOLERANCE[torch.float32])
    assert isinstance(state, tuple) and not isinstance(state[0], PrefixCache)


@pytest.mark.parametrize("released", [False, True])
@pytest.mark.parametrize("kvh", [1, 2])
def test_split_attention_is_masked_attention_over_the_concatenated_keys(released, kvh):
    """Queries of g beams per user over [the user's prefix ; the row's generated keys], some rows without any
    allowed prefix key and, for the cross-level form, no generated key either."""
    g = torch.Generator().manual_seed(kvh)
    b, beams, h, t, s, u, dk = 3, 4, 4, 2, 6, 3, 8
    r = b * beams
    q = 2 * torch.randn(r, h, t, dk, generator=g)
    pk, pv = torch.randn(b, kvh, s, dk, generator=g), torch.randn(b, kvh, s, dk, generator=g)
    sk, sv = torch.randn(r, kvh, u, dk, generator=g), torch.randn(r, kvh, u, dk, generator=g)
    allowed_p = torch.rand(b, s, generator=g) > 0.4
    allowed_p[1] = False  # a user with no admissible prompt key
    user = torch.arange(b).repeat_interleave(beams)
    for see in (True, False):
        got = split_attention(q, SplitKV(pk, pv, allowed_p, sk, sv, see), released)
        causal = torch.arange(u)[None, :] <= (u - t + torch.arange(t))[:, None]  # (T, U)
        allowed = torch.cat([allowed_p[user][:, None, :].expand(r, t, s), (causal & see).expand(r, t, u)], -1)
        want, _ = masked_attention(q, torch.cat([pk[user], sk], 2), torch.cat([pv[user], sv], 2), allowed, released)
        assert torch.allclose(got, want, atol=1e-5, rtol=0)
        if not see and not released:
            assert got[user == 1].abs().max() == 0  # no key: zero output (the fixed mask)
