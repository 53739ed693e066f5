"""TIGER's CPU-budget training step and constrained beam search: the reference path against the fast one, in one run.

Training: the recipe's model (CPU budget: d_model 128, 2 + 2 layers, 4 heads x 32, d_ff 512) and its batches (256
examples, histories of <= 20 items, length-bucketed) from the first epoch's order. Every variant starts from the
same weights with its own optimiser, and the variants take the same batches in turn (step i of each, then step
i + 1), so the machine's load falls on all of them alike. A step is what the trainer does: inputs, teacher-forced
loss, backward, optimiser update. Variants:

- ``reference``: the code as it was (fp32, ``model.kernels: reference``, torch's default AdamW);
- ``reference+bf16``: the same under ``torch.autocast("cpu", bfloat16)`` (what a ``train.precision: bf16``
  switch would do);
- ``fused``: ``model.kernels: fused`` (cheap dropout masks, fewer passes, fused AdamW), fp32;
- ``fused+bf16``: both (the fast path).

Reported: mean and median ms/step over the timed batches after the warm-up ones, and each variant's speed-up
over ``reference``; the mean is what an epoch costs (long-history batches cost several short ones).

Beam search: constrained beam 20 over a trained run's test users (``--run``, e.g. the CPU-budget TIGER run), or
over a model trained here for ``--train-steps`` fast steps; whole batches of users per call. ``per_row`` copies
each user's encoder memory for every beam and step (the original path); ``shared`` lets a user's beams read one
copy. Both must return the same items for every user, which the run checks and records.

    python benchmarks/tiger_speed.py --data data_cache/beauty --sid-table data_cache/sid/beauty-text-rqvae \\
        --run runs/bench/tiger-beauty-cpu__beauty-seed1
    python benchmarks/tiger_speed.py --quick ...   # a few steps and users: checks the script, not the machine
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_result  # noqa: E402

from genrec.config import RunConfig, load_config  # noqa: E402
from genrec.data.loading import load_data  # noqa: E402
from genrec.data.splits import EvalSamples  # noqa: E402
from genrec.eval.generation import evaluate_generator, history_matrix  # noqa: E402
from genrec.models.base import GeneratorBatch  # noqa: E402
from genrec.models.registry import build_model  # noqa: E402
from genrec.objectives import next_sid_loss  # noqa: E402
from genrec.sid.build import load_sid_table  # noqa: E402
from genrec.train.generator import GeneratorTrainer, generator_optimizer  # noqa: E402
from genrec.train.run import fit_model_to_sids  # noqa: E402

VARIANTS = {"reference": ("reference", False), "reference+bf16": ("reference", True), "fused": ("fused", False),
            "fused+bf16": ("fused", True)}
FAST = "fused+bf16"


class Variant:
    """One copy of the model with its own optimiser; ``step(rows)`` is one training step on example indices."""

    def __init__(self, trainer: GeneratorTrainer, kernels: str, bf16: bool) -> None:
        cfg = trainer.cfg
        self.model = build_model({**cfg.model, "kernels": kernels}, trainer.dataset.num_items, cfg.data.max_len)
        self.model.load_state_dict(trainer.model.state_dict())
        self.model.train()
        self.optimizer = generator_optimizer(self.model.parameters(), _with_kernels(cfg, kernels))
        self.trainer, self.bf16 = trainer, bf16

    def step(self, rows: np.ndarray) -> float:
        tr = self.trainer
        r, e = tr.examples.rows[rows], tr.examples.ends[rows]
        batch = GeneratorBatch(torch.from_numpy(history_matrix(tr.seqs, r, e, self.model.max_len)),
                               torch.from_numpy(tr.seqs.user_ids[r]),
                               torch.from_numpy(tr.seqs.items[tr.seqs.offsets[r] + e]))
        amp = torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with amp:
            loss, count = next_sid_loss(self.model.sid_logits(self.model.training_inputs(batch)))
        loss = loss * (1.0 / max(float(count), 1.0))  # the loop's scale for one process
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


def _with_kernels(cfg: RunConfig, kernels: str) -> RunConfig:
    return dataclasses.replace(cfg, model={**cfg.model, "kernels": kernels})


def build_trainer(args: argparse.Namespace) -> GeneratorTrainer:
    """The recipe's generator trainer (fresh weights, a throw-away run folder) over the given SID table."""
    over = [*args.set, f"data.path={args.data or repr('')}", "train.progress=false", "train.tensorboard=false",
            f"train.num_threads={args.threads}"]
    cfg = load_config(args.recipe, over)
    sids = load_sid_table(args.sid_table or cfg.sid.table)
    cfg.model = fit_model_to_sids(cfg.model, sids.length, max(sids.codebook_sizes))
    torch.manual_seed(cfg.train.seed)
    return GeneratorTrainer(cfg, tempfile.mkdtemp(prefix="genrec-tiger-speed-"), load_data(cfg.data), sids,
                            resume=False)


