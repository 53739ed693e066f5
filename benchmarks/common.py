"""Helpers shared by the benchmark scripts: machine description, git commit, results JSON."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=RESULTS.parent).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


DEFAULT_RUNS = "runs/bench"  # every benchmark's --runs default
REPO = RESULTS.parent.parent


def shown_path(path: str | Path, runs: str | Path = DEFAULT_RUNS) -> str:
    """A path as a committed record shows it: relative to the repository when it lies inside; a run folder
    under a ``--runs`` root outside the repository as under the default root (where the same command without
    ``--runs`` puts it), so no machine-specific path lands in a record."""
    p, root = Path(path).resolve(), Path(runs).resolve()
    if p.is_relative_to(REPO):
        return str(p.relative_to(REPO))
    return str(Path(DEFAULT_RUNS) / p.relative_to(root)) if p.is_relative_to(root) else str(path)


def shown_config(config: Any, runs: str | Path = DEFAULT_RUNS) -> Any:
    """A run's config as a committed record shows it: every absolute path in it (a stage-1 artifact under the
    ``--runs`` root, say) through :func:`shown_path`."""
    if isinstance(config, dict):
        return {k: shown_config(v, runs) for k, v in config.items()}
    if isinstance(config, list):
        return [shown_config(v, runs) for v in config]
    return shown_path(config, runs) if isinstance(config, str) and config.startswith("/") else config


SCRATCH_FLAGS = ("--runs", "--work")  # folders that hold run folders or scratch files, never results


def command_line() -> str:
    """The command that wrote a record; a ``--runs`` or ``--work`` folder outside the repository is left out (it
    moves the run folders or scratch files, not the results)."""
    args, out, i = sys.argv[1:], [], 0
    while i < len(args):
        a = args[i]
        flag = next((f for f in SCRATCH_FLAGS if a == f or a.startswith(f + "=")), None)
        value = None if flag is None else a[len(flag) + 1:] if "=" in a else args[i + 1] if i + 1 < len(args) else None
        if value is not None and not Path(value).resolve().is_relative_to(REPO):
            i += 1 if "=" in a else 2
            continue
        out.append(a)
        i += 1
    return "python " + " ".join([os.path.relpath(sys.argv[0])] + out)


def ablation_suffix(recipe_stem: str, ablation_stem: str) -> str:
    """The ablation's name without the dash-separated words it shares with the recipe's, from the left.

    Whole words, so glass-ml100k-cpu + glass-ml100k-cr gives "cr" (a character-wise prefix would eat the "c").
    """
    base, abl = recipe_stem.split("-"), ablation_stem.split("-")
    n = 0
    while n < min(len(base), len(abl) - 1) and base[n] == abl[n]:
        n += 1
    return "-".join(abl[n:])


def write_result(name: str, record: dict[str, Any], command: str | None = None) -> Path:
    """``record`` with its command (default :func:`command_line`), date, commit and machine, into RESULTS."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {**record, "command": command or command_line(), "date": time.strftime("%Y-%m-%d"), "commit": commit(),
              "machine": machine()}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def matmul_flops_per_second(n: int = 1024, reps: int = 20, dtype: torch.dtype = torch.float32) -> float:
    """This machine's dense (n x n) @ (n x n) FLOP rate at ``dtype``: the median of ``reps`` warm products."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


def counted_flops(fn: Callable[[], Any]) -> int:
    """FLOPs torch's FlopCounterMode counts in one call of ``fn`` (matmuls and attention; forward + backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def median_step_seconds(step: Callable[[], Any], reps: int) -> float:
    """Median wall seconds of ``step()`` over ``reps`` calls, after one untimed warm-up call."""
    step()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_steps(trainers: dict[str, Any], steps: int, warmup: int) -> tuple[dict[str, list[float]], list[Any]]:
    """Wall and process-CPU seconds of each trainer's loop step (``_train_step``) on the same batches of epoch 0
    (the first trainer's), interleaved: the trainers in their order on even steps, reversed on odd ones. Keys
    ``NAME`` (wall) and ``cpu_NAME`` (CPU time, which leaves out waiting for a core on a shared machine); warm-up
    steps are not kept. Also returns the timed batches. A non-finite loss raises."""
    names = list(trainers)
    batches = trainers[names[0]].epoch_batches(0)
    times: dict[str, list[float]] = {k: [] for n in names for k in (n, f"cpu_{n}")}
    for i in range(warmup + steps):
        rows = batches[i % len(batches)]
        for name in names if i % 2 == 0 else names[::-1]:
            t0, c0 = time.perf_counter(), time.process_time()
            value, _ = trainers[name]._train_step(rows)
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            if value is None or value != value:
                raise FloatingPointError(f"{name} step {i}: loss {value}")
            if i >= warmup:
                times[name].append(dt)
                times[f"cpu_{name}"].append(dc)
    return times, [batches[i % len(batches)] for i in range(warmup, warmup + steps)]
