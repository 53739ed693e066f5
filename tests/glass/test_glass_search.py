"""Semantic hard search: windows are disjoint and in the past, results match a per-row reference, neighbours."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genrec.data.sequences import UserSequences
from genrec.data.splits import leave_one_out
from genrec.errors import ConfigError
from genrec.eval.generation import history_matrix
from genrec.sid.hard_search import hard_search, split_history
from genrec.train.generator import TrainExamples
from tests.glass.conftest import LEVEL1, LONG, SHORT, toy_dataset


def reference_search(codes: np.ndarray, key: int, m: int, near: list[int] | None, tau: int) -> list[tuple[int, bool]]:
    """One row at a time: exact matches newest first, then (if too few) neighbour matches newest first."""
    exact = [p for p in range(len(codes) - 1, -1, -1) if codes[p] == key]
    out = [(p, False) for p in exact]
    if near is not None and len(exact) < tau:
        out += [(p, True) for p in range(len(codes) - 1, -1, -1) if codes[p] in near and codes[p] != key]
    return out[:m]


def test_split_history_windows_are_the_last_items_and_disjoint():
    items = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [5, 6, 0, 0, 0, 0, 0, 0, 0, 0],
                          [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
    w = split_history(items, 3, 4)
    assert w.short.tolist() == [[8, 9, 10], [5, 6, 0], [0, 0, 0]]
    assert w.long.tolist() == [[4, 5, 6, 7], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert w.long_len.tolist() == [4, 0, 0]
    with pytest.raises(ConfigError):
        split_history(items, -1, 4)


def test_batched_search_equals_a_per_row_reference():
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 6, (40, 17), generator=g)
    codes[torch.rand(40, 17, generator=g) < 0.2] = -1  # padding / items without a code
    keys = torch.randint(0, 6, (40,), generator=g)
    neighbours = torch.stack([(torch.arange(6) + 1) % 6, (torch.arange(6) + 2) % 6], 1)  # (6, 2)
    for near, tau in ((None, 0), (neighbours, 3), (neighbours, 100)):
        res = hard_search(codes, keys, 5, near, tau)
        for r in range(codes.shape[0]):
            nb = None if near is None else near[keys[r]].tolist()
            expect = reference_search(codes[r].numpy(), int(keys[r]), 5, nb, tau)
            got = [(int(i), bool(n)) for i, n, ok in zip(res.index[r], res.neighbour[r], res.mask[r]) if ok]
            assert got == expect
            assert (res.index[r][~res.mask[r]] == -1).all()


def test_neighbours_only_fill_sparse_keys():
    codes = torch.tensor([[0, 1, 1, 1, 2, 0]])
    nbr = torch.tensor([[1], [0], [0]])
    dense = hard_search(codes, torch.tensor([1]), 4, nbr, min_matches=2)  # 3 exact matches >= tau: no neighbours
    assert dense.index[0][dense.mask[0]].tolist() == [3, 2, 1] and not dense.neighbour.any()
    sparse = hard_search(codes, torch.tensor([0]), 4, nbr, min_matches=3)  # 2 exact < tau: add code-1 items
    assert sparse.index[0].tolist() == [5, 0, 3, 2] and sparse.neighbour[0].tolist() == [False, False, True, True]
    with pytest.raises(ConfigError):
        hard_search(codes, torch.tensor([0]), 0)


def test_hard_search_never_returns_short_window_or_future_items(model):
    """Every training example and every possible first code: retrieved items lie in the long window only."""
    seqs = UserSequences.from_interactions(toy_dataset().interactions)
    ex = TrainExamples(leave_one_out(seqs).train_end)
    hist = torch.from_numpy(history_matrix(seqs, ex.rows, ex.ends, model.max_len))  # what the trainer feeds
    inp = model.encoder_inputs(hist)
    b = hist.shape[0]
    keys = torch.arange(LEVEL1).repeat(b)  # (B*K0,) every code a beam could decode
    row_user = torch.arange(b).repeat_interleave(LEVEL1)
    ret = model.retrieve(inp.long, inp.long_len, keys, row_user)
    items = torch.where(ret.index >= 0, inp.long[row_user].gather(1, ret.index.clamp(min=0)), 0)  # (R, M)
    checked = 0
    for r in range(items.shape[0]):
        u = int(row_user[r])
        seq = seqs.items[seqs.offsets[ex.rows[u]]:seqs.offsets[ex.rows[u] + 1]]  # the user's whole sequence
        end = int(ex.ends[u])  # the target's position: everything from here on is the future
        for it in items[r][ret.mask[r] & ret.has[r]].tolist():
            pos = int(np.flatnonzero(seq == it)[0])  # items do not repeat within a user
            assert max(0, end - SHORT - LONG) <= pos < end - SHORT, (u, it, pos, end)
            assert int(model.item_sids[it, 0]) == int(keys[r])
            checked += 1
    assert checked > 50  # the toy histories are long enough for the search to find things
