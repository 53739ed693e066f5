"""Beam decoding with the history's keys/values shared by a user's beams against the full-copy reference, in one run.

GAMER (decoder-only): with ``model.beam_memory: per_row`` (the reference path) every beam row carries the prompt's
whole key/value cache (reordered, extended and its key heads repeated every step); ``shared`` (the default) keeps
the prompt's cache one row per user and copies only the generated tokens' keys per beam. TIGER
(encoder-decoder): ``per_row`` copies each user's encoder memory for every beam and step, ``shared`` (the
default) lets the beams read one copy.

Both models are built from their recipe's shape with random weights (timing does not depend on training; the
weights are drawn wide, N(0, 0.2^2), so the beams are told apart by the model and the lists of the two paths can
be compared), over a random SID table of the recipe's size (3 x 256 codes + the collision level) for the whole
catalogue. Users: a seeded sample of GAMER's test queries for the top behavior (buy) on the session split, with
the recipe's candidate set; TIGER's leave-one-out test histories. Both paths decode the same batches in turn
(batch i of each, then batch i + 1), so the machine's load falls on both alike; ratios are what count.

    python benchmarks/beam_decode.py                       # GAMER on data_cache/tmall-cml, TIGER on data_cache/beauty
    python benchmarks/beam_decode.py --quick               # synthetic users and catalogue: checks the script (seconds)
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_result  # noqa: E402

from genrec.config import load_config  # noqa: E402
from genrec.data.loading import load_data  # noqa: E402
from genrec.data.multibehavior import BehaviorLevels, behavior_queries, candidate_items, session_split  # noqa: E402
from genrec.data.sequences import pad_windows  # noqa: E402
from genrec.eval.multibehavior import query_histories  # noqa: E402
from genrec.models.registry import build_model  # noqa: E402
from genrec.sid import SIDTable  # noqa: E402
from genrec.train.run import fit_model_to_sids  # noqa: E402

Batch = tuple[Any, ...]
WEIGHT_STD = 0.2  # wide enough that the model, not ties, orders the beams


def random_sids(num_items: int, codebook: int, seed: int) -> SIDTable:
    """Random 3-level codes for items 1..N, made unique by the collision level."""
    codes = np.random.default_rng(seed).integers(0, codebook, size=(num_items, 3))
    return SIDTable.build(np.arange(1, num_items + 1), codes, [codebook] * 3, quantizer="random")


def random_model(model_cfg: dict[str, Any], sids: SIDTable, num_items: int, max_len: int, seed: int) -> Any:
    """The recipe's model over ``sids`` with wide random weights (norm gains around 1), in evaluation mode."""
    torch.manual_seed(seed)
    model = build_model(fit_model_to_sids(model_cfg, sids.length, max(sids.codebook_sizes)), num_items, max_len)
    model.set_sid_table(sids)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if "norm" in name else 0.0, WEIGHT_STD)
    return model.eval()


def gamer_case(args: argparse.Namespace) -> tuple[Any, list[Batch], dict[str, Any], str]:
    """GAMER, its test batches ``(items, behaviors, behavior, candidates)`` and what they are."""
    cfg = load_config(args.gamer_recipe, [f"data.path={args.tmall or repr('')}", *args.gamer_set])
    if args.quick:  # synthetic: random histories of 1..max_len interactions over 500 items, 3 behaviors
        n, levels, g = 500, np.array([0, 1, 2]), np.random.default_rng(args.seed)
        lengths = g.integers(1, cfg.data.max_len + 1, args.users)
        items = [g.integers(1, n + 1, k) for k in lengths]
        behaviors = [g.integers(0, 3, k) for k in lengths]
        hi, hb = pad_windows(items, cfg.data.max_len)[0], pad_windows(behaviors, cfg.data.max_len)[0]
        top, cand, source = 2, np.arange(1, n + 1), "synthetic"
    else:
        ds = load_data(cfg.data)
        opts = cfg.multibehavior
        lv = BehaviorLevels.from_manifest(ds.manifest, opts.behavior_order or None)
        split = session_split(ds.interactions, lv, opts.session_gap)
        n, levels, top = ds.num_items, lv.array(), lv.top
        q = behavior_queries(split, "test", top, opts.min_history)
        pick = np.sort(np.random.default_rng(args.seed).choice(len(q), min(args.users, len(q)), replace=False))
        q = q.subset(pick)
        cand = candidate_items(split, top, opts.candidates, "test")
        hi, hb = query_histories(split, q, cfg.data.max_len)
        source = f"{ds.manifest.get('name', '')} test queries ({lv.names[top]})"
    model = random_model({**cfg.model, "num_behaviors": len(levels)}, random_sids(n, 256, args.seed), n,
                         cfg.data.max_len, args.seed)
    model.set_behavior_levels(levels)
    bs = args.batch
    batches = [(torch.from_numpy(hi[i:i + bs]), torch.from_numpy(hb[i:i + bs]), top, cand)
               for i in range(0, len(hi), bs)]
    shape = {"recipe": args.gamer_recipe, "users": len(hi), "candidates": int(cand.size), "history_window": cfg.data.max_len,
             "prompt_tokens": int(model.prompt_tokens(batches[0][0][:1], batches[0][1][:1], top).shape[1]),
             "mean_history": float((hi > 0).sum(1).mean()), "model": dict(cfg.model), "users_from": source}
    return model, batches, shape, "gamer"


