"""SASRec (Kang & McAuley, ICDM 2018) as configured in the HSTU repository's comparisons.

Inputs ``E[i] * sqrt(d) + P[j]``; blocks ``Q = LN(x); y = MHA(Q, x, x, causal); x = FFN(LN(Q + y))``
with a point-wise feed-forward network with its own residual; a final LayerNorm; L2-normalised
outputs and cosine scoring, so the loss and evaluation are exactly those used for HSTU (``similarity: dot``
scores raw dot products instead, as RecTools' SASRec does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genrec.data.sequences import SeqBatch
from genrec.errors import ConfigError
from genrec.models.base import Retriever, check_similarity, scoring_space
from genrec.models.pretrained import Pretrained, PretrainedSettings, copy_item_table, retriever_stage1
from genrec.models.registry import register
from genrec.nn.embedding import StepItemDropout, item_embedding
from genrec.nn.jagged import LengthGroup, Packing

INITS = ("default", "xavier", "rectools")
POSITIONS = ("first", "last")  # model.positions


class PointWiseFFN(nn.Module):
    def __init__(self, d: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.w1 = nn.Linear(d, d_ff)
        self.w2 = nn.Linear(d_ff, d)
        self.drop1 = nn.Dropout(dropout)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop2(self.w2(self.drop1(F.relu(self.w1(x)))))


class SASRecBlock(nn.Module):
    def __init__(self, d: int, heads: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        if d % heads:
            raise ValueError(f"d_model {d} is not divisible by num_heads {heads}")
        self.heads = heads
        self.ln_attn = nn.LayerNorm(d, eps=1e-8)
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.o = nn.Linear(d, d)
        self.attn_dropout = dropout
        self.ln_ffn = nn.LayerNorm(d, eps=1e-8)
        self.ffn = PointWiseFFN(d, d_ff, dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor, last: torch.Tensor | None = None,
                pad_log: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, L, D), attn_mask (B, L, L) -> (B, L, D); with ``last`` (B,) only that query row of each sequence
        is computed (keys and values still read every position): (B, 1, D), what an evaluation needs.
        ``pad_log`` (B,): log of the number of padding keys each query also reads (``model.pad_keys``)."""
        B, L, D = x.shape
        h = self.heads
        qin = self.ln_attn(x if last is None else x[torch.arange(B, device=x.device), last][:, None])  # (B, Lq, D)
        if last is not None:
            attn_mask = attn_mask[torch.arange(B, device=x.device), last][:, None]  # (B, 1, L)
        Lq = qin.shape[1]
        q = self.q(qin).view(B, Lq, h, D // h).transpose(1, 2)
        k = self.k(x).view(B, L, h, D // h).transpose(1, 2)
        v = self.v(x).view(B, L, h, D // h).transpose(1, 2)
        mask = attn_mask[:, None]  # (B, 1, Lq, L)
        if pad_log is not None:
            k, v, mask = self._with_padding_keys(k, v, mask, pad_log)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attn_dropout if self.training else 0.0
        )
        y = self.o(y.transpose(1, 2).reshape(B, Lq, D))
        return self.ffn(self.ln_ffn(qin + y))

    def _with_padding_keys(self, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                           pad_log: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One more key and value in front: what m zero padding inputs give (the projections' biases), read m
        times, which softmax counts as one key with log(m) added to its logit (-inf when m = 0)."""
        B, h, _, dh = k.shape
        k_pad = self.k.bias.view(1, h, 1, dh).expand(B, h, 1, dh)
        v_pad = self.v.bias.view(1, h, 1, dh).expand(B, h, 1, dh)
        bias = torch.zeros(mask.shape, dtype=k.dtype, device=k.device).masked_fill(~mask, float("-inf"))
        first = pad_log.to(k.dtype).view(B, 1, 1, 1).expand(B, 1, mask.shape[2], 1)  # (B, 1, Lq, 1)
        return torch.cat([k_pad, k], 2), torch.cat([v_pad, v], 2), torch.cat([first, bias], 3)

    def packed(self, x: torch.Tensor, pk: Packing) -> torch.Tensor:
        """The same block on packed tokens: x (T, D) -> (T, D), attention per length group of ``pk``."""
        T, D = x.shape
        h, p = self.heads, self.attn_dropout if self.training else 0.0
        qin = self.ln_attn(x)  # (T, D)
        q, k, v = (lin(t).view(T, h, D // h) for lin, t in ((self.q, qin), (self.k, x), (self.v, x)))

        def attend(i: int, g: LengthGroup, qkv: list[torch.Tensor]) -> torch.Tensor:
            qg, kg, vg = (t.transpose(1, 2) for t in qkv)  # (G, h, Lg, D/h); left-aligned, so causal is enough
            y = F.scaled_dot_product_attention(qg, kg, vg, dropout_p=p, is_causal=True)
            return y.transpose(1, 2).reshape(len(g.rows), g.width, D)  # (G, Lg, D)

        y = self.o(pk.per_group(attend, q, k, v))  # (T, D)
        return self.ffn(self.ln_ffn(qin + y))


@register("sasrec")
class SASRec(Retriever):
    """Self-attentive sequential retriever."""

    packs = True

    @dataclass
    class Config(PretrainedSettings):
        d_model: int = 64
        num_layers: int = 2
        num_heads: int = 1
        d_ff: int = 0  # 0 = d_model, as in the reference configs
        dropout: float = 0.2
        similarity: str = "cosine"  # cosine | dot (see genrec.models.base.scoring_space)
        positions: str = "first"  # first: position 0 is the oldest item | last: 0 is the newest (see _positions)
        item_init_std: float = 0.02  # the item table's initial std (torch's nn.Embedding default: 1.0)
        scale_inputs: bool = True  # item embeddings times sqrt(d_model) at the input (RecTools: false)
        # default | xavier: every weight matrix re-drawn Xavier-normal (RecTools' SASRec) | rectools: xavier, and the
        # attention as torch's nn.MultiheadAttention starts it (q, k, v drawn as one (3d, d) matrix, biases zero)
        init: str = "default"
        item_dropout: float = 0.0  # dropout on the item table, one mask per step for inputs and scored items
        pad_keys: bool = False  # attention also reads the window's padding (RecTools without a key padding mask)

    def __init__(self, cfg: Config, num_items: int, max_len: int) -> None:
        super().__init__(num_items, max_len)
        check_similarity(cfg.similarity, "sasrec")
        if cfg.positions not in POSITIONS:
            raise ConfigError(f"model.positions: '{cfg.positions}' is not one of {', '.join(POSITIONS)} (sasrec)")
        if not cfg.item_init_std > 0:
            raise ConfigError(f"model.item_init_std must be > 0, got {cfg.item_init_std!r} (sasrec)")
        if cfg.init not in INITS:
            raise ConfigError(f"model.init: '{cfg.init}' is not one of {', '.join(INITS)} (sasrec)")
        self.cfg = cfg
        d = cfg.d_model
        self.item_emb = item_embedding(num_items, d, cfg.item_init_std)  # (I+1, D), row 0 = padding
        self.input_scale = math.sqrt(d) if cfg.scale_inputs else 1.0
        if cfg.pretrained:  # checks model.stage1; the table is copied by init_from_pretrained
            retriever_stage1(cfg, num_items, d, "sasrec")
        self.pos_emb = nn.Embedding(max_len, d)
        nn.init.trunc_normal_(self.pos_emb.weight, std=math.sqrt(1.0 / d))
        self.input_dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            SASRecBlock(d, cfg.num_heads, cfg.d_ff or d, cfg.dropout) for _ in range(cfg.num_layers)
        )
        self.final_ln = nn.LayerNorm(d, eps=1e-8)
        self.item_drop = StepItemDropout(cfg.item_dropout, "sasrec")
        if cfg.init in ("xavier", "rectools"):
            self._xavier_init(fused_attention=cfg.init == "rectools")

    def _xavier_init(self, fused_attention: bool = False) -> None:
        """RecTools' SASRec redraws every parameter of two or more dimensions from Xavier normal when training
        starts (item table std sqrt(2 / (I + 1 + d)), about 0.013 on Beauty; positions sqrt(2 / (L + d))), which
        with unscaled inputs lets positions, not items, dominate the first steps; the padding row stays zero.
        ``fused_attention``: its attention is torch's nn.MultiheadAttention, whose q, k, v are one (3d, d) matrix
        (so Xavier draws them sqrt(2) smaller than three (d, d) ones) and whose biases start at zero: under
        ``pad_keys`` the padding's keys and values are those biases, so they start at zero too."""
        with torch.no_grad():
            for p in self.parameters():
                if p.dim() > 1:
                    nn.init.xavier_normal_(p)
            if fused_attention:
                d = self.cfg.d_model
                for blk in self.blocks:
                    qkv = nn.init.xavier_normal_(torch.empty(3 * d, d))  # (3D, D), as in_proj_weight
                    for lin, part in zip((blk.q, blk.k, blk.v), qkv.split(d)):
                        lin.weight.copy_(part)
                    for lin in (blk.q, blk.k, blk.v, blk.o):
                        lin.bias.zero_()
            self.item_emb.weight[0].zero_()

    def init_from_pretrained(self, pre: Pretrained) -> None:
        """Start from the stage-1 item table (called by the trainer once, when a run starts fresh)."""
        copy_item_table(self.item_emb, pre, self.cfg, "sasrec")

    def _positions(self, lengths: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Position embeddings of items at ``pos`` (counted from the oldest) in histories of ``lengths``
        (broadcast). ``last`` counts from the newest item, as the original SASRec's left padding and RecTools'
        inverse encoding do: the item just before the prediction always has position 0, so recency is one
        embedding however long the history (Beauty's histories hold 9 items on average in a window of 50)."""
        if self.cfg.positions == "first":
            return self.pos_emb(pos)
        return self.pos_emb((lengths - 1 - pos).clamp(min=0))

    def _pad_log(self, batch: SeqBatch) -> torch.Tensor | None:
        """``model.pad_keys``: RecTools left-pads every sequence to the window (``data.max_len``) and, without a
        key padding mask, each query also attends to those max_len - n zero inputs; (B,) log of their count."""
        if not self.cfg.pad_keys:
            return None
        return torch.log((self.max_len - batch.lengths).clamp(min=0).float())  # log 0 = -inf: no padding key

    def _inputs(self, batch: SeqBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embedded inputs (B, L, D), the real positions (B, L) and the attention mask (B, L, L)."""
        B, L = batch.items.shape
        valid = batch.mask  # (B, L)
        if self.cfg.positions == "first":  # the recorded runs' arithmetic, bit for bit
            pos = self.pos_emb.weight[:L][None]  # (1, L, D)
        else:
            pos = self._positions(batch.lengths[:, None], torch.arange(L, device=valid.device)[None])  # (B, L, D)
        x = self.item_drop.inputs(self.item_emb, batch.items) * self.input_scale + pos
        x = self.input_dropout(x) * valid[..., None]
        ar = torch.arange(L, device=x.device)
        # causal; padded query rows read key 0 only so no row is fully masked (those rows are discarded)
        attn_mask = (ar[None, :] <= ar[:, None])[None] & (valid[:, None, :] | (ar == 0)[None, None, :])
        return x, valid, attn_mask

    def sequence_output(self, batch: SeqBatch) -> torch.Tensor:
        x, valid, attn_mask = self._inputs(batch)
        pad_log = self._pad_log(batch)
        for blk in self.blocks:
            x = blk(x, attn_mask, pad_log=pad_log) * valid[..., None]
        return scoring_space(self.final_ln(x), self.cfg.similarity)

    def packed_output(self, batch: SeqBatch) -> torch.Tensor:
        """(T, D) states at the real positions; no padding token enters a token-wise layer."""
        pk = Packing.of(batch.lengths, batch.items.shape[1])
        if self.cfg.pad_keys:  # the padding keys need the padded layout
            return pk.pack(self.sequence_output(batch))
        pos = self._positions(pk.lengths[pk.index // pk.width], pk.positions)  # (T, D)
        x = self.item_drop.inputs(self.item_emb, pk.pack(batch.items)) * self.input_scale + pos
        x = self.input_dropout(x)  # (T, D)
        for blk in self.blocks:
            x = blk.packed(x, pk)
        return scoring_space(self.final_ln(x), self.cfg.similarity)

    def encode(self, batch: SeqBatch) -> torch.Tensor:
        """(B, D) state after the last real position; the last block computes only that row (the other rows of
        the last block feed nothing), which saves a quarter of a 4-block evaluation."""
        x, valid, attn_mask = self._inputs(batch)
        pad_log = self._pad_log(batch)
        for blk in self.blocks[:-1]:
            x = blk(x, attn_mask, pad_log=pad_log) * valid[..., None]
        last = (batch.lengths - 1).clamp(min=0)  # (B,)
        state = self.final_ln(self.blocks[-1](x, attn_mask, last, pad_log)[:, 0])  # (B, D)
        return scoring_space(state, self.cfg.similarity)

    def item_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        return scoring_space(self.item_drop.scored(self.item_emb, ids), self.cfg.similarity)
