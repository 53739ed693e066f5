"""Two-stage retrieval (spec §6.1, track R): a trained retriever (HSTU) retrieves its top-K, HPGR re-scores them.

PGSA needs a candidate, so on the full-catalogue retrieval track HPGR cannot rank 12k items itself; it
re-scores the retriever's top ``top_k`` (200) candidates with the ``hpgr`` ranker of ``genrec.models.hpgr``
(candidate-conditioned PGSA over the frozen stage-1 table, frozen SEM features), unchanged. The final list
is the re-scored top-K followed by the rest of the catalogue in the retriever's own order, so Recall/NDCG
stay full-catalogue metrics, comparable with the retriever's, on the very same queries.

Training data (leave-one-out; temporal splits work the same way). For every user and every training
position ``p`` in ``[1, train_end)`` one example: history = the events before ``p``, positive = item ``p``,
negatives = ``num_negatives`` items drawn uniformly (fresh every epoch) from the retriever's top-K for that
same prefix, the positive removed. Only training events are ever read, so neither the validation nor the
test item of a user (the last two under leave-one-out) reaches the re-ranker's training batches; the
validation queries (a seeded subset with ``valid_users``) drive early stopping on NDCG@10 of the final list.

Loss: softmax cross-entropy of the positive against its negatives (listwise), not the ranker's pointwise
BCE. Why: at test time the re-ranker only has to *order* one user's K candidates, which is exactly what the
group softmax trains (it bounds the positive's rank among the group); BCE at 1:n would spend capacity on
calibrating a probability that no metric here reads. Negatives come from the retriever's top-K rather than
the catalogue because those are the items the re-ranker must beat at test time (uniform negatives are
almost all trivially irrelevant and would teach it nothing the retriever does not already know).

``fuse=True`` (default) scores ``hpgr_logit + beta * retriever_score`` with ``beta`` a learned scalar
initialised to 1/temperature of the retriever's objective: at initialisation (hpgr_logit near 0) the list
is the retriever's order, and training moves an item only where HPGR's evidence outweighs the retriever's.
``fuse=False`` ranks by the HPGR logit alone. Caveat of the fused variant: the retriever was trained on the
same training prefixes, so its scores there are more confident than on test queries; early stopping on
validation queries (which it did not train on) is what guards against the re-ranker leaning on it too much.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from genrec.config import PRECISIONS, OptimConfig, RunConfig, TrainConfig, dataclass_from_dict, optim_knobs
from genrec.data.sequences import UserSequences, batch_order, make_history_batch
from genrec.data.splits import EvalSamples, split_from_config
from genrec.errors import ConfigError, DataError
from genrec.eval.candidates import Candidates, reranked_ranks, retrieve, training_prefixes
from genrec.eval.metrics import metrics_from_ranks
from genrec.eval.record import results_record
from genrec.eval.retrieval import history_of
from genrec.models.base import RANKER, RETRIEVER, Ranker
from genrec.models.registry import DEFAULT_RERANKER, build_model, get_model_class
from genrec.nn.optim import build_optimizer
from genrec.objectives import listwise_softmax
from genrec.train.base import TrainerBase, fit_and_test
from genrec.train.run import LoadedRun, open_run

TASK = "next-item retrieval, retriever top-K re-ranked"
CANDIDATES_FILE = "candidates.npz"


@dataclass
class RerankConfig(OptimConfig):
    """Re-ranking settings (the ranker's settings go in ``model``; its name defaults to
    :data:`~genrec.models.registry.DEFAULT_RERANKER`); ``lr``, ``betas``, ``weight_decay`` and ``grad_clip`` are the
    optimiser knobs every training section shares (:class:`~genrec.config.OptimConfig`)."""

    model: dict[str, Any] = field(default_factory=lambda: {"name": DEFAULT_RERANKER})
    top_k: int = 200  # retriever candidates re-scored per query
    num_negatives: int = 15  # hard negatives per training prefix, from the retriever's top_k
    fuse: bool = True  # logit = hpgr + beta * retriever score (beta learned); False = hpgr alone
    prefixes_per_epoch: int = 0  # training prefixes drawn (seeded) per epoch; 0 = all of them
    max_prefixes_per_user: int = 0  # keep only each user's most recent training prefixes; 0 = all
    valid_users: int = 0  # validation queries (seeded subset) for early stopping; 0 = all
    epochs: int = 20
    batch_size: int = 128  # prefixes per step
    grad_clip: float = 1.0
    patience: int = 3
    max_steps: int = 0  # stop after this many optimiser steps (0 = no limit); a later run resumes exactly
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints; 0 = at epoch ends only
    seed: int = 1
    device: str = "cpu"
    precision: str = "auto"  # auto | fp32 | bf16, as train.precision
    num_threads: int = 0
    progress: bool = True  # progress lines while an epoch runs, as train.progress
    progress_interval: float = 60.0  # seconds between plain progress lines (0 = per-epoch lines only)
    eval_batch_size: int = 32  # queries per scoring call (each with top_k candidates)
    retrieve_batch_size: int = 256

    def check(self) -> None:
        import genrec.models  # noqa: F401  (registers the built-in models)

        name = self.model.get("name", DEFAULT_RERANKER)
        cls = get_model_class(name)
        if RANKER not in cls.kinds or not cls.accepts_pretrained or cls.needs_features:
            raise ConfigError(f"rerank: model.name={name!r} is not a ranker that starts from a stage-1 artifact "
                              "without side features (accepts_pretrained, not needs_features)")
        if self.top_k < 2 or self.num_negatives < 1 or self.num_negatives >= self.top_k:
            raise ConfigError(f"rerank: need top_k >= 2 and 1 <= num_negatives < top_k "
                              f"(got {self.top_k}, {self.num_negatives})")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("rerank: epochs and batch_size must be >= 1")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"rerank.precision: '{self.precision}' is not one of {', '.join(PRECISIONS)}")
        if self.progress_interval < 0:
            raise ConfigError(f"rerank.progress_interval: must be >= 0 (got {self.progress_interval})")


def parse_rerank_config(raw: dict[str, Any], where: str = "rerank") -> RerankConfig:
    """A raw mapping -> RerankConfig; unknown keys are ConfigErrors like every other section."""
    raw = dict(raw or {})
    model = raw.pop("model", {})
    if not isinstance(model, dict):
        raise ConfigError(f"{where}.model: expected a mapping of the ranker's settings")
    cfg = dataclass_from_dict(RerankConfig, raw, where)
    cfg.model = {"name": DEFAULT_RERANKER, **model}
    cfg.check()
    return cfg


class Reranker(nn.Module):
    """The ranker plus, when fused, one learned weight on the retriever's score."""

    def __init__(self, ranker: Ranker, fuse: bool, beta0: float) -> None:
        super().__init__()
        self.ranker = ranker
        self.fuse = fuse
        self.beta = nn.Parameter(torch.tensor(float(beta0))) if fuse else None

    def forward(self, batch, candidates: torch.Tensor, retriever_scores: torch.Tensor,
                micro_batch: int | None = None) -> torch.Tensor:
        """(B, C) logits of candidates (B, C) after history ``batch``; retriever_scores (B, C)."""
        logits = self.ranker.score(batch, candidates, micro_batch=micro_batch)  # (B, C)
        if self.beta is not None:
            logits = logits + self.beta * retriever_scores.to(logits.dtype)
        return logits


