"""The arithmetic a training step runs in (``train.precision``), resolved once per run for its device.

``auto`` is what genrec always did: bf16 autocast on CUDA when ``train.bf16`` (the default), fp32 on the CPU.
``bf16`` also autocasts on a CPU that multiplies bf16 natively (AVX512-BF16 or AMX, through oneDNN); elsewhere
bf16 matmuls are emulated and slower than fp32, so the run falls back to fp32 and says so in one log line.
``fp32`` never autocasts. Autocast keeps the weights, gradients and optimizer state in fp32 and only runs the
matmul-like ops in bf16 (the objectives take their softmax / BCE over ``.float()`` logits), so a checkpoint
does not depend on the precision it was trained in.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch

from genrec.config import PRECISIONS

FP32, BF16 = "fp32", "bf16"
log = logging.getLogger(__name__)
_said: set[str] = set()  # fallback lines already logged by this process (one line, not one per trainer)

__all__ = ["BF16", "FP32", "PRECISIONS", "autocast", "cpu_bf16_supported", "resolve_precision", "torch_threads"]


def cpu_bf16_supported() -> bool:
    """Whether this CPU runs bf16 matmuls in hardware: oneDNN present and AVX512-BF16 or AMX tiles reported."""
    if not torch.backends.mkldnn.is_available():
        return False
    probes = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return any(bool(p()) for p in probes if callable(p))


def resolve_precision(train: Any, device: torch.device) -> str:
    """``fp32`` or ``bf16``: what ``train.precision`` (with ``train.bf16``) means on ``device``.

    ``train`` is a :class:`~genrec.config.TrainConfig` (validated at load: ``precision: bf16`` with
    ``bf16: false`` is refused there). A ``bf16`` request the hardware cannot honour logs one line and
    gives ``fp32``.
    """
    setting = train.precision
    if setting == FP32 or not train.bf16:
        return FP32
    if setting == "auto":
        return BF16 if device.type == "cuda" else FP32
    supported = cpu_bf16_supported() if device.type == "cpu" else torch.cuda.is_bf16_supported()
    if supported:
        return BF16
    what = "this CPU has neither AVX512-BF16 nor AMX" if device.type == "cpu" else f"{device} has no native bf16"
    line = f"train.precision=bf16: {what}, so bf16 would be emulated and slower; training in fp32"
    if line not in _said:
        _said.add(line)
        log.warning(line)
    return FP32


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """bf16 autocast on ``device`` when ``precision`` is ``bf16``; a no-op context for ``fp32``."""
    if precision == BF16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


@contextmanager
def torch_threads(n: int) -> Iterator[int]:
    """Run the block on ``n`` torch threads (``n <= 0``: the process's setting), yield the count in use and
    restore the caller's setting after. Why: matmuls and sums split their reductions by thread count, so a result
    that must not depend on the machine (a SID table, an evaluation at the run's setting) pins it here."""
    before = torch.get_num_threads()
    threads = n if n > 0 else before
    if threads != before:
        torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        if threads != before:
            torch.set_num_threads(before)
