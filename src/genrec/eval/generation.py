"""From beams to metrics: a generator's ranked list is its beam list, so ranks stop at the beam size.

The rank of the target is its (0-based) beam position; a target that is not among the beams gets rank
``inf`` (beyond the list), so HR/Recall@K and NDCG@K are exact for every ``K <= beam_size`` and ``mrr`` is
MRR truncated at the beam size. Unconstrained decoding can return SIDs that name no item (spec §2.5): as in
TIGER they are dropped before ranking (``filter_invalid``), and their share is reported as ``invalid_rate``.
History items are not removed from the list (spec A-T4).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, NamedTuple

import numpy as np
import torch

from genrec.config import GeneratorConfig, RunConfig
from genrec.data.schema import Dataset
from genrec.data.sequences import UserSequences, pad_windows
from genrec.data.splits import EvalSamples, Split
from genrec.errors import ConfigError
from genrec.eval.metrics import GENERATION, metrics_from_ranks, select_metrics
from genrec.eval.record import check_split, results_record

GENERATION_TASK = "next-item generation"


class GenerationEval(NamedTuple):
    metrics: dict[str, float]  # hr@K, recall@K, ndcg@K, mrr (truncated), num_queries, invalid_rate, beam_size
    ranks: np.ndarray  # (S,) 0-based rank of each target among the (valid) beams, inf when absent
    invalid_rate: float  # fraction of returned beams whose SID names no item


def beam_ranks(items: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray,
               filter_invalid: bool = True) -> np.ndarray:
    """(B, K) beam item ids (-1 = invalid), (B,) targets -> (B,) float ranks, ``inf`` when the target is absent.

    With ``filter_invalid`` the rank counts only the valid beams above the target (invalid ones are removed
    from the list, as TIGER does); otherwise it is the raw beam position.
    """
    it = np.asarray(items.cpu() if isinstance(items, torch.Tensor) else items, dtype=np.int64)  # (B, K)
    tg = np.asarray(targets.cpu() if isinstance(targets, torch.Tensor) else targets, dtype=np.int64)  # (B,)
    if it.ndim != 2 or tg.shape != (it.shape[0],):
        raise ConfigError(f"beam_ranks: need (B, K) items and (B,) targets, got {it.shape} and {tg.shape}")
    hit = (it == tg[:, None]) & (it >= 0)  # (B, K)
    first = hit.argmax(1)  # (B,) first matching beam (0 when none)
    if filter_invalid:
        before = np.cumsum(it >= 0, axis=1) - (it >= 0)  # (B, K) valid beams strictly above each slot
        pos = before[np.arange(len(tg)), first].astype(np.float64)
    else:
        pos = first.astype(np.float64)
    return np.where(hit.any(1), pos, np.inf)


def generation_metrics(items: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray, ks: list[int],
                       filter_invalid: bool = True) -> dict[str, float]:
    """HR/Recall@K, NDCG@K (K <= number of beams) and truncated MRR from beam lists."""
    width = int(np.shape(items)[1])
    bad = [k for k in ks if k > width]
    if bad:
        raise ConfigError(f"generation metrics: K={bad} exceed the {width} returned beams; raise the beam size")
    return metrics_from_ranks(beam_ranks(items, targets, filter_invalid), ks)


def history_matrix(seqs: UserSequences, rows: np.ndarray, ends: np.ndarray, max_len: int) -> np.ndarray:
    """(S,) rows and history lengths -> (S, L) item ids of the last <= ``max_len`` events before each end.

    Left-aligned (oldest first), zero-padded on the right; L = the longest window in the batch.
    """
    return seqs.windows(rows, ends, max_len).take(seqs.items)


@torch.no_grad()
def evaluate_generator(model: Any, seqs: UserSequences, samples: EvalSamples, ks: list[int], beam_size: int = 20,
                       batch_size: int = 256, constrained: bool = True, filter_invalid: bool = True,
                       select: Sequence[str] | None = None, length_sorted: bool = True) -> GenerationEval:
    """Beam-search every evaluation query and score the target's beam position (the metrics in ``select``,
    default all).

    ``model`` is any generator with ``generate(histories, users, beam_size, k, constrained) -> BeamResult``
    and a ``max_len`` history window. With ``length_sorted`` the queries are searched in the order of their
    history length, so a call's histories are padded to a similar length (in sample order, 64% of the
    encoder's item slots on the Beauty test users were padding); ranks come back in sample order, and a
    query's beams do not depend on its batch beyond float rounding.
    """
    if len(samples) == 0:
        raise ConfigError("evaluate_generator: no evaluation queries")
    bad = [k for k in ks if k > beam_size]
    if bad:
        raise ConfigError(f"eval.ks {bad} exceed the beam size {beam_size}; a generator ranks only its beams")
    lengths = np.minimum(samples.hist_end, int(model.max_len))
    order = np.argsort(lengths, kind="stable") if length_sorted else np.arange(len(samples))
    ranks, invalid, total = [], 0, 0
    for i in range(0, len(samples), batch_size):
        rows = samples.rows[order[i:i + batch_size]]
        ends = samples.hist_end[order[i:i + batch_size]]
        hist = torch.from_numpy(history_matrix(seqs, rows, ends, model.max_len))  # (b, L)
        targets = seqs.items[seqs.offsets[rows] + ends]  # (b,)
        res = model.generate(hist, seqs.user_ids[rows], beam_size=beam_size, k=beam_size, constrained=constrained)
        ranks.append(beam_ranks(res.items, targets, filter_invalid))
        invalid += int((~res.valid).sum())
        total += res.valid.numel()
    r = np.empty(len(samples))
    r[order] = np.concatenate(ranks)  # back to sample order
    rate = invalid / max(total, 1)
    fams = select_metrics(select, GENERATION)
    metrics = metrics_from_ranks(r, ks, fams)
    if "invalid_rate" in fams:
        metrics["invalid_rate"] = rate
    metrics["beam_size"] = beam_size
    return GenerationEval(metrics, r, rate)


def generation_ks(cfg: RunConfig, beam_size: int) -> list[int]:
    """The cut-offs of ``eval.ks`` a generator can measure: those within its beam."""
    ks = [k for k in cfg.eval.ks if k <= beam_size]
    if not ks:
        raise ConfigError(f"eval.ks {cfg.eval.ks}: none is within the beam size {beam_size}")
    return ks


def generation_eval(model: Any, cfg: RunConfig, opts: GeneratorConfig, seqs: UserSequences, samples: EvalSamples,
                    constrained: bool | None = None) -> GenerationEval:
    """``evaluate_generator`` with the recipe's settings (validation and test alike); ``constrained`` None is
    ``generator.constrained``."""
    con = opts.constrained if constrained is None else constrained
    return evaluate_generator(model, seqs, samples, generation_ks(cfg, opts.beam_size), opts.beam_size,
                              cfg.eval.batch_size, constrained=con, select=select_metrics(cfg.eval.metrics, GENERATION))


def generation_results(model: Any, cfg: RunConfig, opts: GeneratorConfig, dataset: Dataset, seqs: UserSequences,
                       split: Split, which: str = "test", constrained: bool | None = None, *, sid_fingerprint: str,
                       stop_metric: str, best_epoch: Any) -> dict[str, Any]:
    """Results record of a generator on ``which`` (test | valid); ``constrained=False`` measures free decoding.
    The trainer's test record and ``genrec evaluate`` both come from here."""
    check_split(which)
    con = opts.constrained if constrained is None else constrained
    ev = generation_eval(model, cfg, opts, seqs, getattr(split, which), con)
    protocol = {
        "task": GENERATION_TASK,
        "split": split.name,
        "evaluated_on": which,
        "candidates": f"beam list (beam {opts.beam_size}, "
                      f"{'trie-constrained' if con else 'unconstrained, invalid SIDs dropped'})",
        "exclude_history": False,
        "history_window": cfg.data.max_len,
        "ks": generation_ks(cfg, opts.beam_size),
        "early_stopping": f"{stop_metric} on validation",
        "best_epoch": best_epoch,
    }
    return results_record(cfg.model["name"], dataset, protocol, ev.metrics, cfg,
                          ids={"sid_fingerprint": sid_fingerprint}, sections={"generator": asdict(opts)})


