"""Run-level entry points used by the CLI: train a recipe, recommend from a reopened run
(:func:`genrec.runs.open.open_run`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from genrec.config import RunConfig
from genrec.data.loading import load_data
from genrec.data.schema import Dataset
from genrec.errors import ConfigError, GenrecError
from genrec.eval.retrieval import score_histories
from genrec.models.base import GENERATOR, MULTI_BEHAVIOR, RANKER, RETRIEVER
from genrec.models.registry import get_model_class
from genrec.nn.jagged import attention_budget
from genrec.runs.kinds import config_kind
from genrec.runs.layout import SID_DIR
from genrec.runs.open import LoadedRun, open_run  # noqa: F401 (re-exported: train.rerank, benchmarks)
from genrec.sid.embed import ItemEmbeddings
from genrec.train import distributed as dist_utils
from genrec.train.base import fit_and_test, resolve_device
from genrec.train.stages import run_stages
from genrec.train.trainer import train_retriever_run


def model_kind(cfg: RunConfig) -> str:
    """The model's primary kind (retriever | ranker | generator), read from the registry without building it; a
    multi-behavior generator counts as a generator (:func:`genrec.runs.kinds.config_kind` tells them apart)."""
    kind = config_kind(cfg)
    return GENERATOR if kind == MULTI_BEHAVIOR else kind


def train_run(cfg: RunConfig, out: str | Path, resume: bool = True, dataset: Dataset | None = None
              ) -> dict[str, Any]:
    """Train (or resume) a run of any model kind, then evaluate its best weights on the test split.

    Returns the results record (also written to ``RUN_DIR/results/test.json``). Under ``torchrun`` every
    process returns once the main one has written it (the process group is then closed).
    """
    with attention_budget(cfg.train.attention_budget_mb):  # stage 1, training and the test all under it
        res = _train_any(cfg, out, resume, dataset)
    dist_utils.finish()
    return res


def _train_any(cfg: RunConfig, out: str | Path, resume: bool, dataset: Dataset | None) -> dict[str, Any]:
    kind = config_kind(cfg)
    cls = get_model_class(cfg.model["name"])
    if not cls.trainable:
        raise ConfigError(f"model '{cfg.model['name']}' has nothing to train; evaluate it with "
                          "python -m genrec.train.gamer --config RECIPE --out RUN (or benchmarks/gamer.py)")
    if cfg.train.packed and kind not in (RETRIEVER, RANKER):
        raise ConfigError(f"train.packed: only retrievers and rankers pack their sequences, not the "
                          f"{model_kind(cfg)} '{cfg.model['name']}'; set train.packed=false")
    if cfg.stages and kind in (RETRIEVER, RANKER):  # HPGR stage 1, then the model initialised from it
        return run_stages(cfg, out, resume=resume, dataset=dataset)
    if cfg.stages:
        raise ConfigError(f"stages {cfg.stages}: the two-stage pipeline is for HPGR-style rankers, "
                          f"not the {model_kind(cfg)} '{cfg.model['name']}'")
    if kind in (GENERATOR, MULTI_BEHAVIOR) and cfg.train.lr_schedule != "constant":  # before a run folder opens
        raise ConfigError(f"train.lr_schedule={cfg.train.lr_schedule}: the {model_kind(cfg)} "
                          f"'{cfg.model['name']}' has its own learning-rate schedule; drop the key (the "
                          "generator: and multibehavior: sections set theirs)")
    if kind == RANKER:
        from genrec.train.ranker import train_ranker_run

        return train_ranker_run(cfg, out, resume=resume, dataset=dataset)
    dataset = dataset if dataset is not None else load_data(cfg.data)
    if kind == MULTI_BEHAVIOR:
        return train_gamer_run(cfg, out, resume, dataset)
    if kind == GENERATOR:
        return train_generator_run(cfg, out, resume, dataset)
    return train_retriever_run(cfg, out, resume, dataset)


def train_generator_run(cfg: RunConfig, out: str | Path, resume: bool, dataset: Dataset) -> dict[str, Any]:
    """Generator runs: SID table (given, or built once into ``RUN_DIR/sid``), training, constrained and free
    decoding on the test split."""
    from genrec.sid.build import sid_table_for
    from genrec.train.generator import GeneratorTrainer

    if cfg.sid.embeddings == "cooccurrence" and cfg.data.split not in ("leave_one_out", "loo") and not cfg.sid.table:
        raise ConfigError("sid.embeddings=cooccurrence reads the leave-one-out training events; with "
                          f"data.split={cfg.data.split} it would see evaluation events (use leave_one_out)")
    dist_utils.init_distributed(resolve_device(cfg.train.device))  # torchrun: one process builds the table
    with dist_utils.main_first():
        sids = sid_table_for(cfg.sid, dataset, Path(out) / SID_DIR, cf_loader=run_cf_embeddings)
    cfg.model = fit_model_to_sids(cfg.model, sids.length, max(sids.codebook_sizes))

    def extras(trainer: GeneratorTrainer, res: dict[str, Any]) -> dict[str, Any]:
        add: dict[str, Any] = {}
        if trainer.opts.test_other_decoding:
            free = trainer.evaluate("test", constrained=not trainer.opts.constrained)
            add["metrics_other_decoding"] = {"constrained": not trainer.opts.constrained, "metrics": free["metrics"]}
        add["sid_health"] = sids.health().as_dict()
        return add

    return fit_and_test(GeneratorTrainer(cfg, out, dataset, sids, resume=resume), out, extras)


def train_gamer_run(cfg: RunConfig, out: str | Path, resume: bool, dataset: Dataset) -> dict[str, Any]:
    """Multi-behavior generator runs (GAMER): session split, SIDs, training, per-behavior test evaluation."""
    from genrec.train.gamer import GamerTrainer

    return fit_and_test(GamerTrainer(cfg, out, dataset, None, cfg.multibehavior, resume=resume), out)


def fit_model_to_sids(model: dict[str, Any], sid_length: int, largest_level: int) -> dict[str, Any]:
    """Fill a generator's ``sid_length`` / ``codebook_size`` from its SID table unless the recipe sets them,
    and say clearly when a recipe's values cannot hold the table."""
    out = dict(model)
    out.setdefault("sid_length", sid_length)
    out.setdefault("codebook_size", largest_level)
    if out["sid_length"] != sid_length:
        raise ConfigError(f"model.sid_length={out['sid_length']} but the SID table has {sid_length} positions "
                          "(drop model.sid_length to take it from the table)")
    if out["codebook_size"] < largest_level:
        raise ConfigError(f"model.codebook_size={out['codebook_size']} is smaller than the SID table's largest level "
                          f"({largest_level} codes, often the collision level); raise it or drop the key")
    return out


