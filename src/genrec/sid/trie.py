"""A prefix trie of all valid SIDs, stored as tensors so beam search can mask and advance every beam at once.

Depth ``d`` holds the nodes reached after ``d`` tokens (the root is node 0 of depth 0). Each depth has a CSR
block: the children of node ``n`` are edges ``offsets[d][n]:offsets[d][n+1]`` with (sorted) token ids
``tokens[d]`` and child node ids ``children[d]`` at depth ``d+1``. Because nodes are numbered in lexicographic
order of their prefixes, the edge keys ``parent * V + token`` are globally sorted, so following a token is one
``searchsorted`` for all beams, and masking is one gather from a dense (nodes x width) table of allowed tokens
per depth, built on first use (the CSR scatter when that table would pass ``DENSE_LIMIT`` entries). Nodes at
the last depth are items (``leaf_items``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from genrec.errors import DataError
from genrec.sid.codebook import SIDTable

INVALID = -1  # node id of a prefix that is not in the trie
DENSE_LIMIT = 1 << 26  # bool entries (64 MiB) a depth's dense allowed-token table may take


class TrieLevel(NamedTuple):
    offsets: torch.Tensor  # (num_nodes_d + 1,) int64 CSR row pointers
    tokens: torch.Tensor  # (num_edges_d,) int64 token of each edge, sorted within a node
    children: torch.Tensor  # (num_edges_d,) int64 node id at depth d+1
    keys: torch.Tensor  # (num_edges_d,) int64 parent * width + token, globally sorted


class SIDTrie:
    """Tensor trie over the SIDs of a table; all methods are vectorised over a batch of nodes."""

    def __init__(self, levels: list[TrieLevel], leaf_items: torch.Tensor, codebook_sizes: tuple[int, ...]) -> None:
        self.levels = levels
        self.leaf_items = leaf_items  # (num_leaves,) item id of each node at the last depth
        self.codebook_sizes = tuple(codebook_sizes)
        self.width = max(self.codebook_sizes)  # key stride; >= every token id
        self._dense: dict[int, torch.Tensor | None] = {}  # depth -> (num_nodes_d, width) allowed tokens

    @classmethod
    def from_codes(cls, codes: np.ndarray | torch.Tensor, item_ids: np.ndarray | torch.Tensor,
                   codebook_sizes: tuple[int, ...] | None = None) -> SIDTrie:
        """Build from unique SIDs ``codes`` (N, m) and their item ids (N,)."""
        c = torch.as_tensor(np.asarray(codes.cpu() if isinstance(codes, torch.Tensor) else codes), dtype=torch.long)
        ids = torch.as_tensor(np.asarray(item_ids.cpu() if isinstance(item_ids, torch.Tensor) else item_ids),
                              dtype=torch.long)
        if c.ndim != 2 or c.shape[0] != ids.shape[0] or c.shape[0] == 0:
            raise DataError(f"trie: need (N, m) codes for N >= 1 items, got {tuple(c.shape)} and {ids.shape[0]} ids")
        if (c < 0).any():
            raise DataError("trie: codes must be non-negative")
        n, m = c.shape
        sizes = tuple(codebook_sizes) if codebook_sizes is not None else tuple(int(v) + 1 for v in c.max(0).values)
        width = max(sizes)
        prev_inv = torch.zeros(n, dtype=torch.long)  # node id of each item's prefix at the current depth
        prev_count = 1
        levels = []
        for d in range(m):
            uniq, inv = torch.unique(c[:, : d + 1], dim=0, return_inverse=True)  # lexicographically sorted prefixes
            parent = torch.empty(uniq.shape[0], dtype=torch.long)
            parent[inv] = prev_inv  # every item under the same prefix has the same parent
            tokens = uniq[:, d].contiguous()
            offsets = torch.zeros(prev_count + 1, dtype=torch.long)
            offsets[1:] = torch.bincount(parent, minlength=prev_count).cumsum(0)
            levels.append(TrieLevel(offsets, tokens, torch.arange(uniq.shape[0]), parent * width + tokens))
            prev_inv, prev_count = inv, uniq.shape[0]
        if prev_count != n:
            raise DataError(f"trie: {n - prev_count} items share a semantic id; add a collision level first")
        leaf_items = torch.empty(n, dtype=torch.long)
        leaf_items[prev_inv] = ids
        return cls(levels, leaf_items, sizes)

    @classmethod
    def from_table(cls, table: SIDTable) -> SIDTrie:
        return cls.from_codes(table.codes, table.item_ids, table.codebook_sizes)

    @property
    def depth(self) -> int:
        """SID length m."""
        return len(self.levels)

    @property
    def device(self) -> torch.device:
        return self.leaf_items.device

    def to(self, device: str | torch.device) -> SIDTrie:
        levels = [TrieLevel(*(t.to(device) for t in lv)) for lv in self.levels]
        return SIDTrie(levels, self.leaf_items.to(device), self.codebook_sizes)

    def root(self, batch: int) -> torch.Tensor:
        """(batch,) root node ids."""
        return torch.zeros(batch, dtype=torch.long, device=self.device)

    def allowed(self, node_ids: torch.Tensor, depth: int, width: int | None = None) -> torch.Tensor:
        """(B,) node ids at ``depth`` -> (B, width) bool mask of the tokens that extend a valid prefix.

        Invalid nodes (-1) allow nothing. ``width`` defaults to this position's codebook size; a wider mask
        (a decoder with a larger logit row) is False beyond it.
        """
        w = self.codebook_sizes[depth] if width is None else width
        table = self.dense_allowed(depth)
        if table is None:
            return self._allowed_csr(node_ids, depth, w)
        mask = table[node_ids.clamp_min(0)] & (node_ids >= 0)[:, None]  # (B, self.width)
        if w <= self.width:
            return mask[:, :w]
        return torch.cat([mask, mask.new_zeros(mask.shape[0], w - self.width)], 1)

    def dense_allowed(self, depth: int) -> torch.Tensor | None:
        """(num_nodes_d, width) bool: the tokens each node at ``depth`` may take (None when over ``DENSE_LIMIT``)."""
        if depth not in self._dense:
            lv = self.levels[depth]
            n = lv.offsets.shape[0] - 1
            table = None
            if n * self.width <= DENSE_LIMIT:
                table = torch.zeros(n, self.width, dtype=torch.bool, device=self.device)
                parent = torch.repeat_interleave(torch.arange(n, device=self.device), lv.offsets.diff())  # (E,)
                table[parent, lv.tokens] = True
            self._dense[depth] = table
        return self._dense[depth]

    def _allowed_csr(self, node_ids: torch.Tensor, depth: int, w: int) -> torch.Tensor:
        """:meth:`allowed` by a scatter over the CSR edges of the given nodes (no dense table)."""
        lv = self.levels[depth]
        b = node_ids.shape[0]
        valid = node_ids >= 0
        nodes = node_ids.clamp_min(0)
        start = lv.offsets[nodes]  # (B,)
        count = torch.where(valid, lv.offsets[nodes + 1] - start, torch.zeros_like(start))  # (B,)
        rows = torch.repeat_interleave(torch.arange(b, device=node_ids.device), count)  # (E,)
        # edge index of each (row, child): row start + position within the row
        first = torch.cumsum(count, 0) - count  # (B,) where each row begins in the flat edge list
        edge = start[rows] + (torch.arange(rows.shape[0], device=node_ids.device) - first[rows])  # (E,)
        tok = lv.tokens[edge]
        mask = torch.zeros(b, w, dtype=torch.bool, device=node_ids.device)
        keep = tok < w
        mask[rows[keep], tok[keep]] = True
        return mask

    def step(self, node_ids: torch.Tensor, tokens: torch.Tensor, depth: int) -> torch.Tensor:
        """Follow one token per node: (B,) nodes at ``depth``, (B,) tokens -> (B,) nodes at ``depth+1`` or -1."""
        lv = self.levels[depth]
        if lv.keys.numel() == 0:
            return torch.full_like(node_ids, INVALID)
        tok = tokens.long()
        ok = (node_ids >= 0) & (tok >= 0) & (tok < self.width)
        key = node_ids.clamp_min(0) * self.width + tok.clamp(0, self.width - 1)  # (B,)
        pos = torch.searchsorted(lv.keys, key).clamp_max(lv.keys.numel() - 1)  # (B,)
        found = ok & (lv.keys[pos] == key)
        return torch.where(found, lv.children[pos], torch.full_like(pos, INVALID))

    def walk(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, t) token prefixes, t <= m -> (B,) node ids at depth t (-1 where the prefix is invalid)."""
        codes = torch.as_tensor(codes, dtype=torch.long, device=self.device)
        if codes.ndim != 2 or codes.shape[1] > self.depth:
            raise DataError(f"trie: prefixes must be (B, t) with t <= {self.depth}, got {tuple(codes.shape)}")
        nodes = self.root(codes.shape[0])
        for d in range(codes.shape[1]):  # loop over SID positions (<= m), never over beams
            nodes = self.step(nodes, codes[:, d], d)
        return nodes

    def contains(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, t) -> (B,) bool: is each row a valid SID prefix (a full SID when t == m)?"""
        return self.walk(codes) >= 0

    def items(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, m) full SIDs -> (B,) item ids, -1 for SIDs that name no item."""
        codes = torch.as_tensor(codes, dtype=torch.long, device=self.device)
        if codes.shape[1] != self.depth:
            raise DataError(f"trie: full SIDs have {self.depth} tokens, got {codes.shape[1]}")
        leaves = self.walk(codes)
        return torch.where(leaves >= 0, self.leaf_items[leaves.clamp_min(0)], torch.full_like(leaves, -1))