def generate_top_k(model: Any, histories: list[np.ndarray], k: int, exclude_history: bool, beam_size: int,
                   short_len: int, users: np.ndarray | None = None) -> list[list[tuple[int, float]]]:
    """Top-``k`` (internal item id, log-probability) lists for raw histories (oldest first), by constrained beam.

    The one recommendation path for generators (``genrec recommend`` and the served artifact): each history is
    cut to the model's window (``model.max_len``: GLASS reads a long window beyond the short one). With
    ``exclude_history`` every item of the full history is dropped from the beam list afterwards. The first
    search widens the beam by the distinct items of the short window (cheap, and enough for most users); a
    history that still has fewer than ``k`` items left is searched again with the beam widened by every
    distinct item of its full history, which returns exactly ``k`` whenever the catalogue holds ``k`` unseen
    items (a trie-constrained beam of width w yields w distinct items). Widths depend only on the history
    itself, so a history's answer does not depend on what it is batched with.
    """
    n_items = int(model.num_items)
    seen = [set(h.tolist()) if exclude_history else set() for h in histories]
    widths = [min(max(beam_size, k + (len(set(h[-short_len:].tolist())) if exclude_history else 0)), n_items)
              for h in histories]
    out = _beam_lists(model, histories, widths, seen, k, users)
    short = [b for b, rows in enumerate(out) if len(rows) < min(k, n_items - len(seen[b])) and
             widths[b] < n_items]
    if short:  # the full history's distinct items, not only the window's, are removed: widen by all of them
        wide = [min(max(beam_size, k + len(seen[b])), n_items) for b in short]
        again = _beam_lists(model, [histories[b] for b in short], wide, [seen[b] for b in short], k,
                            None if users is None else users[short])
        for b, rows in zip(short, again):
            out[b] = rows
    return out


def _beam_lists(model: Any, histories: list[np.ndarray], widths: list[int], seen: list[set[int]], k: int,
                users: np.ndarray | None) -> list[list[tuple[int, float]]]:
    """One constrained beam search per distinct width; each list keeps the first ``k`` unseen valid items."""
    out: list[list[tuple[int, float]]] = [[] for _ in histories]
    for beam in sorted(set(widths)):
        idx = [b for b, w in enumerate(widths) if w == beam]
        windows = torch.from_numpy(pad_windows([histories[b] for b in idx], int(model.max_len))[0])  # (b, L)
        res = model.generate(windows, None if users is None else users[idx], beam_size=beam, k=beam,
                             constrained=True)
        for row, b in enumerate(idx):
            for item, score, ok in zip(res.items[row].tolist(), res.scores[row].tolist(), res.valid[row].tolist()):
                if ok and item not in seen[b]:
                    out[b].append((int(item), float(score)))
                if len(out[b]) == k:
                    break
    return out
