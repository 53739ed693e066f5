"""``genrec export``: a trained run folder -> a self-contained artifact folder (layout in ``serve.format``)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import genrec
from genrec.serve.card import write_card
from genrec.serve.format import (
    CONFIG_FILE,
    FORMAT,
    FORMAT_VERSION,
    ITEMS_FILE,
    MANIFEST,
    SID_TABLE_FILE,
    WEIGHTS_FILE,
    ArtifactError,
    sha256,
)


def export_run(run_dir: str | Path, out: str | Path, weights: str = "best", overwrite: bool = False) -> Path:
    """Write the artifact folder for a trained run; returns its path.

    The folder is written under a temporary name and renamed into place, so a killed export never
    leaves a half-written artifact that would later fail to load in a confusing way.
    """
    from genrec.runs.checkpoint import save_weights
    from genrec.runs.layout import results_path
    from genrec.runs.open import open_run

    run_dir, out = Path(run_dir), Path(out)
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"{out}: exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ArtifactError(f"{out}: folder exists and is not empty (pass --force to replace an artifact)")
        if not (out / MANIFEST).exists():
            raise ArtifactError(f"{out}: refusing to replace a folder that is not a genrec artifact")
    run = open_run(run_dir, weights=weights)
    ds = run.dataset
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        save_weights(run.model, tmp / WEIGHTS_FILE)
        os.chmod(tmp / WEIGHTS_FILE, 0o644)  # safetensors writes 0600; an artifact is meant to be shared
        (tmp / CONFIG_FILE).write_text(json.dumps(run.cfg.to_dict(), indent=2))
        titles = None
        if "title" in ds.items.column_names:
            by_id = dict(zip(ds.items.column("item_id").to_pylist(), ds.items.column("title").to_pylist()))
            titles = [None] + [None if by_id.get(i) is None else str(by_id[i]) for i in range(1, ds.num_items + 1)]
        (tmp / ITEMS_FILE).write_text(json.dumps({"external_ids": ds.item_external_ids(), "titles": titles}))
        files: dict[str, str | None] = {"weights": WEIGHTS_FILE, "config": CONFIG_FILE, "items": ITEMS_FILE,
                                        "sid_table": None}
        if (run_dir / SID_TABLE_FILE).exists():  # written by generator runs (none exist yet)
            shutil.copyfile(run_dir / SID_TABLE_FILE, tmp / SID_TABLE_FILE)
            files["sid_table"] = SID_TABLE_FILE
        test, res = {}, None
        res_path = results_path(run_dir)
        if res_path.exists():
            try:
                res = json.loads(res_path.read_text())
                test = {"test_metrics": res.get("metrics"), "test_protocol": res.get("protocol")}
            except json.JSONDecodeError:
                test, res = {}, None
        files["card"] = write_card(tmp, run, run_dir.resolve().name, weights, res)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "genrec_version": genrec.__version__,
            "model": run.cfg.model["name"],
            "kinds": list(run.model.kinds),
            "num_items": ds.num_items,
            "max_len": run.cfg.data.max_len,
            "data_fingerprint": ds.fingerprint,
            "dataset": ds.manifest.get("name"),
            "behaviors": ds.behavior_names,
            "run": run_dir.resolve().name,
            "weights_from": weights,
            "files": files,
            "tensors": {k: list(v.shape) for k, v in run.model.state_dict().items()},
            "sha256": {name: sha256(tmp / name) for name in files.values() if name},
            **test,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
