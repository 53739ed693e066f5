"""Session-based masked item modelling (MIM), HPGR's stage-1 objective (spec §5.3(b), §5.4 #4-#5).

Two masking rules act on each padded sequence:

- item rule: every real item is selected with probability ``mask_ratio`` (0.2) and then replaced
  BERT-style: 80% by [MASK], 10% by a uniform random item, 10% left unchanged;
- session rule: with probability ``session_mask_prob`` (0.1) a row that has at least two sessions
  gets one uniformly chosen session masked *entirely* ([MASK] on every item), so the only way to
  reconstruct it is through the inter-session path (a row with one session would have nothing left).

The loss is computed on the selected slots only, with tied embeddings and cosine logits
``<normalize(u_j), normalize(E[v])> / tau`` (tau = 0.05, as ``objectives.next_item``): a full softmax
over the catalogue when it has at most ``full_softmax_max_items`` items, else a sampled softmax over
``num_negatives`` uniform negatives shared by the batch, with a negative equal to the positive pushed
out of the softmax. All randomness comes from a caller-supplied ``torch.Generator`` (CPU), so a
masking is reproducible bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from genrec.errors import ConfigError
from genrec.models.hpgr_sem import MASK_ID
from genrec.objectives.next_item import MASKED_LOGIT


@dataclass
class MIMConfig:
    mask_ratio: float = 0.2  # item rule: fraction of real items selected
    mask_token_frac: float = 0.8  # of the selected: -> [MASK]
    random_token_frac: float = 0.1  # of the selected: -> random item (the rest stay unchanged)
    session_mask_prob: float = 0.1  # per row: mask one whole session
    temperature: float = 0.05
    num_negatives: int = 512
    full_softmax_max_items: int = 20_000

    def check(self) -> None:
        if not 0.0 <= self.mask_ratio <= 1.0 or not 0.0 <= self.session_mask_prob <= 1.0:
            raise ConfigError("mim: mask_ratio and session_mask_prob must be in [0, 1]")
        if self.mask_token_frac < 0 or self.random_token_frac < 0 or self.mask_token_frac + self.random_token_frac > 1:
            raise ConfigError("mim: mask_token_frac + random_token_frac must be in [0, 1]")
        if self.temperature <= 0 or self.num_negatives < 1:
            raise ConfigError("mim: temperature must be > 0 and num_negatives >= 1")


@dataclass
class MaskedItems:
    """One masking of a padded batch."""

    items: torch.Tensor  # (B, N) model inputs: MASK_ID at [MASK] slots, a random id or the original elsewhere
    targets: torch.Tensor  # (B, N) original id at loss slots, 0 elsewhere
    positions: torch.Tensor  # (B, N) bool, the loss slots (item rule or session rule)
    masked_session: torch.Tensor  # (B,) session id (value of session_ids) masked whole, -1 if none
    session_positions: torch.Tensor  # (B, N) bool, slots masked by the session rule


def mask_items(
    items: torch.Tensor,
    lengths: torch.Tensor,
    session_ids: torch.Tensor | None,
    num_items: int,
    cfg: MIMConfig,
    generator: torch.Generator,
) -> MaskedItems:
    """Apply both masking rules to ``items`` (B, N); padding (slots >= lengths, or id 0) is never touched."""
    B, N = items.shape
    dev = items.device

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=generator).to(dev)

    real = (torch.arange(N, device=dev)[None, :] < lengths[:, None]) & (items > 0)  # (B, N)
    picked = real & (rand(B, N) < cfg.mask_ratio)
    u = rand(B, N)
    random_ids = torch.randint(1, num_items + 1, (B, N), generator=generator).to(dev)
    whole = torch.zeros_like(real)
    masked_session = torch.full((B,), -1, dtype=torch.int64, device=dev)
    if session_ids is not None and cfg.session_mask_prob > 0:
        start = torch.zeros_like(real)
        start[:, 0] = True
        start[:, 1:] = session_ids[:, 1:] != session_ids[:, :-1]
        start &= real
        local = torch.cumsum(start.long(), 1) - 1  # (B, N) 0-based session index in the row
        count = start.sum(1)  # (B,)
        chosen = (rand(B) * count).floor().long().clamp(max=(count - 1).clamp(min=0))  # (B,)
        row_on = (rand(B) < cfg.session_mask_prob) & (count >= 2)
        whole = real & row_on[:, None] & (local == chosen[:, None])
        first = torch.argmax(whole.long(), 1)  # (B,) a slot of the chosen session
        masked_session = torch.where(row_on, session_ids.gather(1, first[:, None])[:, 0].long(), masked_session)
    to_mask = whole | (picked & (u < cfg.mask_token_frac))
    to_rand = picked & ~whole & (u >= cfg.mask_token_frac) & (u < cfg.mask_token_frac + cfg.random_token_frac)
    out = torch.where(to_rand, random_ids, items)
    out = torch.where(to_mask, torch.full_like(items, MASK_ID), out)
    positions = picked | whole
    targets = torch.where(positions, items, torch.zeros_like(items))
    return MaskedItems(out, targets, positions, masked_session, whole)


class MIMLoss:
    """Tied-embedding cosine softmax on the masked slots; returns the *sum* over slots (trainer divides)."""

    def __init__(self, cfg: MIMConfig, num_items: int) -> None:
        cfg.check()
        self.cfg, self.num_items = cfg, num_items
        self.full = num_items <= cfg.full_softmax_max_items

    def __call__(self, states: torch.Tensor, targets: torch.Tensor, item_table: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """states: (T, D) u_j at the masked slots; targets: (T,) ids in 1..num_items; item_table: (I+1, D)."""
        tau = self.cfg.temperature
        s = F.normalize(states, dim=-1)
        if self.full:
            e = F.normalize(item_table[1:], dim=-1)  # (I, D), row 0 (padding) excluded
            return F.cross_entropy((s @ e.T).float() / tau, targets - 1, reduction="sum")
        pos = (s * F.normalize(item_table[targets], dim=-1)).sum(-1, keepdim=True) / tau  # (T, 1)
        neg = torch.randint(1, self.num_items + 1, (self.cfg.num_negatives,), generator=generator).to(s.device)
        neg_logit = s @ F.normalize(item_table[neg], dim=-1).T / tau  # (T, R)
        neg_logit = neg_logit.masked_fill(targets[:, None] == neg[None, :], MASKED_LOGIT)
        logits = torch.cat([pos, neg_logit], 1).float()  # (T, 1+R)
        return -F.log_softmax(logits, 1)[:, 0].sum()
