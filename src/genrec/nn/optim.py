"""The one optimiser and learning-rate schedule factory of every trainer (and of the RQ-VAE below them).

It lives on the ``nn`` floor so that ``sid/rqvae.py`` can use it too. AdamW is built from the shared knobs
(``lr``, ``betas``, ``weight_decay``; ``grad_clip`` is applied by the training loop) of
:class:`genrec.config.OptimConfig`, the family the ``train:``, ``pretrain:`` and ``rerank:`` sections share.

Schedules are pure functions of the 0-based optimiser step, so a resumed run sets the very learning rate the
uninterrupted one would have:

- ``constant``: ``lr`` at every step (retrievers, rankers, the re-ranker, stage-1 pre-training);
- ``inverse_sqrt``: TIGER's: optional linear ramp over ``linear_warmup_steps``, ``lr`` held until
  ``warmup_steps``, then ``lr * sqrt(warmup_steps / step)``;
- ``cosine``: GAMER's (the authors' HF Trainer): linear warmup over ``warmup_ratio`` of ``total_steps``,
  then cosine decay to 0 at ``total_steps``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from genrec.errors import ConfigError

SCHEDULES = ("constant", "inverse_sqrt", "cosine")


def adamw(params: Iterable[Any], lr: float, betas: tuple[float, float] = (0.9, 0.999),
          weight_decay: float = 0.0, fused: bool = False) -> torch.optim.AdamW:
    """AdamW over ``params`` (default betas are torch's own, as the RQ-VAE has always used); ``fused`` picks
    torch's one-kernel update (faster, rounds differently from the default)."""
    return torch.optim.AdamW(params, lr=lr, betas=(float(betas[0]), float(betas[1])), weight_decay=weight_decay,
                             **({"fused": True} if fused else {}))


def build_optimizer(params: Iterable[Any] | torch.nn.Module, knobs: Any) -> torch.optim.AdamW:
    """AdamW from a section's optimiser knobs (``lr``, ``betas``, ``weight_decay`` and, if it has them, ``fused``
    and ``lr_scales``). Given a module, ``lr_scales`` ({name prefix: multiplier}) puts the parameters whose name
    starts with a prefix into a group of their own whose rate is ``lr * multiplier`` (``lr_scale`` in the group:
    the training loop keeps it under a schedule); without scales the one group is the module's parameters, in
    order, as before."""
    scales = dict(getattr(knobs, "lr_scales", None) or {})
    if isinstance(params, torch.nn.Module):
        params = scaled_groups(params, scales, knobs.lr) if scales else params.parameters()
    elif scales:
        raise ConfigError("train.lr_scales: this trainer does not take per-parameter learning rates; drop the key")
    return adamw(params, knobs.lr, tuple(knobs.betas), knobs.weight_decay, bool(getattr(knobs, "fused", False)))


def scaled_groups(module: torch.nn.Module, scales: dict[str, float], lr: float) -> list[dict[str, Any]]:
    """Parameter groups of ``module``: one per prefix of ``scales`` (first matching prefix wins), then the rest at
    multiplier 1. A prefix that names no parameter is refused: a typo must not silently train at full rate."""
    groups: dict[str, list[torch.nn.Parameter]] = {p: [] for p in scales}
    rest: list[torch.nn.Parameter] = []
    for name, p in module.named_parameters():
        hit = next((pre for pre in scales if name == pre or name.startswith(pre + ".")), None)
        (groups[hit] if hit is not None else rest).append(p)
    empty = [pre for pre, ps in groups.items() if not ps]
    if empty:
        names = ", ".join(sorted({n.split(".")[0] for n, _ in module.named_parameters()}))
        raise ConfigError(f"train.lr_scales: '{empty[0]}' names no parameter of the model (its parts: {names})")
    out = [{"params": ps, "lr": lr * scales[pre], "lr_scale": float(scales[pre]), "base_scale": float(scales[pre])}
           for pre, ps in groups.items()]
    return out + [{"params": rest, "lr": lr, "lr_scale": 1.0, "base_scale": 1.0}] if rest else out


def inverse_sqrt_lr(step: int, base_lr: float, warmup_steps: int, linear_warmup_steps: int = 0) -> float:
    """Learning rate of optimiser step ``step`` (0-based): optional linear ramp, constant, then 1/sqrt decay."""
    s = step + 1
    ramp = min(1.0, s / linear_warmup_steps) if linear_warmup_steps > 0 else 1.0
    w = max(warmup_steps, 1)
    return base_lr * ramp * math.sqrt(w / max(s, w))


def cosine_lr(step: int, total_steps: int, base_lr: float, warmup_ratio: float) -> float:
    """Learning rate of optimiser step ``step`` (0-based): linear warmup, then cosine decay to 0 at ``total_steps``."""
    warm = int(math.ceil(total_steps * warmup_ratio))
    if step < warm:
        return base_lr * (step + 1) / warm
    progress = min(1.0, (step - warm) / max(1, total_steps - warm))
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class LRSchedule:
    """A learning rate per optimiser step; ``varies`` is False for ``constant`` (the loop then never touches
    the optimiser's rate and logs no ``lr``)."""

    kind: str = "constant"
    base_lr: float = 1e-3
    warmup_steps: int = 0  # inverse_sqrt
    linear_warmup_steps: int = 0  # inverse_sqrt
    total_steps: int = 0  # cosine
    warmup_ratio: float = 0.0  # cosine

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ConfigError(f"learning-rate schedule '{self.kind}' is not one of {SCHEDULES}")

    @property
    def varies(self) -> bool:
        return self.kind != "constant"

    def __call__(self, step: int) -> float:
        if self.kind == "inverse_sqrt":
            return inverse_sqrt_lr(step, self.base_lr, self.warmup_steps, self.linear_warmup_steps)
        if self.kind == "cosine":
            return cosine_lr(step, self.total_steps, self.base_lr, self.warmup_ratio)
        return self.base_lr


def lr_schedule(kind: str, base_lr: float, **knobs: Any) -> LRSchedule:
    """``lr_schedule("cosine", 5e-4, total_steps=..., warmup_ratio=0.04)`` and the like (see the module doc)."""
    return LRSchedule(kind, base_lr, **knobs)


__all__ = ["SCHEDULES", "LRSchedule", "adamw", "build_optimizer", "cosine_lr", "inverse_sqrt_lr", "lr_schedule",
           "scaled_groups"]
