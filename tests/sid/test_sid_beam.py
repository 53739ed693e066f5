"""Constrained beam search: only real items, sorted, exact on small tables; unconstrained can go invalid."""

from __future__ import annotations

import pytest
import torch

from genrec.errors import ConfigError
from genrec.sid import SIDTrie, beam_search, reorder_tensors, score_sids
from genrec.sid.beam import beams_per_user
from tests.sid.conftest import TableDecoder, prefer_invalid_step, random_table


def _invalid_path(trie: SIDTrie) -> list[int]:
    """A full SID outside the trie whose first token is valid (so the decoder must be steered off it)."""
    width = max(trie.codebook_sizes)
    for a in range(width):
        for b in range(width):
            for c in range(width):
                for d in range(trie.codebook_sizes[-1]):
                    cand = torch.tensor([[a, b, c, d]])
                    if bool(trie.contains(cand[:, :1])) and not bool(trie.contains(cand)):
                        return cand[0].tolist()
    raise AssertionError("table is full")


def test_constrained_search_avoids_the_preferred_invalid_path(small_table):
    trie = SIDTrie.from_table(small_table)
    bad = _invalid_path(trie)
    step = prefer_invalid_step(bad, max(trie.codebook_sizes))
    free = beam_search(step, trie, batch_size=2, beam_size=5, constrained=False)
    assert free.sids[0, 0].tolist() == bad and not bool(free.valid[0, 0])
    assert free.invalid_rate > 0
    res = beam_search(step, trie, batch_size=2, beam_size=5)
    assert bool(res.valid.all()) and res.invalid_rate == 0.0
    assert set(res.items.flatten().tolist()) <= set(small_table.item_ids.tolist())
    assert trie.contains(res.sids.reshape(-1, trie.depth)).all()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_constrained_search_equals_brute_force_on_small_tables(seed):
    table = random_table(12, levels=2, codebook=3, seed=seed)
    trie = SIDTrie.from_table(table)
    batch = 3
    dec = TableDecoder(trie, batch, seed=seed)
    res = beam_search(dec, trie, batch_size=batch, beam_size=table.num_items, state=dec.initial_state())
    # brute force: the model's log-probability of every valid SID, per user
    codes = torch.as_tensor(table.codes)  # (N, m)
    for u in range(batch):
        state = {"user": torch.full((len(codes),), u), "cache": torch.zeros(len(codes), 0, dtype=torch.long)}
        scores = score_sids(lambda tok, st: dec(tok, st), codes, state)  # (N,)
        order = torch.argsort(scores, descending=True, stable=True)
        assert torch.allclose(res.scores[u], scores[order], atol=1e-5)
        expect = dict(zip(table.item_ids.tolist(), scores.tolist()))
        for item, score in zip(res.items[u].tolist(), res.scores[u].tolist()):
            assert expect[item] == pytest.approx(score, abs=1e-5)
        assert sorted(res.items[u].tolist()) == sorted(table.item_ids.tolist())


@pytest.mark.parametrize("beam", [1, 4, 10])
def test_beams_are_sorted_valid_and_scored_correctly(beam):
    table = random_table(60, levels=3, codebook=4, seed=7)
    trie = SIDTrie.from_table(table)
    dec = TableDecoder(trie, 4, seed=7)
    res = beam_search(dec, trie, batch_size=4, beam_size=beam, state=dec.initial_state())
    assert res.sids.shape == (4, beam, trie.depth) and res.items.shape == (4, beam)
    assert bool(res.valid.all())
    assert (res.scores[:, :-1] >= res.scores[:, 1:]).all()
    assert torch.equal(trie.items(res.sids.reshape(-1, trie.depth)).view(4, beam), res.items)
    for u in range(4):  # no duplicates, and the reported score is the teacher-forced one
        assert len(set(res.items[u].tolist())) == beam
        state = {"user": torch.full((beam,), u), "cache": torch.zeros(beam, 0, dtype=torch.long)}
        assert torch.allclose(score_sids(dec, res.sids[u], state), res.scores[u], atol=1e-5)


