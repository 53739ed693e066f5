"""Semantic hard search (GLASS, spec §4.5-4.6): long-history items that share a decoded level-1 code.

A user history (oldest first) is cut into a short window (the encoder's input) and a long window just
before it (:func:`split_history`); the two never overlap and neither reaches past the end of the given
history, so nothing from the short window or the future can be retrieved. Given one key per row (a beam's
generated ``sid_1``, or the ground truth during training), :func:`hard_search` returns the positions of the
most recent ``M`` long-window items with that code, optionally topped up with items under the key's nearest
codes when fewer than ``tau`` match (semantic neighbour augmentation). Everything is a tensor operation over
all rows at once (beams included): no Python loop over users or beams.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from genrec.errors import ConfigError


class HistoryWindows(NamedTuple):
    short: torch.Tensor  # (B, S) item ids of the last <= short_len events, oldest first, 0 = padding (right)
    long: torch.Tensor  # (B, L) item ids of the <= long_len events before them, oldest first, 0 = padding (right)
    long_len: torch.Tensor  # (B,) number of real items in ``long``


class HardSearch(NamedTuple):
    index: torch.Tensor  # (R, M) position in the long window, most recent first; -1 = empty slot
    mask: torch.Tensor  # (R, M) bool, True on retrieved items
    neighbour: torch.Tensor  # (R, M) bool, True when retrieved through a neighbouring code (not the key itself)


def split_history(items: torch.Tensor, short_len: int, long_len: int) -> HistoryWindows:
    """(B, T) left-aligned histories (0 = padding on the right) -> short and long windows (spec A-L7).

    The short window is the last ``short_len`` real items; the long window is the ``long_len`` items before
    it. Items older than both windows are dropped.
    """
    if short_len < 0 or long_len < 0:
        raise ConfigError(f"history windows must be >= 0, got short {short_len}, long {long_len}")
    b, t = items.shape
    n = (items > 0).sum(1)  # (B,) real events (left-aligned)
    n_short = n.clamp(max=short_len)  # (B,)
    n_long = (n - n_short).clamp(max=long_len)  # (B,)
    s_width = max(int(n_short.max()) if b else 0, 1)
    l_width = max(int(n_long.max()) if b else 0, 1)
    short = _window(items, n - n_short, n_short, s_width)
    long = _window(items, n - n_short - n_long, n_long, l_width)
    return HistoryWindows(short, long, n_long)


def _window(items: torch.Tensor, start: torch.Tensor, length: torch.Tensor, width: int) -> torch.Tensor:
    """(B, T) items, (B,) start and length -> (B, width) left-aligned slice, zero-padded."""
    cols = torch.arange(width, device=items.device)[None, :]  # (1, W)
    idx = (start[:, None] + cols).clamp(0, max(items.shape[1] - 1, 0))  # (B, W)
    real = cols < length[:, None]
    if items.shape[1] == 0:
        return torch.zeros(items.shape[0], width, dtype=items.dtype, device=items.device)
    return torch.where(real, items.gather(1, idx), torch.zeros_like(idx))


def hard_search(codes: torch.Tensor, keys: torch.Tensor, max_items: int, neighbours: torch.Tensor | None = None,
                min_matches: int = 0) -> HardSearch:
    """Retrieve, per row, the most recent long-window items whose level-1 code equals the row's key.

    ``codes`` (R, L): level-1 code of each long-window item, -1 on padding; ``keys`` (R,): the code searched.
    With ``neighbours`` (K, k) and ``min_matches`` tau > 0, a row with fewer than tau exact matches also
    takes items whose code is one of the key's ``k`` nearest codes; exact matches always come first, then
    neighbour matches, each most recent first, up to ``max_items`` in all.
    """
    if max_items < 1:
        raise ConfigError(f"hard search: max_items must be >= 1, got {max_items}")
    r, length = codes.shape
    width = max(min(max_items, length), 1)
    if length == 0:
        empty = torch.zeros(r, 1, dtype=torch.bool, device=codes.device)
        return HardSearch(torch.full((r, 1), -1, dtype=torch.long, device=codes.device), empty, empty)
    keys = keys.long()
    pos = torch.arange(length, device=codes.device)[None, :]  # (1, L)
    exact = (codes == keys[:, None]) & (codes >= 0)  # (R, L)
    prio = torch.where(exact, 2 * length + pos, torch.full_like(exact, -1, dtype=torch.long))  # (R, L)
    if neighbours is not None and min_matches > 0:
        near = neighbours[keys.clamp(0, neighbours.shape[0] - 1)]  # (R, k)
        in_near = (codes[:, :, None] == near[:, None, :]).any(-1) & (codes >= 0)  # (R, L)
        sparse = exact.sum(1, keepdim=True) < min_matches  # (R, 1)
        prio = torch.where(in_near & sparse & ~exact, length + pos, prio)
    top, idx = prio.topk(width, dim=1)  # (R, M): exact (newest first), then neighbours (newest first)
    mask = top >= 0
    index = torch.where(mask, idx, torch.full_like(idx, -1))
    return HardSearch(index, mask, mask & (top < 2 * length))
