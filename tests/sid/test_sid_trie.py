"""The tensor trie accepts exactly the valid SID prefixes (property test over random tables)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genrec.errors import DataError
from genrec.sid import SIDTable, SIDTrie


@st.composite
def tables_and_queries(draw):
    levels = draw(st.integers(1, 3))
    codebook = draw(st.integers(2, 5))
    n = draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    table = SIDTable.build(rng.permutation(10 * n)[:n] + 1, rng.integers(0, codebook, (n, levels)), [codebook] * levels)
    m = table.length
    width = max(table.codebook_sizes)
    t = draw(st.integers(1, m))
    queries = rng.integers(0, width + 1, (64, t))  # includes out-of-range tokens
    queries[: min(n, 16)] = table.codes[: min(n, 16), :t]  # and some valid prefixes
    return table, queries


@settings(max_examples=60, deadline=None)
@given(tables_and_queries())
def test_trie_accepts_exactly_valid_prefixes(case):
    table, queries = case
    trie = SIDTrie.from_table(table)
    t = queries.shape[1]
    valid = {tuple(row[:t]) for row in table.codes.tolist()}
    got = trie.contains(torch.as_tensor(queries)).tolist()
    assert got == [tuple(q) in valid for q in queries.tolist()]
    # allowed() at depth t-1 lists exactly the valid next tokens of each (t-1)-prefix
    nodes = trie.walk(torch.as_tensor(queries[:, : t - 1]))
    mask = trie.allowed(nodes, t - 1, width=max(table.codebook_sizes) + 1)
    for q, row in zip(queries.tolist(), mask.tolist()):
        expect = {p[-1] for p in valid if p[:-1] == tuple(q[: t - 1])}
        assert {v for v, ok in enumerate(row) if ok} == expect


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 50), st.integers(1, 3), st.integers(2, 6), st.integers(0, 10_000))
def test_trie_maps_every_sid_to_its_item(n, levels, codebook, seed):
    rng = np.random.default_rng(seed)
    table = SIDTable.build(rng.permutation(5 * n)[:n] + 1, rng.integers(0, codebook, (n, levels)), [codebook] * levels)
    trie = SIDTrie.from_table(table)
    assert trie.items(torch.as_tensor(table.codes)).tolist() == table.item_ids.tolist()
    assert trie.leaf_items.numel() == n


def test_step_is_vectorised_and_marks_invalid(small_table):
    trie = SIDTrie.from_table(small_table)
    codes = torch.as_tensor(small_table.codes)
    nodes = trie.step(trie.root(codes.shape[0]), codes[:, 0], 0)
    assert (nodes >= 0).all()
    bad = trie.step(torch.tensor([-1, 0]), torch.tensor([0, 99]), 0)
    assert bad.tolist() == [-1, -1]
    assert not trie.allowed(torch.tensor([-1]), 0).any()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dense_allowed_tables_equal_the_csr_scatter(seed, monkeypatch):
    """The dense per-depth table (default) and the CSR scatter (tables over the size limit) give the same masks."""
    rng = np.random.default_rng(seed)
    n = 200
    table = SIDTable.build(rng.permutation(1000)[:n] + 1, rng.integers(0, 6, (n, 2)), [6, 6])
    trie = SIDTrie.from_table(table)
    for depth in range(trie.depth):
        count = trie.levels[depth].offsets.shape[0] - 1
        nodes = torch.as_tensor(rng.integers(-1, count, 64))  # -1: an invalid prefix allows nothing
        for width in (None, 4, trie.width, trie.width + 3):  # narrower, exact and wider logit rows
            w = trie.codebook_sizes[depth] if width is None else width
            assert torch.equal(trie.allowed(nodes, depth, width), trie._allowed_csr(nodes, depth, w))
    monkeypatch.setattr("genrec.sid.trie.DENSE_LIMIT", 0)
    small = SIDTrie.from_table(table)
    assert small.dense_allowed(0) is None  # over the limit: the scatter path, same answers
    nodes = torch.tensor([0, -1, 0])
    assert torch.equal(small.allowed(nodes, 0), trie.allowed(nodes, 0))


def test_duplicate_sids_are_rejected():
    with pytest.raises(DataError, match="share a semantic id"):
        SIDTrie.from_codes(np.array([[0, 1], [0, 1]]), np.array([1, 2]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_trie_on_gpu_matches_cpu(small_table):
    trie = SIDTrie.from_table(small_table)
    gpu = trie.to("cuda")
    codes = torch.as_tensor(small_table.codes)
    assert gpu.items(codes.cuda()).cpu().tolist() == trie.items(codes).tolist()
    nodes = trie.walk(codes[:, :1])
    assert torch.equal(gpu.allowed(nodes.cuda(), 1).cpu(), trie.allowed(nodes, 1))