def tiger_case(args: argparse.Namespace) -> tuple[Any, list[Batch], dict[str, Any], str]:
    """TIGER and its test batches ``(histories, users)`` (leave-one-out: each user's items but the last)."""
    cfg = load_config(args.tiger_recipe, [f"data.path={args.beauty or repr('')}", *args.tiger_set])
    g = np.random.default_rng(args.seed)
    if args.quick:
        n = 500
        users = np.arange(1, args.users + 1)
        hist = [g.integers(1, n + 1, k) for k in g.integers(1, cfg.data.max_len + 1, args.users)]
        source = "synthetic"
    else:
        ds = load_data(cfg.data)
        inter, n = ds.interactions, ds.num_items
        uid, starts = np.unique(inter.user_id, return_index=True)
        ends = np.r_[starts[1:], len(inter.user_id)]
        pick = np.sort(g.choice(len(uid), min(args.users, len(uid)), replace=False))
        users, hist = uid[pick], [inter.item_id[starts[i]:ends[i] - 1] for i in pick]
        source = f"{ds.manifest.get('name', '')} leave-one-out test histories"
    model = random_model(dict(cfg.model), random_sids(n, 256, args.seed), n, cfg.data.max_len, args.seed)
    padded = torch.from_numpy(pad_windows(hist, cfg.data.max_len)[0])
    bs = args.batch
    batches = [(padded[i:i + bs], users[i:i + bs]) for i in range(0, len(hist), bs)]
    shape = {"recipe": args.tiger_recipe, "users": len(hist), "history_window": cfg.data.max_len,
             "mean_history": float((padded > 0).sum(1).float().mean()), "model": dict(cfg.model), "users_from": source}
    return model, batches, shape, "tiger"


def decoders(model: Any, kind: str, beam: int) -> dict[str, Callable[[Batch], Any]]:
    """The reference (``model.beam_memory: per_row``, a full copy per beam) and the shared path, ``batch ->
    BeamResult`` each."""

    def path(mode: str) -> Callable[[Batch], Any]:
        def run(b: Batch) -> Any:
            model.cfg.beam_memory = mode
            try:
                if kind == "gamer":
                    return model.generate(b[0], b[1], b[2], beam_size=beam, candidates=b[3])
                return model.generate(b[0], b[1], beam_size=beam)
            finally:
                model.cfg.beam_memory = "shared"

        return run

    return {"full_copy": path("per_row"), "shared": path("shared")}


