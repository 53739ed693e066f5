"""Next-item objectives for retrievers: sampled softmax, full softmax and BCE.

Each takes the user states at supervised positions ``(T, D)`` (already L2-normalised by the model),
the positive item ids ``(T,)`` and the model (for item vectors), and returns the *sum* of per-position
losses; the trainer divides by the global number of supervised positions, which keeps the loss
identical between one process and several data-parallel ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genrec.config import ObjectiveConfig
from genrec.errors import ConfigError
from genrec.models.base import Retriever
from genrec.nn.gathered_logits import dense_gathered_logits, gathered_logits

MASKED_LOGIT = -5e4  # a sampled negative equal to the positive is pushed out of the softmax


class SampledSoftmax:
    """Softmax over the positive and R negatives drawn uniformly from the whole catalogue.

    Cosine logits divided by a temperature (HSTU's public-experiment loss). ``shared_negatives``
    draws one set of R negatives per batch and scores it with a matmul (cheap on CPU); otherwise
    each position gets its own R negatives as in the reference code; when the catalogue is smaller than the
    R x D floats a position's gathered negatives would take (MovieLens: 3.7k items against 128 x 50), their
    logits are read from one (T, N+1) product instead, the same values at a fraction of the cost. On the CPU (no
    autocast) both give way to :func:`~genrec.nn.gathered_logits.gathered_logits`, which builds neither: 2.8x
    less time for the logits and their gradients at MovieLens-1M's sizes (``benchmarks/sampled_logits.py``).
    """

    gathered_on_cpu = True  # False: the dense paths above on the CPU too (the benchmark's baseline)

    def __init__(self, cfg: ObjectiveConfig) -> None:
        if cfg.num_negatives < 1:
            raise ConfigError("objective.num_negatives must be >= 1")
        self.R = cfg.num_negatives
        self.tau = cfg.temperature
        self.shared = cfg.shared_negatives
        self.history_negatives = cfg.history_negatives

    def __call__(self, model: Retriever, states: torch.Tensor, positives: torch.Tensor,
                 generator: torch.Generator | None = None, history_logit: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """``history_logit`` (T, L): raw logits of each position's earlier items (see :func:`history_logits`)."""
        T = states.shape[0]
        pos_v = model.item_vectors(positives)  # (T, D)
        pos_logit = (states * pos_v).sum(-1, keepdim=True) / self.tau  # (T, 1)
        n = model.num_items
        if self.shared:
            neg = torch.randint(1, n + 1, (self.R,), generator=generator, device="cpu").to(states.device)
            neg_v = model.item_vectors(neg)  # (R, D)
            neg_logit = states @ neg_v.T / self.tau  # (T, R)
            hit = positives[:, None] == neg[None, :]
        else:
            neg = torch.randint(1, n + 1, (T, self.R), generator=generator, device="cpu").to(states.device)
            blocked = states.device.type == "cpu" and not torch.is_autocast_enabled("cpu") and self.gathered_on_cpu
            logits_of = gathered_logits if blocked else dense_gathered_logits
            neg_logit = logits_of(states, model.item_table(), neg) / self.tau  # (T, R)
            hit = positives[:, None] == neg
        neg_logit = neg_logit.masked_fill(hit, MASKED_LOGIT)
        parts = [pos_logit, neg_logit] if history_logit is None else [pos_logit, neg_logit, history_logit / self.tau]
        logits = torch.cat(parts, dim=1)  # (T, 1+R[+L])
        return -F.log_softmax(logits.float(), dim=1)[:, 0].sum()


class FullSoftmax:
    """Softmax over the whole catalogue (exact; affordable up to ~100k items)."""

    history_negatives = False  # every item is a negative already

    def __init__(self, cfg: ObjectiveConfig) -> None:
        self.tau = cfg.temperature

    def __call__(self, model: Retriever, states: torch.Tensor, positives: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        logits = states @ model.item_table().T / self.tau  # (T, N+1)
        logits[:, 0] = MASKED_LOGIT
        return F.cross_entropy(logits.float(), positives, reduction="sum")


class BCE:
    """Binary cross-entropy with one uniform negative per position (the 2018 SASRec recipe)."""

    history_negatives = False

    def __init__(self, cfg: ObjectiveConfig) -> None:
        self.tau = cfg.temperature

    def __call__(self, model: Retriever, states: torch.Tensor, positives: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        T = states.shape[0]
        neg = torch.randint(1, model.num_items + 1, (T,), generator=generator, device="cpu").to(states.device)
        pos = (states * model.item_vectors(positives)).sum(-1) / self.tau
        ng = (states * model.item_vectors(neg)).sum(-1) / self.tau
        loss = F.softplus(-pos.float()) + F.softplus(ng.float()) * (neg != positives)
        return loss.sum()


def history_logits(model: Retriever, states: torch.Tensor, items: torch.Tensor, targets: torch.Tensor
                   ) -> torch.Tensor:
    """(B, L, L) logits of each position's state against the items it has read (inputs at or before it).

    The user's own history as negatives (``objective.history_negatives``): uniform sampling seldom draws a
    history item, so a model trained with it learns to put the user's last items first, which the usual
    history filter hides and an unfiltered evaluation (the TIGER paper's) punishes. Entries that are padding,
    later than the position, or equal to its target (a repeat is a positive, not a negative) are masked.
    """
    hist_v = model.item_vectors(items)  # (B, L, D)
    logits = states @ hist_v.transpose(1, 2)  # (B, L_query, L_history)
    L = items.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=items.device).tril()  # history index <= position
    keep = causal[None] & (items[:, None, :] > 0) & (items[:, None, :] != targets[:, :, None])
    return logits.masked_fill(~keep, MASKED_LOGIT)


OBJECTIVES = {"sampled_softmax": SampledSoftmax, "full_softmax": FullSoftmax, "bce": BCE}


def build_objective(cfg: ObjectiveConfig):
    if cfg.name not in OBJECTIVES:
        raise ConfigError(f"objective.name: unknown objective '{cfg.name}' (known: {', '.join(OBJECTIVES)})")
    if cfg.history_negatives and cfg.name != "sampled_softmax":
        raise ConfigError(f"objective.history_negatives needs objective.name sampled_softmax (got '{cfg.name}'; "
                          "full_softmax scores every item already)")
    return OBJECTIVES[cfg.name](cfg)