def _history_batch(seqs: UserSequences, samples: EvalSamples, query_time: np.ndarray, max_len: int):
    hist, times = zip(*(history_of(seqs, int(r), int(e)) for r, e in zip(samples.rows, samples.hist_end)))
    return make_history_batch(list(hist), list(times), query_time, max_len)


class RerankTrainer(TrainerBase):
    """Train the re-ranker on training prefixes; the loop, checkpoints and best weights are TrainerBase's."""

    compat_keys = TrainerBase.compat_keys + ("retriever", "pretrained")
    log_steps = False  # one metrics.jsonl record per epoch

    def __init__(self, retriever: LoadedRun, retriever_dir: str | Path, pretrained: str | Path,
                 rcfg: RerankConfig, out: str | Path, resume: bool = True) -> None:
        rcfg.check()
        self.rcfg = rcfg
        self.retriever_run, self.retriever_dir, self.pretrained = retriever, str(retriever_dir), str(pretrained)
        base = retriever.cfg
        model = {**rcfg.model, "pretrained": str(pretrained)}
        train = TrainConfig(**optim_knobs(rcfg), epochs=rcfg.epochs, batch_size=rcfg.batch_size, seed=rcfg.seed,
                            device=rcfg.device, patience=rcfg.patience, early_stop_metric="ndcg@10",
                            num_threads=rcfg.num_threads, max_steps=rcfg.max_steps,
                            checkpoint_every=rcfg.checkpoint_every, tensorboard=False, precision=rcfg.precision,
                            progress=rcfg.progress, progress_interval=rcfg.progress_interval)
        cfg = RunConfig(model=model, data=base.data, train=train, eval=base.eval, source="rerank")
        super().__init__(cfg, out, retriever.dataset, default_metric="ndcg@10")
        self.seqs = retriever.seqs
        self.split = split_from_config(self.seqs, base.data)
        self.exclude_history = base.eval.exclude_history
        ranker = build_model(model, retriever.dataset.num_items, base.data.max_len)  # rcfg.check() vetted its class
        if ranker.needs_features:  # a config switch turned them on; a retriever's candidates have no impressions
            raise ConfigError("rerank: the ranker asks for impression features (model.cross_features); "
                              "the retrieval track has none, set it to false")
        beta0 = 1.0 / float(base.objective.temperature)  # the retriever's own logit scale
        self.model = Reranker(ranker, rcfg.fuse, beta0).to(self.device)
        self.optimizer = build_optimizer([p for p in self.model.parameters() if p.requires_grad], rcfg)
        self.open_run(resume)
        self.retriever_model = retriever.model.to(self.device).eval()
        self._cands: dict[str, Candidates] = {}

    def run_record(self) -> dict[str, Any]:
        return {**super().run_record(), "task": TASK, "retriever": self.retriever_dir,
                "pretrained": self.pretrained, "rerank": json.loads(json.dumps(asdict(self.rcfg), default=str))}

    # -- candidates -------------------------------------------------------------------------------
    def candidates(self, which: str) -> Candidates:
        """The retriever's top-K for ``train`` (training prefixes), ``valid`` or ``test`` queries (cached)."""
        if which not in self._cands:
            if which == "train":
                samples = training_prefixes(self.split, self.rcfg.max_prefixes_per_user)
            elif which == "valid":
                samples = self.split.valid
                n = self.rcfg.valid_users
                if n and n < len(samples):
                    pick = np.sort(np.random.default_rng(self.rcfg.seed).choice(len(samples), n, replace=False))
                    samples = EvalSamples(samples.rows[pick], samples.hist_end[pick])
            elif which == "test":
                samples = self.split.test
            else:
                raise ConfigError(f"rerank: unknown query set '{which}' (train, valid or test)")
            if len(samples) == 0:
                raise DataError(f"rerank: no {which} queries")
            self._cands[which] = retrieve(self.retriever_model, self.seqs, samples, self.rcfg.top_k,
                                          self.exclude_history, self.rcfg.retrieve_batch_size)
        return self._cands[which]

    # -- training ---------------------------------------------------------------------------------
    def train_batch(self, c: Candidates, idx: np.ndarray, keys: np.ndarray) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """History batch, candidates (B, 1+n) with the positive first, and their retriever scores (B, 1+n);
        ``keys`` (B, K) are uniform draws that pick the negatives."""
        n = self.rcfg.num_negatives
        top = c.top_items[idx]  # (B, K)
        bad = (top == c.targets[idx][:, None]) | ~np.isfinite(c.top_scores[idx])
        keys[bad] = np.inf  # the positive is never its own negative; excluded items are never drawn
        slots = np.argsort(keys, axis=1)[:, :n]  # (B, n) uniform without replacement
        ok = ~np.take_along_axis(bad, slots, 1)
        neg = np.where(ok, np.take_along_axis(top, slots, 1), 0)  # 0 = padding, masked out of the softmax
        neg_s = np.where(ok, np.take_along_axis(c.top_scores[idx], slots, 1), 0.0)
        cands = np.concatenate([c.targets[idx][:, None], neg], 1)
        rs = np.concatenate([c.target_score[idx][:, None], neg_s], 1)
        sub = EvalSamples(c.samples.rows[idx], c.samples.hist_end[idx])
        batch = _history_batch(self.seqs, sub, c.query_time[idx], self.cfg.data.max_len).to(self.device)
        return batch, torch.from_numpy(cands).to(self.device), torch.from_numpy(rs.astype(np.float32)).to(self.device)

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """Batches of positions into this epoch's pool of training prefixes (a seeded subset with
        ``prefixes_per_epoch``); the epoch's generator then draws every batch's negatives, in order."""
        rc, c = self.rcfg, self.candidates("train")
        self._rng = np.random.default_rng([rc.seed, epoch])
        self._pool = np.arange(len(c))
        if rc.prefixes_per_epoch and rc.prefixes_per_epoch < len(self._pool):
            self._pool = np.sort(self._rng.choice(len(self._pool), rc.prefixes_per_epoch, replace=False))
        lengths = np.minimum(c.samples.hist_end[self._pool], self.cfg.data.max_len)
        return batch_order(lengths, rc.batch_size, self._rng)

    def shard(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keys = self._rng.random((len(batch), self.candidates("train").top_items.shape[1]))  # whole batch: (B, K)
        return super().shard(self._pool[batch]), super().shard(keys)

    def step_loss(self, part: tuple[np.ndarray, np.ndarray]) -> tuple[torch.Tensor, int]:
        idx, keys = part
        batch, cands, rs = self.train_batch(self.candidates("train"), idx, keys)
        return listwise_softmax(self.model(batch, cands, rs), cands)  # (sum over the B rows, B)

    def validate(self) -> tuple[dict[str, Any], float]:
        m = self.metrics("valid")
        return {k: v for k, v in m.items() if k != "num_queries"}, m["ndcg@10"]

    def on_epoch_end(self, epoch: int) -> dict[str, Any]:
        return {"beta": None if self.model.beta is None else float(self.model.beta.detach())}

    # -- evaluation -------------------------------------------------------------------------------
    @torch.no_grad()
    def rescore(self, c: Candidates) -> np.ndarray:
        """(S, K) re-ranker logits of each query's retriever top-K."""
        was = self.model.training
        self.model.eval()
        out = np.zeros(c.top_items.shape, dtype=np.float32)
        bs = self.rcfg.eval_batch_size
        order = np.argsort(c.samples.hist_end, kind="stable")  # similar lengths together: less padding
        for a in range(0, len(order), bs):
            idx = order[a : a + bs]
            sub = EvalSamples(c.samples.rows[idx], c.samples.hist_end[idx])
            batch = _history_batch(self.seqs, sub, c.query_time[idx], self.cfg.data.max_len).to(self.device)
            cands = torch.from_numpy(c.top_items[idx]).to(self.device)
            finite = np.isfinite(c.top_scores[idx])  # (B, K) False = padding / excluded history item
            rs = torch.from_numpy(np.where(finite, c.top_scores[idx], 0.0).astype(np.float32)).to(self.device)
            s = self.model(batch, cands, rs).float().cpu().numpy()
            out[idx] = np.where(finite, s, -np.inf)  # never promote an item the retriever excluded
        self.model.train(was)
        return out

    def metrics(self, which: str) -> dict[str, Any]:
        """Metrics of the final (re-ranked) list on ``which`` queries."""
        c = self.candidates(which)
        return metrics_from_ranks(reranked_ranks(c, self.rescore(c)), self.cfg.eval.ks)

    def evaluate(self, which: str = "test") -> dict[str, Any]:
        """Both stages on the same queries: the retriever alone and the retriever + HPGR re-rank."""
        c = self.candidates(which)
        ks = self.cfg.eval.ks
        k = c.top_items.shape[1]
        protocol = {
            "task": TASK,
            "split": self.split.name,
            "evaluated_on": which,
            "candidates": f"full catalogue; the retriever's top-{k} re-scored, the rest in the retriever's order",
            "exclude_history": self.exclude_history,
            "history_window": self.cfg.data.max_len,
            "ks": ks,
            "early_stopping": f"ndcg@10 of the re-ranked list on {len(self.candidates('valid'))} validation "
                              "queries",
            "best_epoch": self.state.get("best_epoch"),
            "retriever": self.retriever_dir,
            "pretrained": self.pretrained,
        }
        return results_record("hpgr-rerank", self.dataset, protocol, self.metrics(which), None,
                              metrics_retriever=metrics_from_ranks(c.target_rank, ks),
                              target_in_top_k=float((c.target_rank < k).mean()),
                              rerank=json.loads(json.dumps(asdict(self.rcfg), default=str)),
                              beta=None if self.model.beta is None else float(self.model.beta.detach()))


def rerank_run(retriever_dir: str | Path, pretrained: str | Path, rcfg: RerankConfig, out: str | Path,
               resume: bool = True) -> dict[str, Any]:
    """Train (or resume) the HPGR re-ranker over a retriever run, then evaluate both stages on the test queries.

    Returns the results record (also written to ``OUT/results/test.json``).
    """
    if rcfg.num_threads > 0:
        torch.set_num_threads(rcfg.num_threads)
    run = open_run(retriever_dir, device=rcfg.device)
    if RETRIEVER not in getattr(run.model, "kinds", ()):
        raise ConfigError(f"rerank: {retriever_dir} is not a retriever run")
    return fit_and_test(RerankTrainer(run, retriever_dir, pretrained, rcfg, out, resume=resume), out)


__all__ = ["RerankConfig", "RerankTrainer", "Reranker", "parse_rerank_config", "rerank_run"]