def time_paths(model: Any, kind: str, batches: list[Batch], beam: int) -> dict[str, Any]:
    """ms per user of both paths (wall and this thread's CPU), interleaved per batch, and how their lists agree."""
    paths = decoders(model, kind, beam)
    for run in paths.values():  # warm-up
        run(batches[0])
    wall = dict.fromkeys(paths, 0.0)
    cpu = dict.fromkeys(paths, 0.0)
    out: dict[str, list[Any]] = {name: [] for name in paths}
    for b in batches:
        for name, run in paths.items():
            w, c = time.perf_counter(), time.thread_time()
            out[name].append(run(b))
            wall[name] += time.perf_counter() - w
            cpu[name] += time.thread_time() - c
    users = sum(len(b[0]) for b in batches)
    items = {n: torch.cat([r.items for r in res]) for n, res in out.items()}
    scores = {n: torch.cat([r.scores for r in res]) for n, res in out.items()}
    diff = (scores["full_copy"] - scores["shared"]).abs()  # rank by rank: tied items may swap, scores may not
    rec: dict[str, Any] = {"users": users, "beam": beam,
                           "users_with_identical_lists": int((items["full_copy"] == items["shared"]).all(1).sum()),
                           "max_rankwise_score_difference": float(diff[torch.isfinite(diff)].max()),
                           "max_abs_score": float(scores["full_copy"][torch.isfinite(scores["full_copy"])].abs().max())}
    for name in paths:
        rec[f"{name}_wall_ms_per_user"] = 1000 * wall[name] / users
        rec[f"{name}_cpu_ms_per_user"] = 1000 * cpu[name] / users
    for k in ("wall", "cpu"):
        rec[f"{k}_speedup"] = rec[f"full_copy_{k}_ms_per_user"] / rec[f"shared_{k}_ms_per_user"]
    return rec


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gamer-recipe", default="configs/gamer-tmall-cpu.yaml")
    ap.add_argument("--tiger-recipe", default="configs/tiger-beauty-cpu.yaml")
    ap.add_argument("--tmall", default="data_cache/tmall-cml", help="GAMER's prepared multi-behavior dataset")
    ap.add_argument("--beauty", default="data_cache/beauty", help="TIGER's prepared dataset")
    ap.add_argument("--gamer-set", nargs="*", default=[], help="config overrides for GAMER, section.key=value")
    ap.add_argument("--tiger-set", nargs="*", default=[], help="config overrides for TIGER")
    ap.add_argument("--models", nargs="*", default=["gamer", "tiger"], choices=["gamer", "tiger"])
    ap.add_argument("--users", type=int, default=512)
    ap.add_argument("--batch", type=int, default=128, help="users per generate call (eval.batch_size of GAMER's recipe)")
    ap.add_argument("--beam", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="synthetic users and catalogue, 24 users: seconds")
    ap.add_argument("--name", default="")
    args = ap.parse_args(argv)
    if args.quick:
        args.users, args.batch = 24, 8
    torch.set_num_threads(args.threads)
    cases = {"gamer": gamer_case, "tiger": tiger_case}
    metrics, shapes = {}, {}
    for which in args.models:
        model, batches, shapes[which], kind = cases[which](args)
        m = metrics[which] = time_paths(model, kind, batches, args.beam)
        print(f"{which}: beam {args.beam}, {m['users']} users ({shapes[which]['users_from']}), {args.batch} per call")
        for k in ("cpu", "wall"):
            print(f"  {k}: full copy {m[f'full_copy_{k}_ms_per_user']:.2f} -> shared {m[f'shared_{k}_ms_per_user']:.2f} "
                  f"ms/user ({m[f'{k}_speedup']:.2f}x)")
        print(f"  identical lists for {m['users_with_identical_lists']}/{m['users']} users, max rank-wise score "
              f"difference {m['max_rankwise_score_difference']:.2e} (scores up to {m['max_abs_score']:.1f} in size)")
    record = {"dataset": "synthetic" if args.quick else {"gamer": args.tmall, "tiger": args.beauty},
              "model": "+".join(args.models), "recipe": {w: shapes[w]["recipe"] for w in args.models},
              "seeds": [args.seed],
              "protocol": {"threads": args.threads, "beam": args.beam, "batch": args.batch, "constrained": True,
                           "weights": f"random N(0, {WEIGHT_STD}^2)", "sids": "random 3 x 256 + collision level",
                           "order": "interleaved per batch", "quick": args.quick, "cases": shapes},
              "metrics": metrics}
    print(f"wrote {write_result(args.name or ('beam_decode__quick' if args.quick else 'beam_decode'), record)}")
    return record


if __name__ == "__main__":
    main()