def run_cf_embeddings(run_dir: str | Path) -> ItemEmbeddings:
    """Collaborative item embeddings of a retriever run folder (its best weights): the ``cf_loader`` every SID
    build of the train room passes to :mod:`genrec.sid.build` (``sid`` cannot open runs itself)."""
    from genrec.sid.embed import cf_embeddings

    run = open_run(run_dir)
    return cf_embeddings(run.model, run.dataset.num_items)


def recommend(run: LoadedRun, history_items: list[int], history_times: list[int] | None, k: int = 10,
              exclude_history: bool = True, query_time: int | None = None, user: int | None = None
              ) -> list[tuple[int, float]]:
    """Top-k (internal item id, score) for one history of internal ids, ranked like the evaluation code.

    Generators return their constrained beam (score = the SID's log-probability); ``user`` feeds their
    hashed user token (none for an anonymous history)."""
    if run.kind == RANKER:
        name = run.cfg.model["name"]
        raise GenrecError(f"recommend: '{name}' is a ranker: it scores candidates you give, it does not rank the "
                          f"catalogue; export the run (genrec export {run.run_dir} --out ART) and score candidates "
                          "with POST /score of `genrec serve ART`, or genrec.serve.load_artifact(ART).score(history, "
                          "candidates)")
    if run.kind == MULTI_BEHAVIOR:
        raise GenrecError(f"recommend: '{run.cfg.model['name']}' is a {run.kind.replace('_', '-')} model; "
                          "recommend needs a retriever or a next-item generator")
    if not history_items:
        raise GenrecError("empty history: give at least one item")
    if not 1 <= k <= run.dataset.num_items:
        raise GenrecError(f"k={k} is out of range (1..{run.dataset.num_items})")
    h = np.asarray(history_items, dtype=np.int64)
    if run.kind == GENERATOR:
        return _generate(run, h, k, exclude_history, user)
    t = np.asarray(history_times if history_times is not None else np.arange(1, len(h) + 1), dtype=np.int64)
    qt = int(query_time) if query_time is not None else int(t[-1])
    scores = score_histories(run.model, [h], [t], np.array([qt]), exclude_history)[0]
    k = min(k, int(torch.isfinite(scores).sum()))
    top = torch.topk(scores, k)
    return [(int(i), float(s)) for s, i in zip(top.values, top.indices)]


def _generate(run: LoadedRun, history: np.ndarray, k: int, exclude_history: bool, user: int | None
              ) -> list[tuple[int, float]]:
    """Beam-search a generator (the same path as a served artifact)."""
    from genrec.eval.generation import generate_top_k

    return generate_top_k(run.model, [history], k, exclude_history, run.cfg.generator.beam_size,
                          run.cfg.data.max_len, None if user is None else np.array([user]))[0]
