"""Known items merged into a beam (``generator.rescore_history``): exact scores, the brute-force top k, each item
once, candidates respected; and the multi-behavior evaluation hands the models the users' recent items."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genrec.eval.multibehavior import recent_distinct
from genrec.sid import SIDTrie, beam_search, score_sids
from genrec.sid.beam import score_known, with_known_items
from tests.sid.conftest import TableDecoder, random_table


def _setup(seed: int = 0, batch: int = 3):
    table = random_table(20, levels=2, codebook=3, seed=seed)
    trie = SIDTrie.from_table(table)
    dec = TableDecoder(trie, batch, seed=seed)
    item_ids = torch.as_tensor(table.item_ids)
    item_sids = torch.full((int(item_ids.max()) + 1, trie.depth), -1, dtype=torch.long)
    item_sids[item_ids] = torch.as_tensor(table.codes, dtype=torch.long)
    return table, trie, dec, item_ids, item_sids


def _brute(dec: TableDecoder, table, user: int) -> dict[int, float]:
    codes = torch.as_tensor(table.codes)
    state = {"user": torch.full((len(codes),), user), "cache": torch.zeros(len(codes), 0, dtype=torch.long)}
    return dict(zip(table.item_ids.tolist(), score_sids(dec, codes, state).tolist()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_known_items_score_what_teacher_forcing_gives(seed):
    table, trie, dec, item_ids, item_sids = _setup(seed)
    known = item_ids[torch.randint(len(item_ids), (3, 5), generator=torch.Generator().manual_seed(seed))]
    scores = score_known(dec, dec.initial_state(), item_sids[known])  # (3, 5)
    for u in range(3):
        exact = _brute(dec, table, u)
        assert scores[u].tolist() == pytest.approx([exact[int(i)] for i in known[u]], abs=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_narrow_beam_plus_every_item_as_known_is_the_exact_top_k(seed):
    """Beam 2 misses items whose prefix fell out early; merging every item back in, scored exactly, gives the
    brute-force top k, each item once (the beam's own finds are among the known items too)."""
    table, trie, dec, item_ids, item_sids = _setup(seed)
    k = 6
    res = beam_search(dec, trie, 3, 2, dec.initial_state())
    known = item_ids.repeat(3, 1)  # (3, N)
    merged = with_known_items(res, known, item_sids, lambda: (dec, dec.initial_state()), k)
    for u in range(3):
        exact = _brute(dec, table, u)
        best = sorted(exact, key=lambda i: -exact[i])[:k]
        assert merged.items[u].tolist() == best
        assert merged.scores[u].tolist() == pytest.approx([exact[i] for i in best], abs=1e-5)
        assert merged.valid[u].all()
        assert [tuple(s) for s in merged.sids[u].tolist()] == [tuple(item_sids[i].tolist()) for i in best]


def test_a_full_beam_is_unchanged_and_candidates_bound_the_known_items():
    table, trie, dec, item_ids, item_sids = _setup(1)
    full = beam_search(dec, trie, 3, len(item_ids), dec.initial_state())
    merged = with_known_items(full, item_ids[:4].repeat(3, 1), item_sids, lambda: (dec, dec.initial_state()), 5)
    assert torch.equal(merged.items, full.items[:, :5])  # an exhaustive beam already holds every item, once
    # outside the candidates a known item never enters: allow nothing, and the beam alone comes back
    narrow = beam_search(dec, trie, 3, 1, dec.initial_state())
    none = np.zeros(0, dtype=np.int64)
    same = with_known_items(narrow, item_ids.repeat(3, 1), item_sids, lambda: (dec, dec.initial_state()), 1, none)
    assert torch.equal(same.items, narrow.items)
    only = item_ids[:1].numpy()
    one = with_known_items(narrow, item_ids.repeat(3, 1), item_sids, lambda: (dec, dec.initial_state()), 1, only)
    exact = [_brute(dec, table, u) for u in range(3)]
    for u in range(3):  # the beam's item or the one allowed known item, whichever scores higher
        pick = max((int(narrow.items[u, 0]), int(item_ids[0])), key=lambda i: exact[u][i])
        assert int(one.items[u, 0]) == pick


def test_recent_distinct_items_newest_first():
    hist = np.array([[5, 6, 5, 7, 0, 0], [1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
    assert recent_distinct(hist, 2).tolist() == [[7, 5], [1, 0], [0, 0]]
    assert recent_distinct(hist, 4).tolist() == [[7, 5, 6, 0], [1, 0, 0, 0], [0, 0, 0, 0]]


def test_recent_distinct_matches_a_row_by_row_walk_on_random_histories():
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 30, 200)
    hist = np.zeros((200, 30), dtype=np.int64)
    for row, n in enumerate(lengths):
        hist[row, :n] = rng.integers(1, 12, n)  # few items: many repeats
    for n in (1, 5, 20):
        want = np.zeros((200, n), dtype=np.int64)
        for row in range(200):
            seen = list(dict.fromkeys(hist[row][hist[row] > 0][::-1].tolist()))[:n]
            want[row, :len(seen)] = seen
        assert np.array_equal(recent_distinct(hist, n), want)
