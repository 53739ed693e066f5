"""TIGER's T5-style building blocks: RMSNorm, bucketed relative positions, attention with cacheable keys/values,
and the encoder and decoder layers.

Kept apart from ``genrec.models.tiger`` (the model, its token layout and decoding) because GLASS reuses the
attention and the relative buckets and GAMER reuses the norm; the layer classes read their sizes from
``TIGER.Config``.

**Training kernels** (``model.kernels``). ``reference`` (the default) is the layer code as it always was, so
every recorded run reproduces bit for bit. ``fused`` changes only training-mode forward/backward (evaluation
and beam search run the reference code): dropout keep-masks come from 16 random bits per element drawn by
numpy's SFC64 (seeded by one draw of torch's generator, so seeds and checkpointed RNG state still govern it;
drop probability ``round(p * 2^16) / 2^16``) instead of torch's per-element ``bernoulli_``, which cost more than
every matmul of a CPU step; each dropout scale is folded into the next linear layer's weight; ReLU and its
dropout are one autograd node; self-attention projects q, k, v in one matmul and runs softmax-dropout-matmul
without SDPA's fully-masked-row handling; RMSNorm uses the fused kernel. Same model and distribution of
dropout masks, a different random stream: a fused run does not reproduce a reference run's numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genrec.errors import ConfigError

if TYPE_CHECKING:
    from genrec.models.tiger import TIGER

Fuse = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (normed query, cross-attention output) -> output
KERNELS = ("reference", "fused")
_BITS = 1 << 16  # a keep-mask element is 16 random bits


def drop_threshold(p: float) -> tuple[int, float]:
    """Dropout probability ``p`` -> (drop threshold on 16-bit draws, the unbiased scale ``1 / P(keep)``)."""
    t = min(max(round(p * _BITS), 0), _BITS - 1)
    return t, _BITS / (_BITS - t)


def keep_mask(shape: tuple[int, ...] | torch.Size, p: float, device: torch.device,
              dtype: torch.dtype = torch.bool) -> torch.Tensor:
    """A dropout keep-mask, 1 with probability ``1 - round(p * 2^16) / 2^16``, in ``dtype`` (that of the tensor it
    multiplies: torch's CPU kernels are several times slower when a bool operand meets a float one).

    On the CPU, numpy's SFC64 makes four 16-bit draws per 64-bit word, seeded by one draw of torch's default
    generator (``torch.manual_seed`` and checkpointed RNG state govern it); this is about 8x cheaper than
    ``bernoulli_``. Other devices draw with torch (their generators are fast already).
    """
    if device.type != "cpu" or torch.compiler.is_compiling():
        return (torch.rand(shape, device=device) >= p).to(dtype)
    n = math.prod(shape)
    seed = int(torch.randint(0, 2**62, (1,)))
    raw = np.random.SFC64(seed).random_raw((n + 3) // 4)  # (ceil(n/4),) uint64
    bits = torch.from_numpy(raw.view(np.int16)[:n])  # (n,) uniform over [-2^15, 2^15)
    out = torch.empty(n, dtype=dtype)
    return torch.ge(bits, drop_threshold(p)[0] - (_BITS >> 1), out=out).view(shape)


class MaskedBias(NamedTuple):
    """The fused path's attention bias: a shared additive bias and the padded keys, filled with -inf in place
    instead of materialising a (B, h, S, S) bias. Exact: the softmax gives those keys weight 0, so their
    gradient is 0 either way."""

    bias: torch.Tensor  # (1, h, T, S)
    padded: torch.Tensor | None  # (B, 1, 1, S) True on keys to hide; None = every key visible


class Dropout(nn.Module):
    """``nn.Dropout`` (the reference: identical numbers and RNG use), or with ``fused`` the cheap keep-mask above."""

    def __init__(self, p: float, fused: bool = False) -> None:
        super().__init__()
        self.p, self.fused = p, fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if not self.fused:
            return F.dropout(x, self.p, True)
        return x * keep_mask(x.shape, self.p, x.device, x.dtype) * drop_threshold(self.p)[1]


def fused_training(module: nn.Module) -> bool:
    """Whether ``module`` takes the fused path now (``fused`` and training; evaluation is always the reference)."""
    return bool(module.fused and module.training)


def masked_residual(x: torch.Tensor, y: torch.Tensor, p: float) -> torch.Tensor:
    """``x + dropout(y)`` on the fused path, for a ``y`` whose linear layer already carries the scale."""
    return x + y * keep_mask(y.shape, p, y.device, y.dtype) if p > 0 else x + y


def drop_scale(p: float) -> float:
    """The dropout scale the fused path folds into the next linear weight (1 when off)."""
    return drop_threshold(p)[1] if p > 0 else 1.0


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype matmuls on ``x``'s device produce now (the autocast dtype inside autocast)."""
    dev = x.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype


class _ReluKeep(torch.autograd.Function):
    """``relu(h) * keep`` as one autograd node: the backward is one ``threshold_backward`` on the saved output."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        y = torch.relu(h).mul_(keep)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.threshold_backward(grad, y, 0), None


class RMSNorm(nn.Module):
    """T5's layer norm: scale only, no mean subtraction, no bias (own copy: nn.RMSNorm needs torch >= 2.4)."""

    fused = False  # the fused training kernel (set by the layers of a ``kernels: fused`` model)

    def __init__(self, d: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fused_training(self) and x.dtype == self.weight.dtype:
            return _RMSNormTo.apply(x, self.weight, self.eps, compute_dtype(x))
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class _RMSNormTo(torch.autograd.Function):
    """RMSNorm (fp32 math) whose output is already in the matmul dtype: one autograd node and a handful of passes
    where the reference norm, its composite backward and autocast's casts take a dozen small ops each way."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, eps: float, dtype: torch.dtype) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):  # the statistics stay fp32 (vecdot autocasts)
            r = torch.rsqrt(torch.linalg.vecdot(x, x, dim=-1).unsqueeze(-1).div_(x.shape[-1]).add_(eps))  # (..., 1)
            ctx.save_for_backward(x, w, r)
            return torch.mul(x * r, w, out=torch.empty(x.shape, dtype=dtype, device=x.device))  # (..., d)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, None]:
        x, w, r = ctx.saved_tensors
        with torch.autocast(x.device.type, enabled=False):
            xhat = x * r  # (..., d)
            gw = g * w  # (..., d) fp32
            dot = torch.linalg.vecdot(gw, xhat, dim=-1).unsqueeze(-1).div_(x.shape[-1])  # (..., 1)
            gx = torch.addcmul(gw, xhat, dot, value=-1.0).mul_(r)
            gweight = (g * xhat).reshape(-1, x.shape[-1]).sum(0)  # (d,)
        return gx, gweight, None, None


def relative_buckets(rel: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int) -> torch.Tensor:
    """T5 bucketing of ``rel = key_pos - query_pos``: exact buckets for small distances, log-spaced beyond.

    Encoders see both directions (half the buckets each); a causal decoder only looks back.
    """
    out = torch.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        out = out + (rel > 0).long() * num_buckets
        dist = rel.abs()
    else:
        dist = (-rel).clamp(min=0)
    exact = max(num_buckets // 2, 1)
    far = exact + (torch.log(dist.clamp(min=1).float() / exact) / math.log(max(max_distance / exact, 1.0 + 1e-6))
                   * (num_buckets - exact)).long()
    far = far.clamp(max=num_buckets - 1)
    return out + torch.where(dist < exact, dist, far)


class Attention(nn.Module):
    """Multi-head attention with an inner width ``heads * head_dim`` that may differ from ``d`` (6 x 64 vs 128)."""

    fused = False  # the fused training kernel (set by the layers of a ``kernels: fused`` model)

    def __init__(self, d: int, heads: int, head_dim: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.q = nn.Linear(d, inner, bias=False)
        self.k = nn.Linear(d, inner, bias=False)
        self.v = nn.Linear(d, inner, bias=False)
        self.o = nn.Linear(inner, d, bias=False)
        self.dropout = dropout

    def split(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        return x.view(b, s, self.heads, self.head_dim).transpose(1, 2)  # (B, h, S, dk)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S, d) -> keys, values (B, h, S, dk)."""
        return self.split(self.k(x)), self.split(self.v(x))

    def attend(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
               out_scale: float = 1.0) -> torch.Tensor:
        """Queries from ``x`` (R, T, d) over keys/values (B, h, S, dk); ``bias`` (B|1, h|1, T, S) additive, -inf =
        masked. ``R == B``, or ``R = B * g`` with each run of ``g`` consecutive rows reading one key row (the beams
        of a user share its encoder memory: one attention over ``g * T`` queries, no copy of the keys per beam).
        ``out_scale`` (the fused path's folded dropout scale) multiplies the output projection."""
        r, t, d = x.shape
        if k.shape[0] != r:  # grouped queries; the bias is then per key row, (B, 1, 1, S)
            x = x.reshape(k.shape[0], (r // k.shape[0]) * t, d)
        if fused_training(self):
            y = self._attend_fused(self.split(F.linear(x, self.q.weight * self.head_dim ** -0.5)), k, v, bias,
                                   out_scale)
            return y.reshape(r, t, -1)
        q = self.split(self.q(x))  # (B, h, T, dk)
        if bias is not None and bias.dtype != q.dtype:  # autocast: the mask must match the query dtype
            bias = bias.to(q.dtype)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, h, T, dk)
        b, _, tq, _ = y.shape
        return self.o(y.transpose(1, 2).reshape(b, tq, self.heads * self.head_dim)).reshape(r, t, -1)

    def self_attend(self, x: torch.Tensor, bias: torch.Tensor | None, out_scale: float = 1.0) -> torch.Tensor:
        """Self-attention of ``x`` (B, S, d); the fused path projects q, k and v with one matmul."""
        if not fused_training(self):
            return self(x, x, bias)
        b, s, _ = x.shape
        w = torch.cat([self.q.weight * self.head_dim ** -0.5, self.k.weight, self.v.weight])  # (3 * inner, d)
        q, k, v = F.linear(x, w).view(b, s, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return self._attend_fused(q, k, v, bias, out_scale)  # q, k, v: (B, h, S, dk)

    def _attend_fused(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      bias: torch.Tensor | MaskedBias | None, out_scale: float) -> torch.Tensor:
        """(B, h, T, dk) pre-scaled queries -> (B, T, d): softmax, cheap-mask dropout, values, output projection.

        Every query row has a visible key (the inputs guarantee it), so SDPA's all-masked-row passes are skipped.
        Scores, softmax and dropout run in fp32 under autocast too: torch's CPU softmax (and its backward) on
        bf16 rows of a few dozen keys is several times slower than the cast plus the fp32 softmax.
        """
        s = (q @ k.transpose(-1, -2)).float()  # (B, h, T, S)
        padded = None
        if isinstance(bias, MaskedBias):
            bias, padded = bias
        if bias is not None:
            s = s.add_(bias.float())  # in place: neither the matmul's nor the cast's backward reads s
        if padded is not None:
            with torch.no_grad():  # softmax's backward gives these entries 0: nothing to differentiate
                s.masked_fill_(padded, float("-inf"))
        p = torch.softmax(s, -1)
        if self.dropout > 0:
            p = p * keep_mask(p.shape, self.dropout, p.device, p.dtype)
            out_scale *= drop_threshold(self.dropout)[1]
        y = p @ v  # (B, h, T, dk)
        b, _, t, _ = y.shape
        return F.linear(y.transpose(1, 2).reshape(b, t, self.heads * self.head_dim), self.o.weight * out_scale)

    def forward(self, x: torch.Tensor, kv: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        k, v = self.keys_values(kv)
        return self.attend(x, k, v, bias)


class FeedForward(nn.Module):
    fused = False

    def __init__(self, d: int, d_ff: int, dropout: float, activation: str) -> None:
        super().__init__()
        acts = {"relu": F.relu, "gelu": F.gelu}
        if activation not in acts:
            raise ConfigError(f"model.activation: '{activation}' is not one of {sorted(acts)}")
        self.act = acts[activation]
        self.wi = nn.Linear(d, d_ff, bias=False)
        self.wo = nn.Linear(d_ff, d, bias=False)
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor, out_scale: float = 1.0) -> torch.Tensor:
        if not fused_training(self):
            return self.wo(self.drop(self.act(self.wi(x))))
        p = self.drop.p
        h = self.wi(x)  # (B, S, d_ff)
        if p > 0 and self.act is F.relu:
            h = _ReluKeep.apply(h, keep_mask(h.shape, p, h.device, h.dtype))
        else:
            h = self.act(h) * keep_mask(h.shape, p, h.device, h.dtype) if p > 0 else self.act(h)
        return F.linear(h, self.wo.weight * (out_scale * drop_scale(p)))


def set_fused(module: nn.Module, fused: bool) -> None:
    """Mark the layers, attentions, norms, feed-forwards and dropouts in ``module`` for the fused training kernels."""
    for mod in module.modules():
        if isinstance(mod, (Attention, RMSNorm, FeedForward, Dropout, EncoderLayer, DecoderLayer)):
            mod.fused = fused


def stacked_keys_values(attns: list[Attention], x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Keys and values of several attentions over one input (B, S, d) by a single matmul (the fused path reads
    the encoder memory once for every decoder layer); each (B, h, S, dk)."""
    a = attns[0]
    b, s, _ = x.shape
    w = torch.cat([t for at in attns for t in (at.k.weight, at.v.weight)])  # (2 * n * inner, d)
    kv = F.linear(x, w).view(b, s, 2 * len(attns), a.heads, a.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    return [(kv[2 * i], kv[2 * i + 1]) for i in range(len(attns))]


def check_kernels(cfg: TIGER.Config) -> bool:
    """Whether ``cfg.kernels`` asks for the fused training kernels (a clear error for an unknown name)."""
    if cfg.kernels not in KERNELS:
        raise ConfigError(f"model.kernels: '{cfg.kernels}' is not one of {list(KERNELS)}")
    return cfg.kernels == "fused"


class EncoderLayer(nn.Module):
    def __init__(self, cfg: TIGER.Config) -> None:
        super().__init__()
        self.norm1 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg.d_model, cfg.num_heads, cfg.head_dim, cfg.dropout)
        self.norm2 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout, cfg.activation)
        self.drop = Dropout(cfg.dropout)
        set_fused(self, check_kernels(cfg))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        if fused_training(self):  # dropout scales ride on the output projections
            p = self.drop.p
            x = masked_residual(x, self.attn.self_attend(self.norm1(x), bias, drop_scale(p)), p)
            return masked_residual(x, self.ffn(self.norm2(x), drop_scale(p)), p)
        h = self.norm1(x)
        x = x + self.drop(self.attn(h, h, bias))
        return x + self.drop(self.ffn(self.norm2(x)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TIGER.Config) -> None:
        super().__init__()
        d = cfg.d_model
        self.norm1 = RMSNorm(d, cfg.norm_eps)
        self.self_attn = Attention(d, cfg.num_heads, cfg.head_dim, cfg.dropout)
        self.norm2 = RMSNorm(d, cfg.norm_eps)
        self.cross_attn = Attention(d, cfg.num_heads, cfg.head_dim, cfg.dropout)
        self.norm3 = RMSNorm(d, cfg.norm_eps)
        self.ffn = FeedForward(d, cfg.d_ff, cfg.dropout, cfg.activation)
        self.drop = Dropout(cfg.dropout)
        set_fused(self, check_kernels(cfg))

    def forward(self, x: torch.Tensor, self_kv: tuple[torch.Tensor, torch.Tensor] | None, self_bias: torch.Tensor,
                cross_kv: tuple[torch.Tensor, torch.Tensor], cross_bias: torch.Tensor,
                fuse: Fuse | None = None) -> torch.Tensor:
        """``self_kv`` must already contain this call's own positions (teacher forcing or the cache + new); the
        fused path takes None for self-attention over ``x`` itself (teacher forcing).

        ``fuse(query, z)`` (optional) may replace the cross-attention output ``z`` (B, T, d) given the normed
        query (B, T, d): GLASS mixes in a second cross-attention there; TIGER passes nothing. The cross keys may
        be per user while ``x`` holds several beams per user (see :meth:`Attention.attend`).
        """
        if fused_training(self):
            p = self.drop.p
            sc = drop_scale(p)
            h = self.norm1(x)
            y = self.self_attn.self_attend(h, self_bias, sc) if self_kv is None else \
                self.self_attn.attend(h, *self_kv, self_bias, sc)
            x = masked_residual(x, y, p)
            h = self.norm2(x)
            z = self.cross_attn.attend(h, *cross_kv, cross_bias, sc if fuse is None else 1.0)
            x = masked_residual(x, z, p) if fuse is None else x + self.drop(fuse(h, z))
            return masked_residual(x, self.ffn(self.norm3(x), sc), p)
        x = x + self.drop(self.self_attn.attend(self.norm1(x), *self_kv, self_bias))
        h = self.norm2(x)
        z = self.cross_attn.attend(h, *cross_kv, cross_bias)
        x = x + self.drop(z if fuse is None else fuse(h, z))
        return x + self.drop(self.ffn(self.norm3(x)))


__all__ = ["KERNELS", "Attention", "DecoderLayer", "Dropout", "EncoderLayer", "FeedForward", "Fuse", "MaskedBias",
           "RMSNorm",
           "drop_threshold", "keep_mask", "relative_buckets", "set_fused", "stacked_keys_values"]