def test_unconstrained_search_reports_invalid_sids_under_a_random_decoder():
    table = random_table(40, levels=3, codebook=8, seed=2)  # 40 of 512 three-token prefixes exist
    trie = SIDTrie.from_table(table)
    dec = TableDecoder(trie, 2, seed=5)
    free = beam_search(dec, trie, batch_size=2, beam_size=10, state=dec.initial_state(), constrained=False)
    assert free.invalid_rate > 0.5
    assert (free.items[~free.valid] == -1).all()


def test_fewer_items_than_beams_leaves_empty_slots():
    table = random_table(3, levels=2, codebook=4, seed=0)
    trie = SIDTrie.from_table(table)
    dec = TableDecoder(trie, 1)
    res = beam_search(dec, trie, batch_size=1, beam_size=6, state=dec.initial_state())
    assert int(res.valid.sum()) == 3 and (res.items[~res.valid] == -1).all()
    assert torch.isinf(res.scores[~res.valid]).all()


def test_wider_logits_than_codebook_and_bad_step_fn(small_table):
    trie = SIDTrie.from_table(small_table)
    width = max(trie.codebook_sizes) + 7  # e.g. a shared vocabulary slice that is too wide

    def wide(tokens, state):
        return torch.zeros(tokens.shape[0], width), state

    res = beam_search(wide, trie, batch_size=1, beam_size=3, constrained=False)
    assert (res.sids[..., -1] < trie.codebook_sizes[-1]).all()
    with pytest.raises(ConfigError, match="logits of shape"):
        beam_search(lambda tok, st: (torch.zeros(1, 4), st), trie, batch_size=2, beam_size=3)


def test_reorder_tensors_handles_nested_state():
    state = {"kv": (torch.arange(4)[:, None], [torch.arange(4)]), "n": 3}
    out = reorder_tensors(state, torch.tensor([3, 3, 0]))
    assert out["kv"][0].squeeze(1).tolist() == [3, 3, 0] and out["kv"][1][0].tolist() == [3, 3, 0]
    assert out["n"] == 3


def test_reorder_tensors_passes_plain_objects_through():
    """What a decoder keeps one row per user for the whole search lives in a plain object: never copied."""

    class PerUser:
        def __init__(self, x: torch.Tensor) -> None:
            self.x = x

    memory = PerUser(torch.arange(2))
    out = reorder_tensors((memory, torch.arange(2)), torch.tensor([0, 0, 1, 1]))
    assert out[0] is memory and out[1].tolist() == [0, 0, 1, 1]


def test_beams_per_user_recognises_runs_of_rows_per_user():
    assert beams_per_user(torch.tensor([0, 0, 0, 1, 1, 1]), 2) == 3
    assert beams_per_user(torch.arange(4), 4) == 1
    assert beams_per_user(torch.tensor([0, 1, 0, 1]), 2) is None  # interleaved
    assert beams_per_user(torch.tensor([0, 0, 1]), 2) is None  # runs of unequal length
    assert beams_per_user(torch.tensor([1, 1, 0, 0]), 2) is None  # users out of order


@pytest.mark.parametrize("beam", [1, 3])
def test_search_keeps_rows_in_runs_per_user_and_skips_the_last_reorder(small_table, beam):
    """Every step's rows are runs per user (what a shared per-user state relies on); the state after the last
    step is never read, so it is not reordered: depth - 1 reorders in all."""
    trie = SIDTrie.from_table(small_table)
    dec = TableDecoder(trie, 3, seed=2)
    calls = []

    def reorder(state, rows):
        calls.append(beams_per_user(state["user"][rows], 3))  # the user of every row after the step
        return reorder_tensors(state, rows)

    res = beam_search(dec, trie, batch_size=3, beam_size=beam, state=dec.initial_state(), reorder_state=reorder)
    assert calls == [beam] * (trie.depth - 1)
    assert bool(res.valid.all())
