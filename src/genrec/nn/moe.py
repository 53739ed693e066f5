"""Feed-forward "experts" chosen by a deterministic route (e.g. a token's position inside its item).

GAMER (and PBATransformer before it) give each token position of an interaction (behavior token, SID level 1,
2, ...) its own SwiGLU feed-forward network: no gating network and no load-balancing loss, the route is
known from the token layout. Tokens are grouped per expert so each expert runs one dense matmul.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLU(nn.Module):
    """``W_down · Drop(SiLU(W_gate x) ⊙ W_up x)`` without biases (Qwen/LLaMA MLP)."""

    def __init__(self, d_in: int, d_ff: int, d_out: int, dropout: float) -> None:
        super().__init__()
        self.gate = nn.Linear(d_in, d_ff, bias=False)
        self.up = nn.Linear(d_in, d_ff, bias=False)
        self.down = nn.Linear(d_ff, d_out, bias=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.drop(F.silu(self.gate(x)) * self.up(x)))


class RoutedFFN(nn.Module):
    """``num_experts`` SwiGLU networks; token ``t`` goes through expert ``route[t]`` (a deterministic route)."""

    def __init__(self, num_experts: int, d_in: int, d_ff: int, d_out: int, dropout: float) -> None:
        super().__init__()
        if num_experts < 1:
            raise ValueError("RoutedFFN needs at least one expert")
        self.d_out = d_out
        self.experts = nn.ModuleList(SwiGLU(d_in, d_ff, d_out, dropout) for _ in range(num_experts))

    def forward(self, x: torch.Tensor, route: torch.Tensor) -> torch.Tensor:
        """(..., d_in) inputs, (...) expert ids in ``[0, num_experts)`` -> (..., d_out)."""
        if len(self.experts) == 1:
            return self.experts[0](x)
        flat = x.reshape(-1, x.shape[-1])  # (N, d_in)
        r = route.reshape(-1)  # (N,)
        out = flat.new_zeros(flat.shape[0], self.d_out)  # (N, d_out)
        for e, expert in enumerate(self.experts):  # loop over experts (a handful), never over tokens
            idx = torch.nonzero(r == e).squeeze(1)
            if idx.numel():
                out.index_copy_(0, idx, expert(flat.index_select(0, idx)).to(out.dtype))
        return out.reshape(*x.shape[:-1], self.d_out)
