"""Residual k-means (RQ-KMeans): k-means on the embeddings, then on the residuals, level by level.

No decoder and no gradient: the cheapest way to turn item embeddings into hierarchical semantic ids,
and the fallback when an RQ-VAE collapses (spec §1.1, §2.8 A-T1). Deterministic for a given seed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch

from genrec.errors import ConfigError
from genrec.sid.codebook import tensor_fingerprint

INITS = ("kmeans++", "random")


class KMeansResult(NamedTuple):
    centroids: torch.Tensor  # (K, D)
    assignments: torch.Tensor  # (N,) int64
    inertia: float  # mean squared distance to the assigned centroid


def sq_distances(x: torch.Tensor, c: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """(N, D), (K, D) -> (N, K) squared Euclidean distances, chunked over rows to bound memory."""
    c2 = (c * c).sum(-1)  # (K,)
    out = []
    for start in range(0, x.shape[0], chunk):
        xb = x[start:start + chunk]
        d = (xb * xb).sum(-1, keepdim=True) - 2.0 * xb @ c.T + c2  # (n, K)
        out.append(d.clamp_min_(0.0))
    return torch.cat(out) if len(out) > 1 else out[0]


def _init_centroids(x: torch.Tensor, k: int, init: str, gen: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    if init == "random" or n <= k:
        # Fewer points than codes: every point becomes a centroid and the rest repeat (they stay unused).
        idx = torch.randperm(n, generator=gen)[:k] if n >= k else torch.randint(0, n, (k,), generator=gen)
        if n < k:
            idx[:n] = torch.arange(n)
        return x[idx].clone()
    # k-means++: sample each next centroid proportionally to the squared distance to the nearest one.
    first = int(torch.randint(0, n, (1,), generator=gen))
    cents = torch.empty(k, x.shape[1], dtype=x.dtype)
    cents[0] = x[first]
    best = sq_distances(x, cents[:1]).squeeze(1)  # (N,)
    for j in range(1, k):
        total = best.sum()
        if total <= 0:  # all remaining points coincide with centroids
            nxt = int(torch.randint(0, n, (1,), generator=gen))
        else:
            nxt = int(torch.multinomial(best / total, 1, generator=gen))
        cents[j] = x[nxt]
        best = torch.minimum(best, sq_distances(x, cents[j:j + 1]).squeeze(1))
    return cents


def kmeans(x: torch.Tensor, k: int, iters: int = 20, init: str = "kmeans++", seed: int = 0) -> KMeansResult:
    """Lloyd's k-means with a fixed number of iterations, deterministic by seed.

    Empty clusters are re-seeded with the points farthest from their centroid, which keeps code usage high
    (an unused code is a wasted branch of the SID tree).
    """
    if init not in INITS:
        raise ConfigError(f"kmeans init '{init}' is unknown (choose one of {', '.join(INITS)})")
    if x.ndim != 2 or x.shape[0] == 0:
        raise ConfigError(f"kmeans needs a non-empty (N, D) matrix, got shape {tuple(x.shape)}")
    x = x.detach().float().cpu()
    gen = torch.Generator().manual_seed(seed)
    cents = _init_centroids(x, k, init, gen)  # (K, D)
    assign = torch.zeros(x.shape[0], dtype=torch.long)
    for _ in range(max(iters, 0)):
        dist = sq_distances(x, cents)  # (N, K)
        mind, assign = dist.min(dim=1)
        counts = torch.bincount(assign, minlength=k)  # (K,)
        sums = torch.zeros_like(cents).index_add_(0, assign, x)
        nonempty = counts > 0
        cents[nonempty] = sums[nonempty] / counts[nonempty, None].to(x.dtype)
        empty = (~nonempty).nonzero().squeeze(1)
        if empty.numel() and x.shape[0] >= k:
            far = torch.argsort(mind, descending=True, stable=True)[: empty.numel()]
            cents[empty] = x[far]
    dist = sq_distances(x, cents)
    mind, assign = dist.min(dim=1)
    return KMeansResult(cents, assign, float(mind.mean()))


@dataclass
class RQKMeansConfig:
    num_levels: int = 3
    codebook_size: int = 256
    iters: int = 20  # Lloyd iterations per level
    init: str = "kmeans++"  # or "random"
    seed: int = 0
    standardize: bool = False  # per-dimension z-score before quantizing
    first_codebook_size: int = 0  # level-1 codes when different (GLASS codebook resizing); 0 = codebook_size

    def level_size(self, level: int) -> int:
        """Codes of level ``level`` (0-based)."""
        return self.first_codebook_size if level == 0 and self.first_codebook_size > 0 else self.codebook_size


class LevelFit(NamedTuple):
    level: int
    inertia: float  # mean squared residual after this level
    usage: float  # fraction of the level's codes used by at least one item


class RQKMeans:
    """Residual k-means quantizer: ``codes[:, l] = argmin_k ||r_l - C_l[k]||``, ``r_{l+1} = r_l - C_l[codes]``."""

    name = "rqkmeans"

    def __init__(self, config: RQKMeansConfig | None = None) -> None:
        self.config = config or RQKMeansConfig()
        if self.config.num_levels < 1 or self.config.codebook_size < 2:
            raise ConfigError("rqkmeans: num_levels must be >= 1 and codebook_size >= 2")
        if self.config.first_codebook_size == 1 or self.config.first_codebook_size < 0:
            raise ConfigError("rqkmeans: first_codebook_size must be 0 (same as codebook_size) or >= 2")
        self.codebooks: torch.Tensor | None = None  # (L, K, D)
        self.mean: torch.Tensor | None = None  # (D,)
        self.std: torch.Tensor | None = None  # (D,)

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        return tuple(self.config.level_size(level) for level in range(self.config.num_levels))

    def params(self) -> dict[str, Any]:
        out = asdict(self.config)
        if not out["first_codebook_size"]:  # unset: keep the record (and fingerprints) of uniform codebooks
            del out["first_codebook_size"]
        return out

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float().cpu()
        if self.mean is not None and self.std is not None:
            x = (x - self.mean) / self.std
        return x

    def fit(self, x: torch.Tensor, *, seed: int | None = None) -> list[LevelFit]:
        """Fit all levels on ``x`` (N, D); returns per-level inertia and code usage."""
        cfg = self.config
        seed = cfg.seed if seed is None else seed
        x = x.detach().float().cpu()
        if cfg.standardize:
            self.mean, self.std = x.mean(0), x.std(0).clamp_min(1e-6)
        r = self._prep(x)  # (N, D)
        books, report = [], []
        for level in range(cfg.num_levels):
            size = cfg.level_size(level)
            res = kmeans(r, size, cfg.iters, cfg.init, seed + level)
            books.append(res.centroids)
            r = r - res.centroids[res.assignments]
            used = torch.unique(res.assignments).numel() / size
            report.append(LevelFit(level, float((r * r).sum(-1).mean()), used))
        self.codebooks = _pad_books(books)  # (L, K_max, D); rows beyond a level's size are never chosen
        return report

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, L) int64 codes (greedy residual assignment)."""
        if self.codebooks is None:
            raise ConfigError("rqkmeans: call fit() before encode()")
        r = self._prep(x)
        codes = []
        for level, book in enumerate(self.codebooks):  # (K_max, D)
            book = book[: self.config.level_size(level)]  # (K, D)
            c = sq_distances(r, book).argmin(dim=1)  # (N,)
            codes.append(c)
            r = r - book[c]
        return torch.stack(codes, dim=1).long()  # (N, L)

    def reconstruct(self, codes: torch.Tensor) -> torch.Tensor:
        """(N, L) codes -> (N, D) sum of the chosen centroids (in the standardised space when enabled)."""
        assert self.codebooks is not None
        return sum(self.codebooks[level][codes[:, level]] for level in range(codes.shape[1]))  # type: ignore[return-value]

    def fingerprint(self) -> str:
        if self.codebooks is None:
            raise ConfigError("rqkmeans: not fitted")
        extra_t = [self.mean, self.std] if self.mean is not None and self.std is not None else []
        return tensor_fingerprint(self.codebooks, *extra_t, extra={"name": self.name, **self.params()})


def _pad_books(books: list[torch.Tensor]) -> torch.Tensor:
    """Stack per-level codebooks of different sizes into (L, K_max, D), zero rows as padding."""
    k = max(b.shape[0] for b in books)
    return torch.stack([torch.cat([b, b.new_zeros(k - b.shape[0], b.shape[1])]) for b in books])