def padding_share(trainer: GeneratorTrainer, batches: list[np.ndarray]) -> float:
    """Share of encoder item slots that are padding, over ``batches`` as the trainer pads them (its own longest row)."""
    max_len = trainer.cfg.data.max_len
    lengths = [np.minimum(trainer.examples.ends[b], max_len) for b in batches]
    real = sum(int(x.sum()) for x in lengths)
    slots = sum(len(x) * int(x.max()) for x in lengths)
    return 1.0 - real / max(slots, 1)


class Clock:
    """Wall and CPU (this thread's) milliseconds: on a shared machine the CPU time is what the step itself costs."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.thread_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall = 1000 * (time.perf_counter() - self.wall)
        self.cpu = 1000 * (time.thread_time() - self.cpu)


def time_training(trainer: GeneratorTrainer, names: list[str], batches: list[np.ndarray], warmup: int
                  ) -> dict[str, Any]:
    """ms per step of each variant over ``batches`` (the first ``warmup`` not counted), interleaved per batch."""
    variants = {n: Variant(trainer, *VARIANTS[n]) for n in names}
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    losses: dict[str, list[float]] = {n: [] for n in names}
    for i, rows in enumerate(batches):
        for n, v in variants.items():
            with Clock() as c:
                losses[n].append(v.step(rows))
            if i >= warmup:
                wall[n].append(c.wall)
                cpu[n].append(c.cpu)
    out: dict[str, Any] = {}
    ref = {"wall": wall[names[0]], "cpu": cpu[names[0]]}
    for n in names:
        m: dict[str, float] = {}
        for kind, times in (("wall", wall[n]), ("cpu", cpu[n])):
            m[f"{kind}_ms_per_step_mean"] = statistics.fmean(times)
            m[f"{kind}_ms_per_step_median"] = statistics.median(times)
            m[f"{kind}_speedup_mean"] = statistics.fmean(ref[kind]) / statistics.fmean(times)
            m[f"{kind}_speedup_median"] = statistics.median(ref[kind]) / statistics.median(times)
        m["loss_last3"] = statistics.fmean(losses[n][-3:])
        out[n] = m
    return out


CATEGORIES = {"matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"),
              "casts and copies": ("aten::copy_",), "element-wise multiply": ("aten::mul", "aten::mul_")}


def profile_steps(trainer: GeneratorTrainer, names: list[str], batches: list[np.ndarray]) -> dict[str, Any]:
    """Where the CPU time of ``batches`` steps of each variant goes (torch.profiler, self time per op), by
    category, and the bound on a further speed-up if every matmul took no time (Amdahl)."""
    from torch.profiler import ProfilerActivity, profile

    out: dict[str, Any] = {}
    for n in names:
        v = Variant(trainer, *VARIANTS[n])
        v.step(batches[0])  # warm-up, not profiled
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for rows in batches[1:]:
                v.step(rows)
        avg = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in avg) or 1e-9
        shares = {c: sum(e.self_cpu_time_total for e in avg if e.key in ops) / total for c, ops in CATEGORIES.items()}
        top = sorted(avg, key=lambda e: -e.self_cpu_time_total)[:8]
        out[n] = {"shares": shares, "bound_if_matmuls_were_free": 1.0 / max(1.0 - shares["matmul"], 1e-9),
                  "top_ops": {e.key: e.self_cpu_time_total / total for e in top}, "profiled_steps": len(batches) - 1}
    return out


def test_queries(trainer: GeneratorTrainer, users: int, seed: int) -> EvalSamples:
    """``users`` test queries picked at random (sample order)."""
    test = trainer.split.test
    pick = np.sort(np.random.default_rng(seed).choice(len(test), min(users, len(test)), replace=False))
    return EvalSamples(test.rows[pick], test.hist_end[pick])


def time_beam(model: Any, trainer: GeneratorTrainer, samples: EvalSamples, batch: int, beam: int) -> dict[str, Any]:
    """Constrained beam search, ms per user: ``generate`` on batches in sample order with per-row and shared
    encoder memory, and the evaluation loop as it was (per-row, sample order) and as it is (shared, queries in
    order of history length); checks that every user gets the same items (and ranks) both ways."""
    seqs, max_len = trainer.seqs, trainer.cfg.data.max_len
    hist = history_matrix(seqs, samples.rows, samples.hist_end, max_len)
    uids = seqs.user_ids[samples.rows]
    res: dict[str, Any] = {}
    items, scores, ranks = {}, {}, {}
    for mode in ("per_row", "shared"):
        model.cfg.beam_memory = mode
        model.generate(hist[:batch], uids[:batch], beam_size=beam)  # warm-up
        with Clock() as c:
            out = [model.generate(hist[i:i + batch], uids[i:i + batch], beam_size=beam)
                   for i in range(0, len(hist), batch)]
        res[f"generate_{mode}_wall_ms_per_user"] = c.wall / len(hist)
        res[f"generate_{mode}_cpu_ms_per_user"] = c.cpu / len(hist)
        items[mode] = torch.cat([o.items for o in out])
        scores[mode] = torch.cat([o.scores for o in out])
        with Clock() as c:
            ev = evaluate_generator(model, seqs, samples, [beam], beam, batch, length_sorted=mode == "shared")
        tag = "evaluate_before" if mode == "per_row" else "evaluate_now"
        res[f"{tag}_wall_ms_per_user"] = c.wall / len(hist)
        res[f"{tag}_cpu_ms_per_user"] = c.cpu / len(hist)
        ranks[mode] = ev.ranks
    model.cfg.beam_memory = "shared"
    diff = (scores["per_row"] - scores["shared"]).abs()
    res.update({"users": len(hist),
                "users_with_identical_lists": int((items["per_row"] == items["shared"]).all(1).sum()),
                "identical_evaluation_ranks": bool(np.array_equal(ranks["per_row"], ranks["shared"])),
                "max_score_difference": float(diff[torch.isfinite(diff)].max()) if diff.numel() else 0.0})
    for kind in ("wall", "cpu"):
        res[f"generate_{kind}_speedup"] = (res[f"generate_per_row_{kind}_ms_per_user"]
                                           / res[f"generate_shared_{kind}_ms_per_user"])
        res[f"evaluate_{kind}_speedup"] = (res[f"evaluate_before_{kind}_ms_per_user"]
                                           / res[f"evaluate_now_{kind}_ms_per_user"])
    return res


def beam_model(args: argparse.Namespace, trainer: GeneratorTrainer) -> tuple[Any, str]:
    """The decoder to time: a trained run's best weights, or the trainer's model after ``--train-steps`` fast steps."""
    if args.run:
        from genrec.runs.open import open_run

        run = open_run(args.run)
        if run.sids.fingerprint != trainer.sids.fingerprint:
            raise SystemExit(f"{args.run} was trained on another SID table than --sid-table")
        return run.model, f"trained run {Path(args.run).name}"
    fast = Variant(trainer, *VARIANTS[FAST])
    batches = trainer.epoch_batches(0)
    for i in range(args.train_steps):
        fast.step(batches[i % len(batches)])
    return fast.model.eval(), f"{args.train_steps} fast training steps here"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="configs/tiger-beauty-cpu.yaml")
    ap.add_argument("--data", default="data_cache/beauty", help="a prepared dataset folder ('' = synthetic)")
    ap.add_argument("--sid-table", default="", help="a SID table file or folder (default: the recipe's sid.table)")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides, section.key=value")
    ap.add_argument("--steps", type=int, default=30, help="timed training steps per variant")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--run", default="", help="a trained run folder for the beam timing")
    ap.add_argument("--train-steps", type=int, default=300, help="without --run: fast steps before the beam timing")
    ap.add_argument("--users", type=int, default=512)
    ap.add_argument("--beam-batch", type=int, default=256, help="users per generate call")
    ap.add_argument("--beam", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", type=int, default=0, metavar="STEPS",
                    help="also profile STEPS steps of each variant: CPU time by op category (0 = no profile)")
    ap.add_argument("--quick", action="store_true", help="3 timed steps, 32 users, 5 training steps")
    ap.add_argument("--name", default="")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.users, args.beam_batch, args.train_steps = 3, 1, 32, 16, 5
    torch.set_num_threads(args.threads)
    names = ["reference", *[n for n in args.variants if n != "reference"]]
    trainer = build_trainer(args)
    order = trainer.epoch_batches(0)
    batches = [order[i % len(order)] for i in range(args.warmup + args.steps)]
    train = time_training(trainer, names, batches, args.warmup)
    pad = padding_share(trainer, order)
    for n, m in train.items():
        print(f"train {n:15s}: " + ", ".join(
            f"{kind} {m[f'{kind}_ms_per_step_mean']:7.1f} ms/step mean ({m[f'{kind}_speedup_mean']:4.2f}x), "
            f"{m[f'{kind}_ms_per_step_median']:7.1f} median ({m[f'{kind}_speedup_median']:4.2f}x)"
            for kind in ("cpu", "wall")) + f", loss {m['loss_last3']:.3f}")
    print(f"encoder padding share over the epoch's length-bucketed batches: {pad:.1%}")
    prof = profile_steps(trainer, names, batches[: args.profile + 1]) if args.profile else {}
    for n, p in prof.items():
        print(f"profile {n:15s}: " + ", ".join(f"{c} {v:.0%}" for c, v in p["shares"].items())
              + f" of the CPU time; if matmuls were free: at most {p['bound_if_matmuls_were_free']:.2f}x faster")
    model, source = beam_model(args, trainer)
    samples = test_queries(trainer, args.users, args.seed)
    beam = time_beam(model, trainer, samples, args.beam_batch, args.beam)
    print(f"beam {args.beam} constrained, {args.beam_batch} users/call, {beam['users']} test users ({source}):")
    for kind in ("cpu", "wall"):
        print(f"  {kind}: generate {beam[f'generate_per_row_{kind}_ms_per_user']:.2f} -> "
              f"{beam[f'generate_shared_{kind}_ms_per_user']:.2f} ms/user ({beam[f'generate_{kind}_speedup']:.2f}x); "
              f"evaluation {beam[f'evaluate_before_{kind}_ms_per_user']:.2f} -> "
              f"{beam[f'evaluate_now_{kind}_ms_per_user']:.2f} ms/user ({beam[f'evaluate_{kind}_speedup']:.2f}x)")
    print(f"  identical lists for {beam['users_with_identical_lists']}/{beam['users']} users, identical evaluation "
          f"ranks: {beam['identical_evaluation_ranks']}, max score difference {beam['max_score_difference']:.2e}")
    cfg = trainer.cfg
    record = {"dataset": trainer.dataset.manifest.get("name", ""), "data_fingerprint": trainer.dataset.fingerprint,
              "model": cfg.model["name"], "recipe": args.recipe, "seeds": [cfg.train.seed],
              "protocol": {"batch_size": cfg.train.batch_size, "max_len": cfg.data.max_len, "threads": args.threads,
                           "timed_steps": args.steps, "warmup_steps": args.warmup, "batches": "epoch 0 order",
                           "beam": args.beam, "beam_batch": args.beam_batch, "beam_users": beam["users"],
                           "beam_model": source, "constrained": True, "quick": args.quick},
              "metrics": {"train": train, "encoder_padding_share": pad, "beam": beam, **({"profile": prof} if prof else {})}}
    name = args.name or f"tiger_speed__{Path(args.recipe).stem}"
    print(f"wrote {write_result(name, record)}")
    return record


if __name__ == "__main__":
    main()
