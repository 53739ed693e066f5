"""SID-Tier (GLASS, spec §4.4): a long history summarised as a (level-1 code x similarity tier) histogram.

Every level-1 code ``a`` gets a prototype ``p_a`` = the mean content vector of the catalogue items whose SID
starts with ``a``. A long-history item ``j`` is compared with every prototype (cosine), each similarity falls
into one of ``N`` equal bins ("tiers") of ``[-1, 1]``, and the user's table counts the items per (code, tier).

Because prototypes and item vectors are fixed, the tier of every (item, code) pair is computed once for the
whole catalogue (:func:`tier_bins`); a user's table is then a scatter-add over its long history, cost
``O(|H_l| * K_0)`` and independent of the embedding width, and it depends on nothing but the long-history
items (so it can be precomputed per user offline).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genrec.errors import ConfigError, DataError

TIER_NORMS = ("fraction", "count")


def code_prototypes(vectors: torch.Tensor, first_codes: torch.Tensor, num_codes: int) -> torch.Tensor:
    """(N, D) item vectors, (N,) level-1 codes -> (K, D) unit-norm mean vector per code (zero for unused codes).

    Vectors are L2-normalised before averaging so that long, popular-text items do not dominate a prototype.
    """
    if vectors.ndim != 2 or first_codes.shape != (vectors.shape[0],):
        raise DataError(f"sid-tier: need (N, D) vectors and (N,) codes, got {tuple(vectors.shape)} and "
                        f"{tuple(first_codes.shape)}")
    if first_codes.numel() and (first_codes.min() < 0 or first_codes.max() >= num_codes):
        raise DataError(f"sid-tier: level-1 codes must lie in 0..{num_codes - 1}")
    x = F.normalize(vectors.float(), dim=-1)  # (N, D)
    sums = torch.zeros(num_codes, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, first_codes, x)
    return F.normalize(sums, dim=-1)  # (K, D); a code without items stays the zero vector


def tier_bins(vectors: torch.Tensor, prototypes: torch.Tensor, num_tiers: int) -> torch.Tensor:
    """(N, D) item vectors, (K, D) unit prototypes -> (N, K) int64 tier of ``cos(x_j, p_a)`` in ``[-1, 1]``.

    Bin ``n`` covers ``[-1 + 2n/N, -1 + 2(n+1)/N)``; a similarity of exactly 1 goes to the top bin. A code
    without items (zero prototype) gets tier -1: it is never counted.
    """
    if num_tiers < 1:
        raise ConfigError(f"sid-tier: num_tiers must be >= 1, got {num_tiers}")
    cos = F.normalize(vectors.float(), dim=-1) @ prototypes.float().T  # (N, K)
    bins = ((cos + 1.0) * 0.5 * num_tiers).floor().long().clamp(0, num_tiers - 1)
    return bins.masked_fill((prototypes.norm(dim=-1) == 0)[None, :], -1)


def tier_histogram(bins: torch.Tensor, valid: torch.Tensor, num_tiers: int) -> torch.Tensor:
    """(B, L, K) tiers of each long-history item for every code (-1 = not counted), (B, L) bool real items
    -> (B, K, N) counts. One ``bincount`` over (row, code, tier) cells, no loop over users."""
    b, length, k = bins.shape
    width = num_tiers + 1  # per code: one spare cell (collects tier -1), then the N tiers
    cells = b * k * width
    idx_t = torch.int32 if cells < 2**31 else torch.int64
    base = (torch.arange(b, device=bins.device)[:, None, None] * (k * width)
            + torch.arange(k, device=bins.device)[None, None, :] * width + 1).to(idx_t)  # (B, 1, K)
    idx = bins + base  # (B, L, K) flat cell of each (item, code); tier -1 lands on the spare cell
    counts = torch.bincount(idx[valid].reshape(-1).long(), minlength=cells)  # (B*K*(N+1),)
    return counts.view(b, k, width)[..., 1:].float()


def tier_features(counts: torch.Tensor, sizes: torch.Tensor, norm: str = "fraction") -> torch.Tensor:
    """(B, K, N) counts, (B,) long-history lengths -> (B, K*N + 1) MLP input (spec A-L2).

    ``fraction``: counts divided by the long-history length, plus ``log(1 + |H_l|)`` as the last feature, so
    the MLP sees the shape of the histogram independently of how long the user's history is.
    ``count``: raw counts, plus the same length feature.
    """
    if norm not in TIER_NORMS:
        raise ConfigError(f"model.tier_norm '{norm}' is not one of {list(TIER_NORMS)}")
    b, k, n = counts.shape
    size = sizes.to(counts.dtype)  # (B,)
    flat = counts.reshape(b, k * n)
    if norm == "fraction":
        flat = flat / size.clamp_min(1.0)[:, None]
    return torch.cat([flat, torch.log1p(size)[:, None]], 1)


def tier_feature_dim(num_codes: int, num_tiers: int) -> int:
    """Width of :func:`tier_features` output for ``num_codes`` codes and ``num_tiers`` tiers."""
    return num_codes * num_tiers + 1


def bin_dtype(num_tiers: int) -> torch.dtype:
    """Smallest integer dtype that stores tier ids (the per-catalogue table is kept in the weights)."""
    return torch.int16 if num_tiers < 2**15 else torch.int32


def cosine_neighbours(prototypes: torch.Tensor, k: int) -> torch.Tensor:
    """(K, D) unit prototypes -> (K, k) the ``k`` most similar other codes of each code (semantic neighbours).

    Codes without items (zero prototypes) are never chosen as neighbours unless nothing else is left.
    """
    num = prototypes.shape[0]
    if k < 1 or k >= num:
        raise ConfigError(f"model.neighbour_codes must lie in 1..{num - 1} for a level-1 codebook of {num}")
    sim = prototypes.float() @ prototypes.float().T  # (K, K)
    empty = prototypes.norm(dim=-1) == 0  # (K,)
    sim = sim.masked_fill(empty[None, :], -3.0)  # below any cosine: only picked when nothing else is left
    sim.fill_diagonal_(-4.0)  # never the code itself
    return sim.topk(k, dim=1).indices  # (K, k)
