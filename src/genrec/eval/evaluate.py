"""``genrec evaluate``: the one evaluation entry for a run folder of any kind.

:func:`evaluate_run` opens the run (:func:`genrec.runs.open.open_run`) and hands it to its kind's evaluation,
the same function the trainer calls for the results record it writes at the end of training
(``results/test.json``), so a re-evaluation reproduces that record's metrics. The kind comes from the model
class (its kinds and capabilities), never from its name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from genrec.config import early_stop_metric
from genrec.errors import ConfigError
from genrec.eval.generation import generation_ks, generation_results
from genrec.eval.metrics import CTR, GENERATION, RETRIEVAL, default_stop_metric
from genrec.eval.multibehavior import behavior_results
from genrec.eval.ranking import ranker_results
from genrec.eval.record import check_split
from genrec.eval.retrieval import retrieval_results
from genrec.models.base import GENERATOR, RANKER, RETRIEVER
from genrec.nn.jagged import attention_budget
from genrec.nn.precision import torch_threads
from genrec.runs.checkpoint import summary_of
from genrec.runs.kinds import MULTI_BEHAVIOR
from genrec.runs.open import LoadedRun, open_run

Evaluator = Callable[[LoadedRun, str, bool | None, bool | None], dict[str, Any]]  # (run, which, excl, constrained)


def evaluate_run(run: str | Path | LoadedRun, which: str = "test", *, exclude_history: bool | None = None,
                 constrained: bool | None = None, rescore_history: int | None = None,
                 repeat_breakdown: bool = False, device: str = "cpu") -> dict[str, Any]:
    """Results record of a run folder's best weights on ``which`` (test | valid), with its training summary
    (``train``, from the latest checkpoint).

    ``exclude_history`` (retrievers), ``constrained`` (generators) and ``rescore_history`` (multi-behavior
    evaluation, ``generator.rescore_history``) override the recipe's setting when given; other kinds ignore them.
    ``repeat_breakdown`` (multi-behavior runs only) adds each behavior's metrics on the targets the user met before
    the session and on the new ones.
    ``run`` may be an already opened run (its model is used as it is).
    """
    check_split(which)
    loaded = run if isinstance(run, LoadedRun) else open_run(run, device=device)
    if rescore_history is not None:
        if rescore_history < 0:
            raise ConfigError(f"rescore_history: must be >= 0 (got {rescore_history})")
        gen = replace(loaded.cfg.generator, rescore_history=rescore_history)
        loaded = replace(loaded, cfg=replace(loaded.cfg, generator=gen))  # the caller's run is left as it was
    if repeat_breakdown and loaded.kind != MULTI_BEHAVIOR:
        raise ConfigError(f"repeat_breakdown: only multi-behavior runs split their targets ({loaded.run_dir} is a "
                          f"{loaded.kind} run)")
    evaluator = partial(_multi_behavior, repeat_breakdown=True) if repeat_breakdown else EVALUATORS[loaded.kind]
    # as at the end of training
    with torch_threads(loaded.cfg.train.num_threads), attention_budget(loaded.cfg.train.attention_budget_mb):
        res = evaluator(loaded, which, exclude_history, constrained)
    res["train"] = summary_of(loaded.state)
    return res


def _stop_metric(run: LoadedRun, task: str, ks: list[int]) -> str:
    return early_stop_metric(run.cfg, default_stop_metric(task, ks))


def _retriever(run: LoadedRun, which: str, exclude_history: bool | None, constrained: bool | None) -> dict[str, Any]:
    return retrieval_results(run.model, run.cfg, run.dataset, run.seqs, run.data, which, exclude_history,
                             stop_metric=_stop_metric(run, RETRIEVAL, run.cfg.eval.ks),
                             best_epoch=run.state.get("best_epoch"))


def _ranker(run: LoadedRun, which: str, exclude_history: bool | None, constrained: bool | None) -> dict[str, Any]:
    return ranker_results(run.model, run.cfg, run.dataset, run.data, which, run.features,
                          stop_metric=_stop_metric(run, CTR, run.cfg.eval.ks), best_epoch=run.state.get("best_epoch"))


def _generator(run: LoadedRun, which: str, exclude_history: bool | None, constrained: bool | None) -> dict[str, Any]:
    opts = run.cfg.generator
    assert run.sids is not None
    return generation_results(run.model, run.cfg, opts, run.dataset, run.seqs, run.data, which, constrained,
                              sid_fingerprint=run.sids.fingerprint,
                              stop_metric=_stop_metric(run, GENERATION, generation_ks(run.cfg, opts.beam_size)),
                              best_epoch=run.state.get("best_epoch"))


def _multi_behavior(run: LoadedRun, which: str, exclude_history: bool | None, constrained: bool | None,
                    repeat_breakdown: bool = False) -> dict[str, Any]:
    assert run.sids is not None
    return behavior_results(run.model, run.cfg, run.cfg.multibehavior, run.dataset, run.data, which, constrained,
                            sid_fingerprint=run.sids.fingerprint, best_epoch=run.state.get("best_epoch"),
                            train_seconds=run.state.get("train_seconds"), repeat_breakdown=repeat_breakdown)


EVALUATORS: dict[str, Evaluator] = {RETRIEVER: _retriever, RANKER: _ranker, GENERATOR: _generator,
                                    MULTI_BEHAVIOR: _multi_behavior}
