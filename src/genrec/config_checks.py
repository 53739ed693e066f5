"""The check of every config value, run when a recipe loads: each key of each section has a rule here (or is
listed in :data:`FREE_FORM`, said why), so a value that would fail deep inside torch (a negative learning rate, an
empty batch, a dropout of 1.5), silently do nothing (zero epochs, K = 0) or name a mode nobody implements is
refused with the key it came from. Types are checked by ``genrec.config.dataclass_from_dict``; this is the rest.

Why a table: ``tests/core/test_config_ranges.py`` walks every field of every section dataclass and fails when one
has neither a rule nor a place in :data:`FREE_FORM`, so a new knob cannot be added without its check; and it
feeds each rule's own ``bad`` value through the loader, so every rule is proved to refuse at load time.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, NamedTuple

from genrec.errors import ConfigError

INT64 = 2**63  # every count and seed must fit the int64 tensors and RNGs it ends up in


class Rule(NamedTuple):
    """What a value must be (for the message), the test, and one value the rule refuses (for the tests)."""

    need: str
    ok: Callable[[Any], bool]
    bad: Any


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and abs(v) < INT64


def at_least(low: float, inclusive: bool = True) -> Rule:
    """A finite number ``>= low`` (``> low`` when not ``inclusive``)."""
    return Rule(f">= {low}" if inclusive else f"> {low}",
                lambda v: _number(v) and (v >= low if inclusive else v > low), low - 1 if inclusive else low)


def fraction(need: str = "in [0, 1)") -> Rule:
    """A share of something: ``0 <= v < 1``."""
    return Rule(need, lambda v: _number(v) and 0 <= v < 1, 1.0)


def one_of(*options: str) -> Rule:
    return Rule(f"one of {', '.join(options)}", lambda v: v in options, "nonsense")


def matching(pattern: str, need: str, bad: str) -> Rule:
    return Rule(need, lambda v: isinstance(v, str) and re.fullmatch(pattern, v) is not None, bad)


def _names(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) and x.strip() for x in v) and len(set(v)) == len(v)


def optional(rule: Rule) -> Rule:
    """``rule``, or unset (None: the section's documented default applies)."""
    return Rule(f"{rule.need} (or null)", lambda v: v is None or rule.ok(v), rule.bad)


BOOL = Rule("true or false", lambda v: isinstance(v, bool), "maybe")
FINITE = Rule("a finite number", _number, float("nan"))
SEED = Rule("an integer in [0, 2**63)", lambda v: _number(v) and v >= 0, -1)
NAMES = Rule("a list of distinct, non-empty names", _names, ["a", ""])
KS = Rule("a non-empty list of cut-offs >= 1", lambda v: bool(v) and all(_number(k) and k >= 1 for k in v), [0, 10])
BETAS = Rule("two numbers in [0, 1)", lambda v: len(v) == 2 and all(_number(b) and 0 <= b < 1 for b in v), [0.9, 1.5])
DEVICE = matching(r"(auto|cpu|cuda|mps|xpu)(:\d+)?", "auto, cpu, cuda or cuda:N", "gpu")
LR_SCALES = Rule("a mapping of parameter-name prefixes to multipliers > 0",
                 lambda v: isinstance(v, dict) and all(isinstance(k, str) and k and _number(x) and x > 0
                                                       for k, x in v.items()), {"item_emb": 0})
PRECISION = one_of("auto", "fp32", "bf16")  # genrec.config.PRECISIONS (also checked by TrainConfig itself)

# section.key -> rule. The mode lists repeat names owned by higher floors (objectives, runs, sid, data splits);
# tests/core/test_config_ranges.py checks they agree with those rooms.
RULES: dict[str, Rule] = {
    "data.split": one_of("leave_one_out", "loo", "temporal"), "data.max_len": at_least(1),
    "data.valid_frac": fraction(), "data.test_frac": fraction(), "data.synthetic_users": at_least(1),
    "data.synthetic_items": at_least(1), "data.synthetic_seed": SEED,
    "objective.name": one_of("sampled_softmax", "full_softmax", "bce"), "objective.num_negatives": at_least(1),
    "objective.temperature": at_least(0, inclusive=False), "objective.shared_negatives": BOOL,
    "objective.history_negatives": BOOL,
    "train.lr": at_least(0, inclusive=False), "train.weight_decay": at_least(0), "train.betas": BETAS,
    "train.grad_clip": at_least(0), "train.fused": BOOL, "train.epochs": at_least(1), "train.batch_size": at_least(1),
    "train.seed": SEED, "train.device": DEVICE, "train.bf16": BOOL, "train.precision": PRECISION,
    "train.eval_every": at_least(1), "train.patience": at_least(0), "train.checkpoint_every": at_least(0),
    "train.max_steps": at_least(0), "train.max_seconds": at_least(0),
    "train.attention_budget_mb": at_least(0), "train.length_bucketing": BOOL,
    "train.loss_denominator": one_of("batch", "epoch_mean"),
    "train.packed": BOOL,
    "train.num_threads": at_least(0), "train.progress": BOOL, "train.tensorboard": BOOL,
    "train.progress_interval": at_least(0), "train.lr_schedule": one_of("constant", "cosine"),
    "train.warmup_ratio": fraction(), "train.lr_scales": LR_SCALES, "train.lr_scale_epochs": at_least(0),
    "eval.ks": KS, "eval.exclude_history": BOOL, "eval.batch_size": at_least(1), "eval.metrics": NAMES,
    "ranking.labels": one_of("auto", "ratings", "behaviors"), "ranking.rating_threshold": FINITE,
    "ranking.positive_behaviors": NAMES, "ranking.window": one_of("day", "session", "horizon"),
    "ranking.session_gap": at_least(0), "ranking.min_history": at_least(0), "ranking.valid_frac": fraction(),
    "ranking.test_frac": fraction(), "ranking.eval_batch_size": at_least(1), "ranking.train_sample": at_least(0),
    "ranking.eval_sample": at_least(0),
    "ranking.impression_behaviors": optional(NAMES), "ranking.horizon_hours": optional(at_least(0, inclusive=False)),
    "sid.embeddings": one_of("text", "cf", "file", "cooccurrence"), "sid.text_fields": NAMES,
    "sid.quantizer": one_of("rqvae", "rqkmeans"), "sid.levels": at_least(1), "sid.codebook_size": at_least(1),
    "sid.first_codebook_size": at_least(0), "sid.rqvae_epochs": at_least(0), "sid.seed": SEED,
    "generator.warmup_steps": at_least(0), "generator.linear_warmup_steps": at_least(0),
    "generator.beam_size": at_least(1), "generator.train_last": at_least(0), "generator.constrained": BOOL,
    "generator.valid_max_queries": at_least(0),
    "generator.test_other_decoding": BOOL, "generator.rescore_history": at_least(0),
    "multibehavior.session_gap": at_least(0), "multibehavior.behavior_order": NAMES,
    "multibehavior.min_history": at_least(0), "multibehavior.augment": at_least(0),
    "multibehavior.train_windows": one_of("last", "all"),
    "multibehavior.candidates": one_of("behavior_history", "history", "behavior", "all"),
    "multibehavior.eval_behaviors": NAMES, "multibehavior.warmup_ratio": fraction(),
    "multibehavior.early_stop": matching(r"valid_loss|[^/\s]+/[^/\s]+", "valid_loss or BEHAVIOR/METRIC", "ndcg"),
    "multibehavior.valid_max_users": at_least(0), "multibehavior.length_bucketing": BOOL,
}  # fmt: skip

# keys whose value is free-form text (a path, a name resolved later): why each has no rule here
FREE_FORM: dict[str, str] = {
    "data.path": "a dataset folder: loading it names what is wrong with it",
    "sid.table": "a SID table folder, read (and checked) when the run starts",
    "sid.source_run": "a run folder, opened (and checked) when the SID table is built",
    "sid.embeddings_file": "a .npy file, read (and checked) when the SID table is built",
    "sid.cache_dir": "a cache folder, created on first use",
    "train.early_stop_metric": "a metric key of the run's kind, checked when the trainer starts (eval.metrics)",
}


def _fail(where: str, key: str, value: Any, need: str) -> None:
    raise ConfigError(f"{where}: {key} must be {need}, got {value!r}")


def check_ranges(cfg: Any, where: str) -> None:
    """Refuse any value of a :class:`genrec.config.RunConfig` its rule refuses (one line naming the key)."""
    for key, rule in RULES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if not rule.ok(value):
            _fail(where, key, list(value) if isinstance(value, tuple) else value, rule.need)
    for section in ("data", "ranking"):
        part = getattr(cfg, section)
        if part.valid_frac + part.test_frac >= 1:
            _fail(where, f"{section}.valid_frac + {section}.test_frac", part.valid_frac + part.test_frac, "< 1")
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
