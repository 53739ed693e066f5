"""The evaluation fast path: length-sorted query batches, last-position encoding, chunked catalogue scoring.

Each piece is checked against the straightforward computation it replaces (one padded batch per run of
samples in their own order, every position encoded, one dense (B, N+1) score matrix with -inf assignments).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genrec.data.sequences import UserSequences, make_history_batch
from genrec.data.splits import EvalSamples, leave_one_out
from genrec.eval.retrieval import catalogue_ranks, history_of, length_batches, query_batches, rank_targets
from genrec.models.base import Retriever
from genrec.models.registry import build_model


def reference_ranks(model: Retriever, seqs: UserSequences, samples: EvalSamples, exclude: bool, bs: int
                    ) -> np.ndarray:
    """The evaluation as it was before the fast path: samples in their own order, dense scores."""
    table = model.item_table()
    out = []
    for a in range(0, len(samples), bs):
        rows, ends = samples.rows[a : a + bs], samples.hist_end[a : a + bs]
        hist, times = zip(*(history_of(seqs, int(r), int(e)) for r, e in zip(rows, ends)))
        pos = seqs.offsets[rows] + ends
        states = Retriever.encode(model, make_history_batch(list(hist), list(times), seqs.timestamps[pos],
                                                            model.max_len))
        s = states @ table.T
        s[:, 0] = -torch.inf
        if exclude:
            for b, h in enumerate(hist):
                s[b, torch.as_tensor(h)] = -torch.inf
        ts = s.gather(1, torch.as_tensor(seqs.items[pos])[:, None])
        out.append((s > ts).sum(1).numpy())
    return np.concatenate(out)


@pytest.fixture
def toy_split(toy):
    seqs = UserSequences.from_interactions(toy.interactions)
    return seqs, leave_one_out(seqs), toy.num_items


def test_query_batches_hold_every_sample_once_with_the_reference_inputs(toy_split) -> None:
    seqs, split, _ = toy_split
    seen = []
    for qb in query_batches(seqs, split.valid, max_len=8, batch_size=16):
        seen.append(qb.index)
        rows, ends = split.valid.rows[qb.index], split.valid.hist_end[qb.index]
        hist, times = zip(*(history_of(seqs, int(r), int(e)) for r, e in zip(rows, ends)))
        pos = seqs.offsets[rows] + ends
        ref = make_history_batch(list(hist), list(times), seqs.timestamps[pos], 8)
        for f in ("items", "timestamps", "lengths", "query_time"):
            assert torch.equal(getattr(qb.batch, f), getattr(ref, f)), f
        np.testing.assert_array_equal(qb.targets, seqs.items[pos])
        r, c = qb.seen  # the whole history is excluded, not only the encoder's window
        for b, h in enumerate(hist):
            np.testing.assert_array_equal(c[r == b], h)
    idx = np.concatenate(seen)
    np.testing.assert_array_equal(np.sort(idx), np.arange(len(split.valid)))


def test_query_batches_pad_less_than_samples_in_their_own_order(toy_split) -> None:
    seqs, split, _ = toy_split
    win = np.minimum(split.valid.hist_end, 20)
    own_order = sum(len(win[a : a + 16]) * win[a : a + 16].max() for a in range(0, len(win), 16))
    sorted_tokens = sum(qb.batch.items.numel() for qb in query_batches(seqs, split.valid, 20, 16))
    assert win.sum() / sorted_tokens > 0.9 > win.sum() / own_order


@pytest.mark.parametrize("name", ["sasrec", "hstu"])
@pytest.mark.parametrize("exclude", [True, False])
def test_rank_targets_equal_the_reference_evaluation(toy_split, name: str, exclude: bool) -> None:
    seqs, split, n = toy_split
    torch.manual_seed(0)
    model = build_model({"name": name, "d_model": 16, "num_layers": 2, "num_heads": 2}, n, 12).eval()
    got = rank_targets(model, seqs, split.test, exclude, batch_size=16)
    np.testing.assert_array_equal(got, reference_ranks(model, seqs, split.test, exclude, 16))


def test_sasrec_encodes_the_last_position_like_its_full_output(toy_split) -> None:
    seqs, split, n = toy_split
    torch.manual_seed(0)
    model = build_model({"name": "sasrec", "d_model": 16, "num_layers": 3, "num_heads": 2}, n, 12).eval()
    qb = next(iter(query_batches(seqs, split.valid, 12, 64)))
    with torch.no_grad():
        full = model.sequence_output(qb.batch)  # (B, L, D)
        ref = full[torch.arange(full.shape[0]), qb.batch.lengths - 1]
        torch.testing.assert_close(model.encode(qb.batch), ref, rtol=0, atol=1e-6)


def _random_case(B: int = 24, N: int = 500, D: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    states, table = torch.randn(B, D, generator=g), torch.randn(N + 1, D, generator=g)
    rng = np.random.default_rng(seed)
    targets = rng.integers(1, N + 1, B)
    r = np.repeat(np.arange(B), 5)
    c = rng.integers(1, N + 1, 5 * B)
    c[:3] = targets[0]  # row 0: its target is in its own history (and repeated)
    return states, table, targets, (r, c)


@pytest.mark.parametrize("exclude", [True, False])
def test_chunked_catalogue_equals_one_dense_matrix(exclude: bool) -> None:
    states, table, targets, seen = _random_case()
    seen = seen if exclude else None
    dense = catalogue_ranks(states, table, targets, seen, k=10)
    s = states @ table.T  # the reference: dense scores, -inf assignments
    s[:, 0] = -torch.inf
    if exclude:
        s[torch.as_tensor(seen[0]), torch.as_tensor(seen[1])] = -torch.inf
    np.testing.assert_array_equal(dense.rank.numpy(), (s > s.gather(1, torch.as_tensor(targets)[:, None])).sum(1))
    if exclude:
        assert dense.rank[0] == (s[0] > -torch.inf).sum()  # an excluded target ranks below every scored item
    for chunk in (7, 64, 200):
        got = catalogue_ranks(states, table, targets, seen, k=10, chunk=chunk)
        np.testing.assert_array_equal(got.rank.numpy(), dense.rank.numpy())
        np.testing.assert_array_equal(got.top_items.numpy(), dense.top_items.numpy())
        torch.testing.assert_close(got.top_scores, dense.top_scores)
        torch.testing.assert_close(got.target_score, dense.target_score)


def test_a_large_catalogue_is_scored_in_bounded_blocks() -> None:
    """200k items in blocks of 8k: same ranks and top-k as one dense matrix."""
    states, table, targets, seen = _random_case(B=8, N=200_000, D=16, seed=3)
    dense = catalogue_ranks(states, table, targets, seen, k=5, chunk=1 << 20)
    got = catalogue_ranks(states, table, targets, seen, k=5, chunk=8192)
    np.testing.assert_array_equal(got.rank.numpy(), dense.rank.numpy())
    np.testing.assert_array_equal(got.top_items.numpy(), dense.top_items.numpy())


def test_length_batches_bound_size_and_padding() -> None:
    rng = np.random.default_rng(1)
    lengths = np.minimum(rng.geometric(0.05, 3000), 200)
    batches = length_batches(lengths, 64, max_padding=0.05)
    np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(3000))
    for b in batches:
        n = np.maximum(lengths[b], 1)
        assert len(b) <= 64
        assert len(b) == 1 or 1 - n.sum() / (len(b) * n.max()) <= 0.05
    assert len(batches) < 3000 / 8  # not one query per batch
