"""The model card an artifact carries: ``README.md``, written by ``genrec export``, read by ``Artifact.card``.

A served model should say what it is without its run folder: the model and its hyper-parameters, the data
it learnt from (fingerprint and counts), how its test numbers were measured (protocol) and what they are,
the recipe, and which genrec wrote it when. The card is listed in the artifact's ``files`` map (slot
``card``) with a sha256 like every other file, so an edited card fails to load like an edited weights file;
an artifact exported before cards existed has no slot and its card is None.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

import genrec
from genrec.config import RunConfig
from genrec.eval.compare import flat_metrics
from genrec.serve.format import CARD_FILE, ArtifactError, sha256

CARD_SLOT = "card"
CORE_SECTIONS = ("model", "data", "objective", "train", "eval")  # always in the recipe; others when set
PROTOCOL_KEYS = ("task", "split", "evaluated_on", "candidates", "exclude_history", "labels", "history_window",
                 "ks", "early_stopping", "best_epoch")


def _cell(value: Any) -> str:
    """A Markdown table cell: numbers as written, containers as compact JSON, pipes escaped."""
    if isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, (dict, list, tuple)):
        text = json.dumps(value, default=str, separators=(", ", ": "))
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(rows: list[tuple[str, Any]], head: tuple[str, str] = ("", "")) -> list[str]:
    return [f"| {head[0]} | {head[1]} |", "| --- | --- |", *(f"| {k} | {_cell(v)} |" for k, v in rows)]


def _recipe(cfg: RunConfig) -> dict[str, Any]:
    """The resolved recipe's core sections and every other section that differs from the defaults."""
    mine, default = cfg.to_dict(), RunConfig().to_dict()
    return {k: v for k, v in mine.items()
            if k != "source" and (k in CORE_SECTIONS or (v and v != default.get(k)))}


def render_card(run: Any, run_name: str, weights: str, results: dict[str, Any] | None) -> str:
    """The card's Markdown for an opened run (``genrec.runs.open.open_run``) and its test record (or None)."""
    cfg, ds, model = run.cfg, run.dataset, run.model
    name, kinds = cfg.model["name"], ", ".join(model.kinds)
    protocol = (results or {}).get("protocol") or {}
    lines = [f"# {name} ({kinds})", "",
             f"Exported from run `{run_name}` ({weights} weights) by genrec {genrec.__version__} on "
             f"{time.strftime('%Y-%m-%d')}. Load it with `genrec.load(PATH)` or serve it with "
             "`genrec serve PATH`.", "", "## Model", ""]
    hyper = [(k, v) for k, v in cfg.model.items() if k != "name"]
    lines += _table([("model", name), ("kinds", kinds),
                     ("parameters", f"{sum(p.numel() for p in model.parameters()):,}"), *hyper],
                    ("setting", "value"))
    counts = ds.manifest.get("counts") or {}
    lines += ["", "## Data", ""]
    lines += _table([("dataset", ds.manifest.get("name", "")), ("fingerprint", ds.fingerprint),
                     *((k, v) for k, v in counts.items() if isinstance(v, (int, float))),
                     ("history window (data.max_len)", cfg.data.max_len)], ("data", "value"))
    lines += ["", "## Protocol", ""]
    if protocol:
        lines += _table([(k, protocol[k]) for k in PROTOCOL_KEYS if k in protocol], ("stamp", "value"))
    else:
        lines.append(f"split `{cfg.data.split}`; the run had no test results when it was exported.")
    metrics = flat_metrics((results or {}).get("metrics"))
    lines += ["", "## Test metrics", ""]
    lines += _table([(k, f"{v:.4f}") for k, v in metrics.items()], ("metric", "value")) if metrics else ["none recorded"]
    lines += ["", "## Recipe", ""]
    if cfg.source:
        lines += [f"Source: {cfg.source}", ""]
    lines += ["The resolved recipe (all of it is in `config.json`):", "", "```yaml",
              yaml.safe_dump(_recipe(cfg), sort_keys=False, width=100).rstrip(), "```", ""]
    return "\n".join(lines)


def write_card(folder: Path, run: Any, run_name: str, weights: str, results: dict[str, Any] | None) -> str:
    """Write ``README.md`` into the artifact folder being built; returns its file name for the ``files`` map."""
    (folder / CARD_FILE).write_text(render_card(run, run_name, weights, results), encoding="utf-8")
    return CARD_FILE


class ModelCard:
    """The ``card`` property of :class:`genrec.serve.artifact.Artifact` (a mixin: it reads ``root`` and
    ``manifest``, which the artifact sets)."""

    root: Path
    manifest: dict[str, Any]

    @property
    def card(self) -> str | None:
        """The artifact's model card (Markdown); None for an artifact exported before cards existed. Checked
        against its sha256 again here, since it is read after the artifact loaded."""
        name = (self.manifest.get("files") or {}).get(CARD_SLOT)
        if not name:
            return None
        path = self.root / name
        if not path.is_file() or sha256(path) != self.manifest["sha256"].get(name):
            raise ArtifactError(f"{path}: missing or changed since export (sha256 does not match artifact.json)")
        return path.read_text(encoding="utf-8")
