"""Exported model artifacts and the Python recommendation API on top of them.

An artifact is a self-contained folder, so a model can be served without its training run or its
dataset folder. Everything in it is JSON or safetensors: loading never unpickles anything.

- ``artifact.json``: format name and version, the genrec version that wrote it, model name and
  kinds, ``num_items``, ``max_len``, dataset fingerprint, the shape of every weight tensor, the
  sha256 of every file, and a ``files`` map of slots to file names.
- ``model.safetensors`` (slot ``weights``): the model's state dict.
- ``config.json`` (slot ``config``): the resolved run config, from which the model is rebuilt.
- ``items.json`` (slot ``items``): ``external_ids`` indexed by internal id (index 0 is padding)
  and ``titles`` (same indexing) or null.
- slot ``sid_table`` (optional, null for today's models). Generators (TIGER, GLASS) need no separate
  file: their item -> semantic-id table, SID-Tier bins and neighbour codes are buffers of the model,
  so they travel inside ``model.safetensors`` and are checked with the other tensors.

Rankings are computed with :func:`genrec.eval.retrieval.score_histories`, the function the
evaluation code ranks with, so an answer from here equals the evaluation's ranking exactly; generators
answer through :func:`genrec.eval.generation.generate_top_k`, the path of ``genrec recommend``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import genrec
from genrec.errors import GenrecError
from genrec.serve.card import ModelCard
from genrec.serve.export import export_run
from genrec.serve.format import (  # noqa: F401  (re-exported: the names users and tests import from here)
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    MAX_TIMESTAMP,
    UNKNOWN_MODES,
    ArtifactError,
    check_manifest,
    is_int,
    read_items,
    read_json,
    read_safetensors,
)

__all__ = ["Artifact", "ArtifactError", "NotARankerError", "Query", "Recommendations", "RequestError",
           "export_run", "load_artifact"]


class RequestError(GenrecError):
    """A recommendation request that cannot be answered as asked (the HTTP layer answers 400).

    ``details`` carries machine-readable extras, e.g. the list of unknown item ids.
    """

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details = details


class NotARankerError(RequestError):
    """``score`` was called on a model whose kinds do not include "ranker"."""


class Recommendations(list):
    """``[(external_item_id, score), ...]`` best first, plus what was done to the history.

    A list subclass so the common case reads like a plain list, while the caller can still see
    which ids were ignored and whether the history was cut to the model's window.
    """

    def __init__(self, items: list[tuple[str, float]], ignored_unknown: list[str], truncated: bool,
                 history_used: int) -> None:
        super().__init__(items)
        self.ignored_unknown = ignored_unknown
        self.truncated = truncated
        self.history_used = history_used

    def __repr__(self) -> str:
        return (f"Recommendations({list.__repr__(self)}, ignored_unknown={self.ignored_unknown}, "
                f"truncated={self.truncated}, history_used={self.history_used})")


@dataclass
class Query:
    """A validated request in internal ids, ready for a (batched) forward pass."""

    items: np.ndarray  # (n,) internal ids of the known history, oldest first, not yet truncated
    times: np.ndarray  # (n,) int64 seconds
    query_time: int
    k: int
    exclude_history: bool
    ignored_unknown: list[str] = field(default_factory=list)
    truncated: bool = False
    history_used: int = 0


# -- helpers ----------------------------------------------------------------------------------------


def _short_list(xs: Sequence[str], n: int = 10) -> str:
    head = ", ".join(repr(x) for x in xs[:n])
    return head + (f" and {len(xs) - n} more" if len(xs) > n else "")


# -- load -------------------------------------------------------------------------------------------


def load_artifact(path: str | Path, device: str = "cpu") -> Artifact:
    """Open an artifact folder for serving; every check fails with a one-line ``ArtifactError``."""
    from genrec.config import config_from_dict
    from genrec.models.pretrained import fill_stage1
    from genrec.models.registry import build_model

    root = Path(path)
    if not root.is_dir():
        raise ArtifactError(f"{root}: artifact folder not found")
    man = check_manifest(root)
    files = man["files"]
    cpath = root / files["config"]
    raw = read_json(cpath, "config")
    try:
        cfg = config_from_dict(raw, str(cpath))
        cfg.model = fill_stage1(cfg.model)  # exported before model.stage1 existed: read from its stage-1 artifact
        model = build_model(cfg.model, man["num_items"], man["max_len"])
    except ArtifactError:
        raise
    except GenrecError as exc:
        raise ArtifactError(f"{cpath}: cannot rebuild the model ({exc})") from None
    if list(model.kinds) != list(man["kinds"]):
        raise ArtifactError(f"{root / MANIFEST}: kinds {man['kinds']} do not match model '{man['model']}' "
                            f"({list(model.kinds)})")
    wpath = root / files["weights"]
    tensors = read_safetensors(wpath, man["tensors"])
    own = model.state_dict()
    for k, v in own.items():
        if k not in tensors:
            raise ArtifactError(f"{wpath}: tensor '{k}' is missing for model '{man['model']}'")
        if tuple(tensors[k].shape) != tuple(v.shape):
            raise ArtifactError(f"{wpath}: tensor '{k}' has shape {tuple(tensors[k].shape)}, model "
                                f"'{man['model']}' with {cpath.name} expects {tuple(v.shape)}")
    unexpected = sorted(set(tensors) - set(own))
    if unexpected:
        raise ArtifactError(f"{wpath}: unexpected tensors for model '{man['model']}': {unexpected[:3]}")
    model.load_state_dict(tensors)
    ext, titles = read_items(root / files["items"], man["num_items"])
    sid_table = None
    if files.get("sid_table"):
        sid_table = read_safetensors(root / files["sid_table"], None)
    try:
        model = model.to(device)
    except (RuntimeError, AssertionError) as exc:
        raise ArtifactError(f"{root}: cannot move the model to device '{device}' ({exc})") from None
    model.eval()
    return Artifact(root, man, cfg.to_dict(), model, ext, titles, sid_table)


# -- the Python API ---------------------------------------------------------------------------------


class Artifact(ModelCard):
    """A loaded artifact: ``recommend`` / ``recommend_batch`` for retrievers and generators, ``score`` for rankers.

    Requests are validated in :meth:`prepare` (cheap, raises :class:`RequestError`) and computed in
    :meth:`run` (one forward pass for many requests), so the server can reject bad requests
    before they queue and micro-batch the good ones.
    """

    def __init__(self, root: Path, manifest: dict[str, Any], config: dict[str, Any], model: torch.nn.Module,
                 external_ids: list[str], titles: list[str | None] | None,
                 sid_table: dict[str, torch.Tensor] | None = None) -> None:
        self.root = root
        self.manifest = manifest
        self.config = config
        self.model = model
        self.external_ids = external_ids
        self.titles = titles
        self.sid_table = sid_table
        self._index = {e: i for i, e in enumerate(external_ids) if i > 0}

    # descriptive properties
    @property
    def model_name(self) -> str:
        return str(self.manifest["model"])

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.model.kinds)

    @property
    def num_items(self) -> int:
        return int(self.manifest["num_items"])

    @property
    def max_len(self) -> int:
        return int(self.manifest["max_len"])

    @property
    def window(self) -> int:
        """History items a request can use: ``max_len``, or a generator's whole window (GLASS adds its long one)."""
        from genrec.models.base import GENERATOR

        return int(self.model.max_len) if GENERATOR in self.kinds else self.max_len

    @property
    def data_fingerprint(self) -> str:
        return str(self.manifest["data_fingerprint"])

    def metadata(self) -> dict[str, Any]:
        """What a client needs to know to call the model (and to tell which model answered)."""
        m = self.manifest
        return {"model": self.model_name, "kinds": list(self.kinds), "num_items": self.num_items,
                "max_len": self.max_len, "data_fingerprint": self.data_fingerprint, "dataset": m.get("dataset"),
                "genrec_version": m["genrec_version"], "serving_genrec_version": genrec.__version__,
                "format_version": m["format_version"], "has_titles": self.titles is not None,
                "behaviors": m.get("behaviors"), "test_metrics": m.get("test_metrics")}

    def title(self, item: str) -> str | None:
        """Title of an external item id, or None when the dataset had no titles."""
        i = self._index.get(str(item))
        return None if i is None or self.titles is None else self.titles[i]

    def require_ranker(self) -> None:
        """Raise :class:`NotARankerError` unless the model's kinds include "ranker"."""
        from genrec.models.base import RANKER

        if RANKER not in self.kinds:
            raise NotARankerError(f"model '{self.model_name}' is not a ranker (kinds: {', '.join(self.kinds)}); "
                                  "use recommend() / POST /recommend")

    # validation
    def _map(self, ids: Sequence[Any], what: str, unknown: str) -> tuple[list[int], list[int], list[str]]:
        """(internal ids, positions kept, unknown ids in first-seen order) for external ids."""
        known, keep, unk, seen = [], [], [], set()
        for pos, x in enumerate(ids):
            if not (isinstance(x, str) or is_int(x)):
                raise RequestError(f"{what}[{pos}] must be an item id (string or integer), got {type(x).__name__}")
            key = str(x)
            i = self._index.get(key)
            if i is None:
                if key not in seen:
                    seen.add(key)
                    unk.append(key)
            else:
                known.append(i)
                keep.append(pos)
        if unk and unknown == "reject":
            raise RequestError(f"unknown item id(s) in {what}: {_short_list(unk)}", unknown_items=unk)
        return known, keep, unk

    def prepare(self, history: Sequence[Any], k: int = 10, timestamps: Sequence[int] | None = None,
                exclude_history: bool = True, unknown: str = "ignore", query_time: int | None = None,
                behaviors: Sequence[Any] | None = None) -> Query:
        """Validate one request and map it to internal ids; raises :class:`RequestError` naming the problem.

        ``behaviors`` is checked (one per history event) but no current model reads it.
        """
        if isinstance(history, (str, bytes)) or not isinstance(history, (Sequence, np.ndarray)):
            raise RequestError("history must be a list of item ids")
        if len(history) == 0:
            raise RequestError("empty history: give at least one item id")
        if unknown not in UNKNOWN_MODES:
            raise RequestError(f"unknown={unknown!r}: expected 'ignore' or 'reject'")
        if not is_int(k):
            raise RequestError(f"k must be an integer, got {type(k).__name__}")
        if not 1 <= k <= self.num_items:
            raise RequestError(f"k={k} is out of range (1..{self.num_items})")
        if not isinstance(exclude_history, bool):
            raise RequestError("exclude_history must be true or false")
        if timestamps is not None:
            if len(timestamps) != len(history):
                raise RequestError(f"timestamps has {len(timestamps)} entries but history has {len(history)}; "
                                   "give one unix time (seconds) per history item")
            bad = [p for p, t in enumerate(timestamps) if not is_int(t) or not 0 <= t <= MAX_TIMESTAMP]
            if bad:
                raise RequestError(f"timestamps[{bad[0]}] must be an integer unix time in seconds "
                                   f"(0..{MAX_TIMESTAMP}), got {timestamps[bad[0]]!r}")
        if behaviors is not None and len(behaviors) != len(history):
            raise RequestError(f"behaviors has {len(behaviors)} entries but history has {len(history)}")
        if query_time is not None and (not is_int(query_time) or not 0 <= query_time <= MAX_TIMESTAMP):
            raise RequestError(f"query_time must be an integer unix time in seconds, got {query_time!r}")
        known, keep, unk = self._map(history, "history", unknown)
        if not known:
            raise RequestError(f"no known item id in history (unknown: {_short_list(unk)})", unknown_items=unk)
        items = np.asarray(known, dtype=np.int64)
        if timestamps is None:
            # as `genrec recommend --history`: consecutive seconds, so the three paths agree exactly
            times = np.arange(1, len(items) + 1, dtype=np.int64)
        else:
            times = np.asarray([int(timestamps[p]) for p in keep], dtype=np.int64)
        qt = int(times[-1]) if query_time is None else int(query_time)
        n, window = len(items), self.window
        return Query(items, times, qt, int(k), exclude_history, unk, n > window, min(n, window))

    # computation
    def run(self, queries: list[Query]) -> list[Recommendations]:
        """Answer prepared queries with as few forward passes as possible (one per exclusion setting)."""
        from genrec.eval.retrieval import score_histories
        from genrec.models.base import GENERATOR, RETRIEVER

        if GENERATOR in self.kinds:
            return self._run_generator(queries)
        if RETRIEVER not in self.kinds:
            raise RequestError(f"model '{self.model_name}' is not a retriever (kinds: {', '.join(self.kinds)}); "
                               "use score() / POST /score")
        out: list[Recommendations | None] = [None] * len(queries)
        for flag in (True, False):
            idx = [i for i, q in enumerate(queries) if q.exclude_history == flag]
            if not idx:
                continue
            qs = [queries[i] for i in idx]
            scores = score_histories(self.model, [q.items for q in qs], [q.times for q in qs],
                                     np.array([q.query_time for q in qs], dtype=np.int64), flag).cpu()
            for row, (i, q) in enumerate(zip(idx, qs)):
                s = scores[row]
                k = min(q.k, int(torch.isfinite(s).sum()))
                top = torch.topk(s, k)
                recs = [(self.external_ids[int(j)], float(v)) for v, j in zip(top.values, top.indices)]
                out[i] = Recommendations(recs, q.ignored_unknown, q.truncated, q.history_used)
        return out  # type: ignore[return-value]

    def _run_generator(self, queries: list[Query]) -> list[Recommendations]:
        """Semantic-ID generators: trie-constrained beam search, score = the SID's summed log-probability.

        The path of ``genrec recommend`` (:func:`genrec.eval.generation.generate_top_k`), one batched search per
        (k, exclusion) group. Excluded history items are removed from the beam list, whose width grows by the
        history's distinct items, so fewer than k items come back only when the catalogue runs out."""
        from genrec.eval.generation import generate_top_k

        beam = int((self.config.get("generator") or {}).get("beam_size", 20))
        out: list[Recommendations | None] = [None] * len(queries)
        for key in sorted({(q.k, q.exclude_history) for q in queries}):
            idx = [i for i, q in enumerate(queries) if (q.k, q.exclude_history) == key]
            with torch.no_grad():
                lists = generate_top_k(self.model, [queries[i].items for i in idx], key[0], key[1], beam,
                                       self.max_len)
            for i, rows in zip(idx, lists):
                q = queries[i]
                out[i] = Recommendations([(self.external_ids[j], s) for j, s in rows], q.ignored_unknown,
                                         q.truncated, q.history_used)
        return out  # type: ignore[return-value]

    def recommend(self, history: Sequence[Any], k: int = 10, timestamps: Sequence[int] | None = None,
                  exclude_history: bool = True, unknown: str = "ignore", query_time: int | None = None,
                  behaviors: Sequence[Any] | None = None) -> Recommendations:
        """Top-k ``(external_item_id, score)`` for one history of external ids, oldest first.

        Ids are compared as strings (``12`` and ``"12"`` are the same item). Unknown ids are dropped
        and listed in ``.ignored_unknown`` (or raise with ``unknown="reject"``); a history longer
        than ``max_len`` uses its most recent ``max_len`` items (``.truncated``), while exclusion
        still removes every item of the full history. Without ``timestamps`` the events are taken
        one second apart, as ``genrec recommend --history`` does.
        """
        q = self.prepare(history, k, timestamps, exclude_history, unknown, query_time, behaviors)
        return self.run([q])[0]

    def recommend_batch(self, histories: Sequence[Sequence[Any]], k: int = 10,
                        timestamps: Sequence[Sequence[int] | None] | None = None, exclude_history: bool = True,
                        unknown: str = "ignore", query_times: Sequence[int | None] | None = None
                        ) -> list[Recommendations]:
        """``recommend`` for many histories in one forward pass (what the server's micro-batcher does)."""
        n = len(histories)
        for name, arg in (("timestamps", timestamps), ("query_times", query_times)):
            if arg is not None and len(arg) != n:
                raise RequestError(f"{name} has {len(arg)} entries for {n} histories")
        qs = [self.prepare(h, k, None if timestamps is None else timestamps[b], exclude_history, unknown,
                           None if query_times is None else query_times[b]) for b, h in enumerate(histories)]
        return self.run(qs) if qs else []

    def score(self, history: Sequence[Any], candidates: Sequence[Any], timestamps: Sequence[int] | None = None,
              unknown: str = "ignore", query_time: int | None = None) -> Recommendations:
        """Scores of the given candidates for one history, best first (models of kind "ranker").

        A ranker is expected to provide ``score_candidates(batch: SeqBatch, candidates: (B, C)) -> (B, C)``;
        retrievers are refused with :class:`NotARankerError` rather than silently faking pairwise scores.
        """
        from genrec.data.sequences import make_history_batch

        self.require_ranker()
        if isinstance(candidates, (str, bytes)) or not isinstance(candidates, (Sequence, np.ndarray)):
            raise RequestError("candidates must be a list of item ids")
        if len(candidates) == 0:
            raise RequestError("empty candidates: give at least one item id to score")
        q = self.prepare(history, 1, timestamps, False, unknown, query_time)
        cand, _, unk = self._map(candidates, "candidates", unknown)
        if not cand:
            raise RequestError(f"no known item id in candidates (unknown: {_short_list(unk)})", unknown_items=unk)
        batch = make_history_batch([q.items], [q.times], np.array([q.query_time]), self.max_len)
        with torch.no_grad():
            s = self.model.score_candidates(batch.to(self.model.device),
                                            torch.as_tensor([cand], device=self.model.device))[0].float().cpu()
        order = torch.argsort(s, descending=True, stable=True)
        recs = [(self.external_ids[cand[int(j)]], float(s[j])) for j in order]
        return Recommendations(recs, q.ignored_unknown + [u for u in unk if u not in q.ignored_unknown],
                               q.truncated, q.history_used)
