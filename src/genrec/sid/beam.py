"""Beam search over semantic ids, optionally constrained by the SID trie (spec §1.3).

Decoders plug in through one function, ``step_fn(tokens (R, t), state) -> (logits (R, V), new_state)``, so
TIGER, GAMER and GLASS share this code. ``logits[:, v]`` scores code ``v`` of SID position ``t`` (a model with
one shared vocabulary passes its level's slice). ``state`` carries whatever the decoder needs (encoder output,
key/value caches); after every step the search calls ``reorder_state(state, rows)`` to keep the rows of the
surviving beams (this also expands the first step's B rows into B*beam rows). The default reorders every
tensor found in nested tuples/lists/dicts along dim 0 and passes any other object through: a decoder keeps
what is one row per user for the whole search (encoder memory, the prompt's key/value cache) in a plain
object, so only the few generated tokens' state is copied per beam. The rows of a user always form one
consecutive run of equal length (``beams_per_user``), so such a decoder can read its per-user part by grouping
the rows instead of indexing it.

Scores are the sum of the model's log-probabilities (log-softmax over the full logit row, before masking),
so constrained and unconstrained searches rank with the same numbers. Per step the work is one masked
``log_softmax`` + one ``topk`` over (B, beam*V) + one trie lookup: no Python loop over users or beams.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from genrec.errors import ConfigError
from genrec.sid.trie import SIDTrie

StepFn = Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]]
ReorderFn = Callable[[Any, torch.Tensor], Any]


class BeamResult(NamedTuple):
    sids: torch.Tensor  # (B, K, m) int64 token tuples, best first
    scores: torch.Tensor  # (B, K) float sum of log-probabilities, descending; -inf for empty slots
    items: torch.Tensor  # (B, K) int64 item ids, -1 where the SID names no item (or the slot is empty)
    valid: torch.Tensor  # (B, K) bool: the beam is a real item

    @property
    def invalid_rate(self) -> float:
        """Fraction of returned beams that name no item (always 0 for constrained search over >= K items)."""
        return float((~self.valid).float().mean()) if self.valid.numel() else 0.0

    def top(self, k: int) -> BeamResult:
        """The best ``k`` beams of each user."""
        return BeamResult(self.sids[:, :k], self.scores[:, :k], self.items[:, :k], self.valid[:, :k])


def reorder_tensors(state: Any, rows: torch.Tensor) -> Any:
    """Select ``rows`` (dim 0) of every tensor inside nested tuples, lists and dicts; other values pass through."""
    if isinstance(state, torch.Tensor):
        return state.index_select(0, rows.to(state.device))
    if isinstance(state, tuple) and hasattr(state, "_fields"):  # NamedTuple
        return type(state)(*(reorder_tensors(s, rows) for s in state))
    if isinstance(state, (tuple, list)):
        return type(state)(reorder_tensors(s, rows) for s in state)
    if isinstance(state, dict):
        return {k: reorder_tensors(v, rows) for k, v in state.items()}
    return state


def beams_per_user(row_user: torch.Tensor, users: int) -> int | None:
    """``g`` when the R rows (``row_user`` (R,), the user of each row) are ``users`` runs of ``g`` consecutive rows,
    run ``i`` all of user ``i`` (how :func:`beam_search` keeps its rows), else None."""
    r = row_user.shape[0]
    if users < 1 or r % users:
        return None
    g = r // users
    return g if torch.equal(row_user, torch.arange(users, device=row_user.device).repeat_interleave(g)) else None


def beam_search(step_fn: StepFn, trie: SIDTrie, batch_size: int, beam_size: int = 20, state: Any = None,
                constrained: bool = True, reorder_state: ReorderFn = reorder_tensors) -> BeamResult:
    """Top-``beam_size`` SIDs for each of ``batch_size`` users.

    ``state`` holds B rows on entry (one per user). ``trie`` gives the SID length, the per-position vocabulary
    and the SID -> item map; with ``constrained=False`` it is only used afterwards, to report invalid SIDs.
    """
    if beam_size < 1 or batch_size < 1:
        raise ConfigError(f"beam search needs batch_size >= 1 and beam_size >= 1, got {batch_size}, {beam_size}")
    device = trie.device
    b = batch_size
    rows_in = 1  # beams per user entering the step (1 before the first token)
    tokens = torch.zeros(b, 0, dtype=torch.long, device=device)  # (B*rows_in, t)
    scores = torch.zeros(b, device=device)  # (B*rows_in,)
    nodes = trie.root(b)  # (B*rows_in,)
    for t in range(trie.depth):
        logits, state = step_fn(tokens, state)  # (B*rows_in, V)
        if logits.ndim != 2 or logits.shape[0] != b * rows_in:
            raise ConfigError(f"step_fn returned logits of shape {tuple(logits.shape)}, expected ({b * rows_in}, V)")
        width = logits.shape[1]
        logp = torch.log_softmax(logits.float(), dim=-1)  # (R, V)
        if width > trie.codebook_sizes[t]:  # codes beyond this position's codebook never exist
            logp[:, trie.codebook_sizes[t]:] = float("-inf")
        if constrained:
            logp = logp.masked_fill(~trie.allowed(nodes, t, width), float("-inf"))
        cand = (scores[:, None] + logp).view(b, rows_in * width)  # (B, rows_in*V)
        k = min(beam_size, rows_in * width)
        top, idx = cand.topk(k, dim=1)  # (B, k), sorted descending
        parent = torch.div(idx, width, rounding_mode="floor")  # (B, k) beam index within the user
        tok = idx - parent * width  # (B, k)
        rows = (parent + torch.arange(b, device=device)[:, None] * rows_in).reshape(-1)  # (B*k,)
        tokens = torch.cat([tokens[rows], tok.reshape(-1, 1)], dim=1)  # (B*k, t+1)
        scores = top.reshape(-1)
        nodes = trie.step(nodes[rows], tok.reshape(-1), t) if constrained else nodes[rows]
        if t + 1 < trie.depth:  # the last step's state is never read: no reorder
            state = reorder_state(state, rows)
        rows_in = k
    sids = tokens.view(b, rows_in, trie.depth)
    scores = scores.view(b, rows_in)
    items = trie.items(tokens).view(b, rows_in)
    valid = (items >= 0) & torch.isfinite(scores)
    items = torch.where(valid, items, torch.full_like(items, -1))
    return BeamResult(sids, scores, items, valid)


def score_sids(step_fn: StepFn, sids: torch.Tensor, state: Any = None) -> torch.Tensor:
    """Teacher-forced log-probability of given SIDs: (R, m) tokens -> (R,) scores (``state`` has R rows).

    The reference the beam search is tested against: brute force over every SID of a small table.
    """
    return _teacher_forced(step_fn, state, sids, torch.zeros(sids.shape[0], device=sids.device), 0)


def _teacher_forced(step_fn: StepFn, state: Any, sids: torch.Tensor, total: torch.Tensor, start: int
                    ) -> torch.Tensor:
    """``total`` (R,) plus the log-probabilities of ``sids`` (R, m) tokens ``start..m-1``, decoded in order."""
    for t in range(start, sids.shape[1]):
        logits, state = step_fn(sids[:, :t], state)  # (R, V)
        total = total + torch.log_softmax(logits.float(), -1).gather(1, sids[:, t:t + 1]).squeeze(1)
    return total


def list_length(k: int | None, beam_size: int, who: str) -> int:
    """The length of the ranked list a beam of ``beam_size`` returns for a request of ``k`` (None = the whole
    beam); a beam cannot return more than it keeps, so ``k`` outside ``1..beam_size`` is refused."""
    k = beam_size if k is None else k
    if not 1 <= k <= beam_size:
        raise ConfigError(f"{who}: need 1 <= k <= beam_size, got k={k}, beam_size={beam_size}")
    return k


def score_known(step_fn: StepFn, state: Any, sids: torch.Tensor, reorder_state: ReorderFn = reorder_tensors
                ) -> torch.Tensor:
    """Summed log-probabilities of ``H`` given SIDs per user: (B, H, m) tokens -> (B, H).

    The decoder is called as :func:`beam_search` calls it (the first step on the B users' rows, then H rows per
    user in one consecutive run), so a SID scores here exactly what the beam would give it."""
    b, h, m = sids.shape
    dev = sids.device
    logits, state = step_fn(torch.zeros(b, 0, dtype=torch.long, device=dev), state)  # (B, V)
    first = torch.log_softmax(logits.float(), -1).gather(1, sids[:, :, 0])  # (B, H)
    if m == 1:
        return first
    state = reorder_state(state, torch.arange(b, device=dev).repeat_interleave(h))  # B*H rows, H per user
    return _teacher_forced(step_fn, state, sids.reshape(b * h, m), first.reshape(-1), 1).view(b, h)


def merge_known(res: BeamResult, items: torch.Tensor, sids: torch.Tensor, scores: torch.Tensor, k: int
                ) -> BeamResult:
    """The best ``k`` of the beam's list and the known ``items`` (B, H) with their ``sids`` (B, H, m) and exact
    ``scores`` (B, H; -inf = none), each item once. Invalid beams (item -1) keep their place by score."""
    it = torch.cat([res.items, items.to(res.items.device)], 1)  # (B, T)
    sc = torch.cat([res.scores, scores.to(res.scores.device)], 1)  # (B, T)
    sd = torch.cat([res.sids, sids.to(res.sids.device)], 1)  # (B, T, m)
    order = torch.argsort(sc, dim=1, descending=True, stable=True)  # the beam's entry first on a tie
    it, sc = it.gather(1, order), sc.gather(1, order)
    sd = sd.gather(1, order[:, :, None].expand_as(sd))
    t = it.shape[1]
    earlier = torch.ones(t, t, dtype=torch.bool, device=it.device).tril(-1)  # [j, i]: i before j
    dup = ((it[:, :, None] == it[:, None, :]) & earlier).any(-1) & (it > 0)  # (B, T): seen at a better rank
    sc = sc.masked_fill(dup, float("-inf"))
    keep = torch.argsort(sc, dim=1, descending=True, stable=True)[:, :k]  # (B, k)
    it, sc = it.gather(1, keep), sc.gather(1, keep)
    sd = sd.gather(1, keep[:, :, None].expand(-1, -1, sd.shape[2]))
    valid = (it >= 0) & torch.isfinite(sc)
    return BeamResult(sd, sc, torch.where(valid, it, torch.full_like(it, -1)), valid)


def with_known_items(res: BeamResult, known: torch.Tensor, item_sids: torch.Tensor,
                     start: Callable[[], tuple[StepFn, Any]], k: int, candidates: Any = None,
                     reorder_state: ReorderFn = reorder_tensors) -> BeamResult:
    """``res`` (a full beam) with the items ``known`` (B, H; 0 = none), e.g. the user's own recent items, scored
    exactly and merged in, cut to ``k``. A beam of width W misses an item whose SID prefix fell out of the top W
    early, however likely its full SID; on logs where users return to their own items (a cart, then the buy) that
    search error costs the repeats. Only ``known`` items among the ``candidates`` (item ids; None = all) enter;
    ``start()`` returns a fresh ``(step_fn, state)`` for the same users (the beam search consumed its own)."""
    known = known.long().to(item_sids.device)
    ok = known > 0
    if candidates is not None:
        allowed = torch.zeros(item_sids.shape[0], dtype=torch.bool, device=known.device)  # (N+1,)
        allowed[torch.as_tensor(candidates, dtype=torch.long, device=known.device).reshape(-1)] = True
        ok &= allowed[known.clamp(min=0)]
    if not bool(ok.any()):
        return res.top(k)
    known = torch.where(ok, known, torch.zeros_like(known))
    sids = item_sids[known].clamp(min=0)  # (B, H, m); rows without an item are scored, then dropped
    step, state = start()
    scores = score_known(step, state, sids, reorder_state).masked_fill(~ok, float("-inf"))  # (B, H)
    return merge_known(res, torch.where(ok, known, torch.full_like(known, -1)), sids, scores, k)

