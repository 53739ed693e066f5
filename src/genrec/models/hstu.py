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
from torch import nn

from genrec.data.sequences import SeqBatch
from genrec.models.base import Retriever, check_similarity, scoring_space
from genrec.models.pretrained import (  # noqa: F401 (copy_pretrained_table: the frozen test oracle imports it here)
    Pretrained,
    PretrainedSettings,
    copy_item_table,
    copy_pretrained_table,
    retriever_stage1,
)
from genrec.models.registry import register
from genrec.nn.attention import causal_valid_mask
from genrec.nn.embedding import StepItemDropout, item_embedding
from genrec.nn.hstu_block import DenseAttention, HSTUBlock, head_widths
from genrec.nn.jagged import JaggedAttention, Packing
from genrec.nn.position import next_event_times


@register("hstu")
class HSTU(Retriever):
    """HSTU sequential retriever."""

    packs = True

    @dataclass
    class Config(PretrainedSettings):
        d_model: int = 64
        num_layers: int = 2
        num_heads: int = 1
        dqk: int = 0  # per-head query/key width; 0 = d_model // num_heads
        dv: int = 0  # per-head value width; 0 = d_model // num_heads
        dropout: float = 0.2  # input dropout
        linear_dropout: float = 0.2  # dropout inside each layer, before W_o
        time_bias: bool = True
        position_bias: bool = True
        similarity: str = "cosine"  # cosine | dot (see genrec.models.base.scoring_space)
        item_dropout: float = 0.0  # dropout on the item table, one mask per step for inputs and scored items

    def __init__(self, cfg: Config, num_items: int, max_len: int) -> None:
        super().__init__(num_items, max_len)
        check_similarity(cfg.similarity, "hstu")
        self.cfg = cfg
        d = cfg.d_model
        dqk, dv = head_widths(d, cfg.num_heads, cfg.dqk, cfg.dv)
        self.item_emb = item_embedding(num_items, d)  # (I+1, D), row 0 = padding
        self.item_drop = StepItemDropout(cfg.item_dropout, "hstu")
        if cfg.pretrained:  # checks model.stage1; the table is copied by init_from_pretrained
            retriever_stage1(cfg, num_items, d, "hstu")
        self.pos_emb = nn.Embedding(max_len, d)
        nn.init.xavier_normal_(self.pos_emb.weight)  # as the reference code's reset_params ends up
        self.input_dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(  # the block's defaults are the research variant (no FFN, plain norms)
            HSTUBlock(d, cfg.num_heads, dqk, dv, dropout=cfg.linear_dropout, max_len=max_len,
                      time_bias=cfg.time_bias, position_bias=cfg.position_bias)
            for _ in range(cfg.num_layers)
        )

    def init_from_pretrained(self, pre: Pretrained) -> None:
        """Start from the stage-1 item table (called by the trainer once, when a run starts fresh)."""
        copy_item_table(self.item_emb, pre, self.cfg, "hstu")

    def embed(self, batch: SeqBatch) -> tuple[torch.Tensor, torch.Tensor]:
        L = batch.items.shape[1]
        valid = batch.mask  # (B, L)
        x = self.item_drop.inputs(self.item_emb, batch.items) * math.sqrt(self.cfg.d_model)
        x = x + self.pos_emb.weight[:L][None]
        x = self.input_dropout(x) * valid[..., None]
        return x, valid

    def sequence_output(self, batch: SeqBatch, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x, valid = self.embed(batch)  # (B, L, D)
        L = x.shape[1]
        mask = causal_valid_mask(batch.lengths, L) if attn_mask is None else attn_mask  # (B, L, L)
        attention = DenseAttention(mask, self.max_len)
        qt = next_event_times(batch.timestamps, batch.lengths, batch.query_time)
        for layer in self.layers:
            x = layer(x, attention, timestamps=batch.timestamps, query_times=qt)
            x = x * valid[..., None]
        return scoring_space(x, self.cfg.similarity)

    def packed_output(self, batch: SeqBatch) -> torch.Tensor:
        """(T, D) states at the real positions: the layers run on packed tokens, attention per length group."""
        pk = Packing.of(batch.lengths, batch.items.shape[1])
        x = self.item_drop.inputs(self.item_emb, pk.pack(batch.items)) * math.sqrt(self.cfg.d_model)
        x = self.input_dropout(x + self.pos_emb.weight[pk.positions])  # (T, D)
        qt = next_event_times(batch.timestamps, batch.lengths, batch.query_time)  # (B, L)
        attention = JaggedAttention(pk, self.max_len, (batch.timestamps, qt))
        for layer in self.layers:
            x = layer(x, attention)
        return scoring_space(x, self.cfg.similarity)

    def item_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        return scoring_space(self.item_drop.scored(self.item_emb, ids), self.cfg.similarity)
