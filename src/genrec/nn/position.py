"""Relative position and time biases (HSTU's ``rab^{p,t}``).

HSTU adds to every attention score a learned scalar for the relative position ``j - i`` and a
learned scalar for the log-bucketed time gap between the *query's next event* and key ``j``.
Using the next event's time lets the last position know when the request is made.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def log_time_bucket(delta: torch.Tensor, num_buckets: int = 128, base: float = 0.301) -> torch.Tensor:
    """floor(ln(max(|delta|, 1)) / base), clipped to [0, num_buckets] (HSTU's bucket function)."""
    d = delta.abs().clamp(min=1).to(torch.float32)
    return (torch.log(d) / base).floor().clamp(0, num_buckets).to(torch.int64)


class RelativeBucketedTimeAndPositionBias(nn.Module):
    """rab[b, i, j] = w_pos[(N-1) + j - i] + w_ts[bucket(qt[b, i] - t[b, j])].

    ``use_pos`` / ``use_time`` = False drops that term (the ablations); both tables exist either way, so
    the parameters and their initialisation do not depend on the ablation.
    """

    def __init__(self, max_len: int, num_time_buckets: int = 128, use_time: bool = True,
                 use_pos: bool = True) -> None:
        super().__init__()
        self.max_len = max_len
        self.num_time_buckets = num_time_buckets
        self.pos_w = nn.Parameter(torch.empty(2 * max_len - 1).normal_(0, 0.02))
        self.ts_w = nn.Parameter(torch.empty(num_time_buckets + 1).normal_(0, 0.02))
        self.use_time, self.use_pos = use_time, use_pos

    def forward(self, timestamps: torch.Tensor, query_times: torch.Tensor) -> torch.Tensor:
        """timestamps, query_times: (B, L) -> (B, L, L) bias (query i, key j)."""
        if not (self.use_time and self.use_pos):
            return self._partial(timestamps, query_times)
        L = timestamps.shape[1]
        if L > self.max_len:
            raise ValueError(f"sequence length {L} exceeds the bias table's max_len {self.max_len}")
        ar = torch.arange(L, device=timestamps.device)
        pos_idx = (self.max_len - 1) + ar[None, :] - ar[:, None]  # (L, L)
        pos = self.pos_w[pos_idx]  # (L, L)
        delta = query_times[:, :, None] - timestamps[:, None, :]  # (B, L, L)
        ts = self.ts_w[log_time_bucket(delta, self.num_time_buckets)]  # (B, L, L)
        return ts + pos[None]

    def _partial(self, timestamps: torch.Tensor, query_times: torch.Tensor) -> torch.Tensor:
        """Only the position or only the time part (or neither): the research layer's ablation sum."""
        L = timestamps.shape[1]
        out = torch.zeros(timestamps.shape[0], L, L, device=timestamps.device, dtype=self.pos_w.dtype)
        if self.use_pos:
            ar = torch.arange(L, device=timestamps.device)
            out = out + self.pos_w[(self.max_len - 1) + ar[None, :] - ar[:, None]][None]
        if self.use_time:
            delta = query_times[:, :, None] - timestamps[:, None, :]
            out = out + self.ts_w[log_time_bucket(delta, self.num_time_buckets)]
        return out


def next_event_times(timestamps: torch.Tensor, lengths: torch.Tensor, query_time: torch.Tensor) -> torch.Tensor:
    """(B, L) time of the event after each position; the last real position gets the request time."""
    qt = torch.empty_like(timestamps)
    qt[:, :-1] = timestamps[:, 1:]
    qt[:, -1] = timestamps[:, -1]
    last = (lengths - 1).clamp(min=0)
    qt[torch.arange(qt.shape[0], device=qt.device), last] = query_time
    return qt


def sinusoid_table(n: int, d: int) -> torch.Tensor:
    """Fixed sinusoidal table (n, d), for modules that want positions without parameters."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    out = torch.zeros(n, d)
    out[:, 0::2] = torch.sin(pos * div)
    out[:, 1::2] = torch.cos(pos * div[: out[:, 1::2].shape[1]])
    return out
