"""Fingerprints of short fixed-seed runs of every model kind, to show that a refactor changed no number.

Each run is a real recipe cut short (1-2 epochs, seed 1, one thread) on real data: SASRec and HSTU on Amazon
Beauty, the two-stage HPGR ranker on MovieLens-100k, TIGER on MovieLens-100k (co-occurrence SIDs, a small model)
and GAMER on the Taobao sample. For each run the fingerprint is the sha256 of every weights file it wrote (best
and checkpoints) plus its test metrics. Run it at two commits and compare:

    git stash -u; git checkout OLD
    python benchmarks/run_fingerprints.py --data-root data_cache --out /tmp/fp-old.json
    git checkout -; git stash pop
    python benchmarks/run_fingerprints.py --data-root data_cache --out /tmp/fp-new.json
    python benchmarks/run_fingerprints.py --compare /tmp/fp-old.json /tmp/fp-new.json

``--data-root`` holds the prepared folders ``beauty``, ``ml-100k`` and ``taobao-mb`` (commands in BENCHMARKS.md).
The whole set takes about 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["train.num_threads=1", "train.tensorboard=false", "train.progress=false", "train.seed=1"]
RUNS: dict[str, tuple[str, str, list[str]]] = {  # name -> (recipe, data folder, overrides)
    "sasrec": ("configs/sasrec-beauty.yaml", "beauty", ["train.epochs=2"]),
    "hstu": ("configs/hstu-beauty.yaml", "beauty", ["train.epochs=2"]),
    "hpgr": ("configs/hpgr-ml100k.yaml", "ml-100k", ["train.epochs=2", "pretrain.epochs=2"]),
    "tiger": ("configs/tiger-ml100k.yaml", "ml-100k",
              ["train.epochs=1", "train.eval_every=1", "sid.embeddings=cooccurrence", "sid.quantizer=rqkmeans",
               "model.num_encoder_layers=1", "model.num_decoder_layers=1", "model.d_model=64", "model.num_heads=2",
               "model.head_dim=32", "model.d_ff=128", "generator.valid_max_queries=300"]),
    "gamer": ("configs/gamer-taobao-cpu.yaml", "taobao-mb", ["train.epochs=2"]),
}


def fingerprint(run_dir: Path) -> dict:
    """sha256 (16 hex) of every weights file under the run folder, and every results record's metrics."""
    weights = {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()[:16]
               for p in sorted(run_dir.rglob("*.safetensors"))}
    metrics = {str(p.relative_to(run_dir)): json.loads(p.read_text()).get("metrics")
               for p in sorted(run_dir.rglob("results/*.json"))}
    return {"weights": weights, "metrics": metrics}


def run_all(data_root: Path, names: list[str], work: Path) -> dict:
    out = {}
    for name in names:
        recipe, data, sets = RUNS[name]
        t0 = time.time()
        cmd = [sys.executable, "-m", "genrec.cli", "train", str(ROOT / recipe), "--data", str(data_root / data),
               "--out", str(work / name), "--set", *COMMON, *sets]
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}  # this checkout's genrec, whatever is installed
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"{name}: training failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
        out[name] = {**fingerprint(work / name), "seconds": round(time.time() - t0, 1)}
        print(f"{name}: {len(out[name]['weights'])} weights files, {out[name]['seconds']} s", flush=True)
    return out


def compare(a: dict, b: dict) -> int:
    """Print one line per run; returns the number of runs whose weights or metrics differ."""
    bad = 0
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            print(f"{name}: only in one file")
            bad += 1
            continue
        wa, wb = a[name]["weights"], b[name]["weights"]
        common = sorted(set(wa) & set(wb))
        diff_w = [k for k in common if wa[k] != wb[k]]
        same_m = a[name]["metrics"] == b[name]["metrics"]
        print(f"{name}: {len(common)} weights files compared, {len(diff_w)} differ; metrics identical: {same_m}")
        bad += bool(diff_w or not same_m or not common)
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", type=Path, default=ROOT / "data_cache")
    ap.add_argument("--out", type=Path, help="write the fingerprints here (JSON)")
    ap.add_argument("--only", nargs="*", choices=sorted(RUNS), default=sorted(RUNS))
    ap.add_argument("--keep", type=Path, help="keep the run folders here instead of a temporary folder")
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"))
    args = ap.parse_args()
    if args.compare:
        a, b = (json.loads(p.read_text()) for p in args.compare)
        return 1 if compare(a, b) else 0
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        res = run_all(args.data_root, args.only, work)
    text = json.dumps(res, indent=2)
    if args.out:
        args.out.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
