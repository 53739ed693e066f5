"""GLASS's fusion gate (spec §4.5): ``g = sigmoid([Z_s; Z_r] W_g)``, ``Z = (1 - g) Z_s + g Z_r``, and the options
that keep a learned gate from saturating.

Trained at a constant lr 0.01, the spec's per-dimension gate ends up mostly within 0.01 of 0 or 1 (a switch, with
little gradient through the sigmoid), while a fixed g = 0.5 scores better. The options, all off by default (then
the gate is the spec's, op for op and draw for draw):

- ``gate_init: zero``: W_g and its bias start at 0, so g = 0.5 (the fixed gate) at the first step;
- ``gate_temperature`` tau: ``g = sigmoid(logit / tau)``, a flatter sigmoid for tau > 1;
- ``gate_shape: token``: ``Linear(2d, 1)``, one scalar gate per decoder position instead of one per dimension;
- ``gate_penalty`` lambda: ``lambda * mean((logit / tau)^2)`` over the used gate entries, added to the mean
  training loss (through ``SIDLogits.aux``), pulls the sigmoid's argument toward 0.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from genrec.errors import ConfigError

GATES = ("learned", "fixed")
GATE_LAYERS = ("all", "last")  # the decoder layers that get the second cross-attention and a gate (A-L5)
GATE_INITS = ("default", "zero")  # nn.Linear's own init | W_g = 0, b = 0: g = 0.5 (the fixed gate) at step 0
GATE_SHAPES = ("dim", "token")  # one gate per model dimension (spec §4.5) | one scalar per decoder position
GATE_EPS = 1e-4  # the learned gate lives in [eps, 1 - eps]: strictly inside (0, 1), both branches keep a gradient

GateSink = list[tuple[torch.Tensor, torch.Tensor]]  # (sigmoid argument (R, T, w), where it is used (R|1, T, 1))


def learned_gates(cfg: Any, n: int) -> nn.ModuleList:
    """One W_g per fused layer of a ``GLASS.Config``: Linear(2d, d) (spec §4.5) or Linear(2d, 1) (``gate_shape:
    token``). Zeroing runs after construction, so the random draws (and every other parameter) stay the default's."""
    width = cfg.d_model if cfg.gate_shape == "dim" else 1
    gates = nn.ModuleList(nn.Linear(2 * cfg.d_model, width) for _ in range(n))
    if cfg.gate_init == "zero":
        with torch.no_grad():
            for lin in gates:
                lin.weight.zero_()
                lin.bias.zero_()
    return gates


def gate_values(lin: nn.Module, z_s: torch.Tensor, z_r: torch.Tensor, temperature: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, T, d) both cross-attention outputs -> (sigmoid argument, gate in [eps, 1 - eps]), each (R, T, d|1)."""
    logit = lin(torch.cat([z_s, z_r], -1))  # (R, T, d) or (R, T, 1)
    if temperature != 1.0:  # skipped at the default: the spec's gate, op for op
        logit = logit / temperature
    return logit, GATE_EPS + (1 - 2 * GATE_EPS) * torch.sigmoid(logit)


def gate_penalty(sink: GateSink, like: torch.Tensor) -> torch.Tensor:
    """Mean squared sigmoid argument over the gate entries that are used, all fused layers; 0 when none is.

    A squared logit pulls g toward 0.5 with a force that grows with the saturation, while a gate that mixes
    (|logit| ~ 1) is barely taxed. The unused entries (the first position, rows with no retrieved item) are left
    out: their gate multiplies nothing.
    """
    total = like.new_zeros((), dtype=torch.float32)
    count = like.new_zeros((), dtype=torch.float32)
    for logit, on in sink:  # (R, T, w), (R|1, T, 1)
        total = total + (logit.float().square() * on).sum()
        count = count + on.expand(logit.shape[0], -1, -1).sum() * logit.shape[-1]
    return total / count.clamp(min=1.0)


def check_gate(cfg: Any) -> None:
    """The gate keys of a ``GLASS.Config``: valid values, and the learned-gate options only with a learned gate."""
    if cfg.gate not in GATES:
        raise ConfigError(f"model.gate '{cfg.gate}' is not one of {list(GATES)}")
    if not 0.0 < cfg.fixed_gate < 1.0:
        raise ConfigError(f"model.fixed_gate must lie in (0, 1), got {cfg.fixed_gate}")
    if cfg.gate_layers not in GATE_LAYERS:
        raise ConfigError(f"model.gate_layers '{cfg.gate_layers}' is not one of {list(GATE_LAYERS)}")
    if cfg.gate_init not in GATE_INITS:
        raise ConfigError(f"model.gate_init '{cfg.gate_init}' is not one of {list(GATE_INITS)}")
    if cfg.gate_shape not in GATE_SHAPES:
        raise ConfigError(f"model.gate_shape '{cfg.gate_shape}' is not one of {list(GATE_SHAPES)}")
    if not (math.isfinite(cfg.gate_temperature) and cfg.gate_temperature > 0):
        raise ConfigError(f"model.gate_temperature must be a finite number > 0, got {cfg.gate_temperature}")
    if not (math.isfinite(cfg.gate_penalty) and cfg.gate_penalty >= 0):
        raise ConfigError(f"model.gate_penalty must be a finite number >= 0, got {cfg.gate_penalty}")
    shaped = [k for k, on in (("gate_init", cfg.gate_init != "default"), ("gate_temperature", cfg.gate_temperature != 1),
                              ("gate_shape", cfg.gate_shape != "dim"), ("gate_penalty", cfg.gate_penalty != 0)) if on]
    if shaped and (cfg.gate != "learned" or not cfg.hard_search):
        raise ConfigError(f"model.{shaped[0]} shapes the learned fusion gate: it needs model.gate: learned and "
                          "model.hard_search: true")
