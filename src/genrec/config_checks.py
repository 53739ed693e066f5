"""Range checks of a loaded recipe: every value that would otherwise fail deep inside torch (a negative learning
rate, an empty batch, a dropout of 1.5) or silently do nothing (zero epochs, K = 0) is refused when the config
loads, with the key it came from. Types are checked by ``genrec.config.dataclass_from_dict``; this is the rest."""

from __future__ import annotations

from typing import Any

from genrec.errors import ConfigError

# (section, key, lowest allowed, whether the bound itself is allowed)
BOUNDS: tuple[tuple[str, str, float, bool], ...] = (
    ("train", "epochs", 1, True), ("train", "batch_size", 1, True), ("train", "lr", 0, False),
    ("train", "weight_decay", 0, True), ("train", "grad_clip", 0, True), ("train", "eval_every", 1, True),
    ("train", "patience", 0, True), ("train", "max_steps", 0, True), ("train", "max_seconds", 0, True),
    ("train", "checkpoint_every", 0, True), ("train", "num_threads", 0, True),
    ("train", "progress_interval", 0, True), ("data", "max_len", 1, True), ("eval", "batch_size", 1, True),
    ("objective", "num_negatives", 1, True), ("objective", "temperature", 0, False),
)  # fmt: skip


def _fail(where: str, key: str, value: Any, need: str) -> None:
    raise ConfigError(f"{where}: {key} must be {need}, got {value!r}")


def check_ranges(cfg: Any, where: str) -> None:
    """Refuse out-of-range values of a :class:`genrec.config.RunConfig` (one line naming the key)."""
    for section, key, low, inclusive in BOUNDS:
        value = getattr(getattr(cfg, section), key)
        if value < low or (value == low and not inclusive):
            _fail(where, f"{section}.{key}", value, f">= {low}" if inclusive else f"> {low}")
    if any(not 0 <= b < 1 for b in cfg.train.betas):
        _fail(where, "train.betas", list(cfg.train.betas), "two numbers in [0, 1)")
    if not cfg.eval.ks or any(k < 1 for k in cfg.eval.ks):
        _fail(where, "eval.ks", cfg.eval.ks, "a non-empty list of cut-offs >= 1")
    check_model(cfg.model, where)


def check_model(model: dict[str, Any], where: str) -> None:
    """Model keys every architecture shares a meaning for: dropouts are probabilities, sizes are positive, and
    heads split the width evenly unless the recipe gives per-head widths."""
    for key, value in model.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if key.endswith("dropout") and not 0 <= value < 1:
            _fail(where, f"model.{key}", value, "a probability in [0, 1)")
        if (key.startswith(("d_", "num_")) or key.endswith("_dim")) and value < 0:
            _fail(where, f"model.{key}", value, ">= 0")
    d, h = model.get("d_model"), model.get("num_heads")
    per_head = any(model.get(k) for k in ("dqk", "dv", "head_dim"))
    if isinstance(d, int) and isinstance(h, int) and h > 0 and d % h and not per_head:
        _fail(where, "model.num_heads", h, f"a divisor of model.d_model ({d})")
    if isinstance(h, int) and h < 1 and "num_heads" in model:
        _fail(where, "model.num_heads", h, ">= 1")
