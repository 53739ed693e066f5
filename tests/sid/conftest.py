"""Fixtures for the semantic-id tests: small SID tables, clustered embeddings and toy decoder step functions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from genrec.sid import SIDTable, SIDTrie

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
BEAUTY_TEXT = SHARED_DATA / "amazon2014-p5-beauty-sports-sequences" / "beauty_item_text.jsonl.gz"


def random_table(num_items: int, levels: int = 3, codebook: int = 4, seed: int = 0) -> SIDTable:
    """Random quantizer codes (collisions likely) made unique by the collision level; item ids are not 1..N."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, codebook, size=(num_items, levels))
    item_ids = rng.permutation(np.arange(100, 100 + 3 * num_items))[:num_items]
    return SIDTable.build(item_ids, codes, [codebook] * levels, quantizer="random")


def clustered(n: int = 800, dim: int = 16, clusters: int = 32, noise: float = 0.2, seed: int = 0) -> torch.Tensor:
    """(n, dim) points around ``clusters`` well-separated centres, every centre used."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=g) * 4.0
    which = torch.arange(n) % clusters
    return centres[which] + noise * torch.randn(n, dim, generator=g)


class TableDecoder:
    """A decoder whose logits depend on (position, last token): a fixed random table per position.

    Its state is a per-row copy of the tokens decoded so far (a stand-in for a key/value cache): every call
    asserts the beam search reordered that state consistently with the tokens it passes in.
    """

    def __init__(self, trie: SIDTrie, batch: int, seed: int = 0, scale: float = 3.0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.width = max(trie.codebook_sizes)
        self.tables = [scale * torch.randn(batch, self.width + 1, self.width, generator=g) for _ in range(trie.depth)]
        self.batch = batch

    def initial_state(self) -> dict[str, Any]:
        return {"user": torch.arange(self.batch), "cache": torch.zeros(self.batch, 0, dtype=torch.long)}

    def __call__(self, tokens: torch.Tensor, state: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        t = tokens.shape[1]
        cache = state["cache"]  # the tokens seen by the previous call, reordered by the search
        assert cache.shape == (tokens.shape[0], max(t - 1, 0)), "state rows do not follow the beams"
        assert torch.equal(cache, tokens[:, : cache.shape[1]]), "state was not reordered with the beams"
        last = tokens[:, -1] if t else torch.full((tokens.shape[0],), self.width)
        logits = self.tables[t][state["user"], last]  # (R, V)
        return logits, {"user": state["user"], "cache": tokens}


def prefer_invalid_step(bad: list[int], width: int):
    """Logits that strongly prefer the token sequence ``bad`` (which the caller picks outside the trie)."""

    def step(tokens: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        t = tokens.shape[1]
        logits = torch.zeros(tokens.shape[0], width)
        logits[:, bad[t]] = 10.0
        return logits, state

    return step


@pytest.fixture
def small_table() -> SIDTable:
    return random_table(30, levels=3, codebook=4, seed=1)
