"""The worked example: a new model is one class on a kind's base plus ``@register``; nothing else changes.

One tiny model of each kind is defined and registered here, then trained and tested by ``train_run`` exactly as
a built-in model is: the retriever by next-item objectives, the ranker by CTR BCE on impressions, the generator
by next-SID cross-entropy over a SID table. The trainers only read the kind's contract
(:mod:`genrec.models.base`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from genrec.config import config_from_dict
from genrec.models.base import Generator, GeneratorBatch, Ranker, Retriever, SIDLogits, l2norm
from genrec.models.registry import register
from genrec.sid.beam import BeamResult, beam_search
from genrec.sid.trie import SIDTrie
from genrec.train.run import train_run
from tests.conftest import make_toy
from tests.hpgr.conftest import make_ctr_toy
from tests.tiger.conftest import toy_sequences, toy_table

TRAIN = {"epochs": 2, "batch_size": 32, "lr": 0.01, "device": "cpu", "progress": False, "tensorboard": False}


@register("example_retriever")
class ExampleRetriever(Retriever):
    """The user state after position t is a projection of item t's embedding."""

    @dataclass
    class Config:
        d_model: int = 16

    def __init__(self, cfg: Config, num_items: int, max_len: int) -> None:
        super().__init__(num_items, max_len)
        self.item_emb = nn.Embedding(num_items + 1, cfg.d_model, padding_idx=0)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def sequence_output(self, batch):
        return l2norm(self.proj(self.item_emb(batch.items)))  # (B, L, D)

    def item_vectors(self, ids):
        return l2norm(self.item_emb(ids))  # (..., D)


@register("example_ranker")
class ExampleRanker(Ranker):
    """Logit = <mean history embedding, candidate embedding> + a candidate bias."""

    @dataclass
    class Config:
        d_model: int = 16

    def __init__(self, cfg: Config, num_items: int, max_len: int) -> None:
        super().__init__()
        self.item_emb = nn.Embedding(num_items + 1, cfg.d_model, padding_idx=0)
        self.bias = nn.Embedding(num_items + 1, 1)

    def score(self, batch, candidates):
        user = self.item_emb(batch.items).sum(1) / batch.lengths.clamp(min=1)[:, None]  # (B, D)
        return (self.item_emb(candidates) @ user[:, :, None]).squeeze(-1) + self.bias(candidates).squeeze(-1)


@register("example_generator")
class ExampleGenerator(Generator):
    """Decodes the next item's SID code by code from the last item's embedding plus the codes chosen so far."""

    @dataclass
    class Config:
        d_model: int = 16
        sid_length: int = 0  # both filled from the SID table by the generator run
        codebook_size: int = 0

    def __init__(self, cfg: Config, num_items: int, max_len: int) -> None:
        super().__init__()
        self.cfg, self.num_items, self.max_len = cfg, num_items, max_len
        m, c = cfg.sid_length, cfg.codebook_size
        self.item_emb = nn.Embedding(num_items + 1, cfg.d_model, padding_idx=0)
        self.code_emb = nn.Embedding(m * c, cfg.d_model)  # SID position p, code x -> row p * c + x
        self.heads = nn.ModuleList(nn.Linear(cfg.d_model, c) for _ in range(m))
        self.register_buffer("item_sids", torch.zeros(num_items + 1, m, dtype=torch.long))

    def set_sid_table(self, table) -> None:
        self.item_sids[torch.from_numpy(table.item_ids)] = torch.from_numpy(table.codes)
        self.trie = SIDTrie.from_codes(table.codes, table.item_ids, table.codebook_sizes)

    def state(self, items: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """(B, L) histories and (B, t) codes so far -> (B, D) decoder state."""
        last = items.gather(1, ((items > 0).sum(1, keepdim=True) - 1).clamp(min=0))[:, 0]  # (B,)
        pos = torch.arange(codes.shape[1], device=codes.device) * self.cfg.codebook_size
        return self.item_emb(last) + self.code_emb(pos + codes).sum(1)

    def training_inputs(self, batch: GeneratorBatch):
        return batch.items, self.item_sids[batch.targets]  # (B, L), (B, m)

    def sid_logits(self, inputs) -> SIDLogits:
        items, target = inputs
        logits = [head(self.state(items, target[:, :t])) for t, head in enumerate(self.heads)]
        return SIDLogits(torch.stack(logits, 1), target, None)  # (B, m, C), (B, m)

    @torch.no_grad()
    def generate(self, histories, users=None, beam_size=20, k=None, constrained=True) -> BeamResult:
        items = torch.as_tensor(histories).long()

        def step(codes, rows):  # beam search reorders ``rows`` (the user of each beam) with the beams
            return self.heads[codes.shape[1]](self.state(items[rows], codes)), rows

        res = beam_search(step, self.trie, len(items), beam_size, torch.arange(len(items)), constrained)
        k = k or beam_size
        return BeamResult(res.sids[:, :k], res.scores[:, :k], res.items[:, :k], res.valid[:, :k])


def _finite(metrics: dict) -> bool:
    return all(math.isfinite(v) for v in metrics.values() if isinstance(v, float))


def test_a_registered_retriever_trains_through_train_run(tmp_path):
    cfg = config_from_dict({"model": {"name": "example_retriever"}, "data": {"max_len": 20}, "train": TRAIN})
    res = train_run(cfg, tmp_path / "run", dataset=make_toy())
    assert res["train"]["finished"] and res["model"] == "example_retriever" and _finite(res["metrics"])
    assert res["metrics"]["hr@10"] > 10 / 60  # the toy's next item follows the last one: better than chance


def test_a_registered_ranker_trains_through_train_run(tmp_path):
    cfg = config_from_dict({"model": {"name": "example_ranker"}, "data": {"max_len": 16},
                            "ranking": {"labels": "ratings"}, "train": TRAIN})
    res = train_run(cfg, tmp_path / "run", dataset=make_ctr_toy())
    assert res["train"]["finished"] and _finite(res["metrics"])
    assert res["metrics"]["auc"] > 0.6  # every third item is liked: the bias alone learns it


def test_a_registered_generator_trains_through_train_run(tmp_path):
    toy_table().save(tmp_path / "sids.json")
    cfg = config_from_dict({"model": {"name": "example_generator"}, "data": {"max_len": 20},
                            "sid": {"table": str(tmp_path / "sids.json")}, "eval": {"ks": [1, 5]},
                            "generator": {"beam_size": 5, "warmup_steps": 100}, "train": TRAIN})
    res = train_run(cfg, tmp_path / "run", dataset=toy_sequences())
    assert res["train"]["finished"] and res["config"]["model"]["sid_length"] == 2
    assert res["metrics"]["invalid_rate"] == 0.0 and np.isfinite(res["metrics"]["ndcg@5"])
    assert res["metrics"]["hr@5"] > 0.5  # the next item is a function of the last one
