"""HSTU retriever (Zhai et al., "Actions Speak Louder than Words", ICML 2024, arXiv 2402.17152).

Follows the semantics of the authors' research code that produced the paper's public-data table
(see docs/models/hstu.md): per layer ``u, v, q, k = split(silu(LN(x) W))``; pointwise attention
``silu(q k^T + rab^{p,t}) / N`` under a causal mask; ``y = W_o(dropout(u * LN(A v))) + x``; inputs
``E[i] * sqrt(d) + P[j]``; L2-normalised outputs scored by cosine similarity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genrec.data.sequences import SeqBatch
from genrec.errors import CheckpointError, ConfigError
from genrec.models.base import Retriever, l2norm
from genrec.models.registry import register
from genrec.nn.attention import causal_valid_mask, hstu_pointwise_attention
from genrec.nn.position import RelativeBucketedTimeAndPositionBias, log_time_bucket, next_event_times


def copy_pretrained_table(emb: nn.Embedding, path: str, num_items: int, model: str) -> None:
    """Copy an HPGR stage-1 item table (``genrec.train.pretrain``) into ``emb`` (num_items+1, d), exactly.

    Why: "does pre-training alone help?" needs the retriever to start from the session-MIM table and
    nothing else, so there is no projection or rescaling; a width or catalogue mismatch is a config error.
    """
    from pathlib import Path

    from genrec.train.pretrain import META_FILE, load_pretrained  # stage-1 code imports genrec.models

    if not (Path(path) / META_FILE).exists():
        raise ConfigError(f"{model}: model.pretrained={path!r} is not a stage-1 artifact; run the pretrain "
                          "stage first (stages: [pretrain, finetune]) or set model.pretrained=''")
    try:
        table = load_pretrained(path).item_table  # (I'+1, D')
    except CheckpointError as exc:
        raise ConfigError(f"{model}: model.pretrained: {exc}") from None
    if table.shape[0] != num_items + 1:
        raise ConfigError(f"{model}: model.pretrained={path!r} holds {table.shape[0] - 1} items, the dataset has "
                          f"{num_items}; pre-train on the same dataset")
    if table.shape[1] != emb.weight.shape[1]:
        raise ConfigError(f"{model}: model.pretrained={path!r} has width {table.shape[1]}, model.d_model is "
                          f"{emb.weight.shape[1]}; set pretrain.sem.d_model to model.d_model")
    with torch.no_grad():
        emb.weight.copy_(table)
        emb.weight[0].zero_()  # padding row


class HSTULayer(nn.Module):
    """One Hierarchical Sequential Transduction Unit (research-code variant, no FFN)."""

    def __init__(self, d: int, heads: int, dqk: int, dv: int, dropout: float, max_len: int,
                 use_time_bias: bool = True, use_pos_bias: bool = True) -> None:
        super().__init__()
        self.h, self.dqk, self.dv = heads, dqk, dv
        self.uvqk = nn.Parameter(torch.empty(d, 2 * heads * dv + 2 * heads * dqk).normal_(0, 0.02))
        self.out = nn.Linear(heads * dv, d)
        nn.init.xavier_uniform_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.dropout = nn.Dropout(dropout)
        self.rab = RelativeBucketedTimeAndPositionBias(max_len) if (use_time_bias or use_pos_bias) else None
        self.use_time_bias, self.use_pos_bias = use_time_bias, use_pos_bias
        self.eps = 1e-6

    def forward(self, x: torch.Tensor, mask: torch.Tensor, timestamps: torch.Tensor,
                query_times: torch.Tensor, norm_len: int, attn_mask_override: torch.Tensor | None = None
                ) -> torch.Tensor:
        B, L, _ = x.shape
        h, dqk, dv = self.h, self.dqk, self.dv
        xn = F.layer_norm(x, (x.shape[-1],), eps=self.eps)
        uvqk = F.silu(xn @ self.uvqk)
        u, v, q, k = torch.split(uvqk, [h * dv, h * dv, h * dqk, h * dqk], dim=-1)
        q = q.view(B, L, h, dqk).transpose(1, 2)
        k = k.view(B, L, h, dqk).transpose(1, 2)
        v = v.view(B, L, h, dv).transpose(1, 2)
        bias = None
        if self.rab is not None:
            if self.use_time_bias and self.use_pos_bias:
                bias = self.rab(timestamps, query_times)  # (B, L, L)
            else:
                bias = self._partial_bias(timestamps, query_times)
        o = hstu_pointwise_attention(q, k, v, bias, mask if attn_mask_override is None else attn_mask_override,
                                     norm_len)  # (B, L, h*dv)
        o = F.layer_norm(o, (o.shape[-1],), eps=self.eps)
        return self.out(self.dropout(u * o)) + x

    def _partial_bias(self, timestamps: torch.Tensor, query_times: torch.Tensor) -> torch.Tensor:
        """Only the position or only the time part of rab (ablations)."""
        L = timestamps.shape[1]
        rab = self.rab
        assert rab is not None
        out = torch.zeros(timestamps.shape[0], L, L, device=timestamps.device, dtype=rab.pos_w.dtype)
        if self.use_pos_bias:
            ar = torch.arange(L, device=timestamps.device)
            out = out + rab.pos_w[(rab.max_len - 1) + ar[None, :] - ar[:, None]][None]
        if self.use_time_bias:
            delta = query_times[:, :, None] - timestamps[:, None, :]
            out = out + rab.ts_w[log_time_bucket(delta, rab.num_time_buckets)]
        return out


@register("hstu")
class HSTU(Retriever):
    """HSTU sequential retriever."""

    @dataclass
    class Config:
        d_model: int = 64
        num_layers: int = 2
        num_heads: int = 1
        dqk: int = 0  # per-head query/key width; 0 = d_model // num_heads
        dv: int = 0  # per-head value width; 0 = d_model // num_heads
        dropout: float = 0.2  # input dropout
        linear_dropout: float = 0.2  # dropout inside each layer, before W_o
        time_bias: bool = True
        position_bias: bool = True
        pretrained: str = ""  # HPGR stage-1 artifact whose item table initialises item_emb; "" = random init

    def __init__(self, cfg: Config, num_items: int, max_len: int) -> None:
        super().__init__(num_items, max_len)
        self.cfg = cfg
        d = cfg.d_model
        dqk = cfg.dqk or d // cfg.num_heads
        dv = cfg.dv or d // cfg.num_heads
        self.item_emb = nn.Embedding(num_items + 1, d, padding_idx=0)
        nn.init.trunc_normal_(self.item_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        if cfg.pretrained:
            copy_pretrained_table(self.item_emb, cfg.pretrained, num_items, "hstu")
        self.pos_emb = nn.Embedding(max_len, d)
        nn.init.xavier_normal_(self.pos_emb.weight)  # as the reference code's reset_params ends up
        self.input_dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(
            HSTULayer(d, cfg.num_heads, dqk, dv, cfg.linear_dropout, max_len, cfg.time_bias, cfg.position_bias)
            for _ in range(cfg.num_layers)
        )

    def embed(self, batch: SeqBatch) -> tuple[torch.Tensor, torch.Tensor]:
        L = batch.items.shape[1]
        valid = batch.mask  # (B, L)
        x = self.item_emb(batch.items) * math.sqrt(self.cfg.d_model)
        x = x + self.pos_emb.weight[:L][None]
        x = self.input_dropout(x) * valid[..., None]
        return x, valid

    def sequence_output(self, batch: SeqBatch, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x, valid = self.embed(batch)  # (B, L, D)
        L = x.shape[1]
        mask = causal_valid_mask(batch.lengths, L) if attn_mask is None else attn_mask  # (B, L, L)
        qt = next_event_times(batch.timestamps, batch.lengths, batch.query_time)
        for layer in self.layers:
            x = layer(x, mask, batch.timestamps, qt, self.max_len)
            x = x * valid[..., None]
        return l2norm(x)

    def item_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        return l2norm(self.item_emb(ids))
