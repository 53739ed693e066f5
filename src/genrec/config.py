"""Run configuration: dataclasses with working defaults, YAML files that override them, and
``section.key=value`` command-line overrides.

Unknown keys are errors (with a suggestion), never silently ignored: a typo in a recipe must not
train a different model than the one the user asked for.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from genrec.config_checks import check_ranges
from genrec.data.multibehavior_config import MultiBehaviorConfig  # a recipe section kept beside its data
from genrec.errors import ConfigError


@dataclass
class DataConfig:
    path: str = ""  # a prepared dataset folder; empty = the bundled synthetic generator
    split: str = "leave_one_out"  # leave_one_out | temporal
    max_len: int = 50  # history window fed to the model
    valid_frac: float = 0.1  # temporal split only
    test_frac: float = 0.1  # temporal split only
    synthetic_users: int = 1000  # used when path is empty
    synthetic_items: int = 500  # used when path is empty
    synthetic_seed: int = 0  # seed of the synthetic generator


@dataclass
class ObjectiveConfig:
    name: str = "sampled_softmax"  # sampled_softmax | full_softmax | bce
    num_negatives: int = 128  # sampled_softmax: uniform negatives per batch (or per position)
    temperature: float = 0.05  # retriever logits are divided by it (all three objectives)
    shared_negatives: bool = True  # one negative set per batch (a matmul) instead of per position (a gather)
    history_negatives: bool = False  # sampled_softmax: the position's own earlier items join its negatives


@dataclass
class OptimConfig:
    """The optimiser knobs (AdamW, ``genrec.nn.optim``) shared by every section that trains: ``train:``,
    ``pretrain:`` (HPGR stage 1) and ``rerank:``, so ``lr`` and its kin mean the same thing everywhere."""

    lr: float = 1e-3  # AdamW learning rate (the peak, under a schedule)
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    betas: tuple[float, float] = (0.9, 0.98)  # AdamW moment decays
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    # torch's fused AdamW kernel: 1.16x / 1.22x faster SASRec / HSTU Beauty steps on a CPU (BENCHMARKS.md 13),
    # but not bit-identical to the default (for-each) update, so off unless a recipe asks
    fused: bool = False


def optim_knobs(section: Any) -> dict[str, Any]:
    """The :class:`OptimConfig` knobs of any training section, to hand them on (e.g. into a TrainConfig)."""
    return {f.name: getattr(section, f.name) for f in fields(OptimConfig)}


PRECISIONS = ("auto", "fp32", "bf16")  # train.precision (resolved per device in genrec.nn.precision)


@dataclass
class TrainConfig(OptimConfig):
    """The training loop's knobs. ``precision``: ``auto`` = bf16 autocast on CUDA when ``bf16`` (the default),
    fp32 on the CPU, as genrec always trained; ``bf16`` = autocast on CUDA and on CPUs with native bf16 (fp32
    with a log line elsewhere); ``fp32`` = never. ``bf16: false`` keeps meaning fp32 everywhere, so it cannot be
    combined with ``precision: bf16``."""

    epochs: int = 100  # passes over the training data (early stopping may end sooner)
    batch_size: int = 128  # sequences per step
    seed: int = 42  # initialisation, batch order, negatives and dropout
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    bf16: bool = True  # under precision auto: autocast to bf16 on CUDA only; false = fp32 everywhere
    precision: str = "auto"  # auto | fp32 | bf16 (see the class doc)
    eval_every: int = 1  # epochs between validation runs
    patience: int = 10  # validation runs without improvement before stopping; 0 = never stop early
    early_stop_metric: str = "auto"  # auto = ndcg@10 for retrievers and generators, auc for rankers
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints; 0 = at epoch ends only
    max_steps: int = 0  # stop after this many optimizer steps (0 = no limit); a later run resumes
    # stop this call after this many seconds of training (0 = no limit) with a checkpoint a later call resumes
    # exactly: a run longer than one session or one short GPU loan is the same command, repeated
    max_seconds: float = 0.0
    length_bucketing: bool = True  # sequences of similar length share a batch (less padding)
    num_threads: int = 0  # torch intra-op threads; 0 = leave torch's default
    progress: bool = True  # progress bar / plain progress lines (the per-epoch lines stay)
    tensorboard: bool = True  # also log to RUN_DIR/tb/ (metrics.jsonl is always written)
    # seconds between plain progress lines while an epoch runs when standard error is not a terminal (a log file,
    # a pipe, CI); 0 = the per-epoch lines only. On a terminal train.progress shows a bar instead.
    progress_interval: float = 60.0

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"train.precision: '{self.precision}' is not one of {', '.join(PRECISIONS)}")
        if self.precision == "bf16" and not self.bf16:
            raise ConfigError("train.precision=bf16 contradicts train.bf16=false (fp32 everywhere): drop one of them")


@dataclass
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: [1, 5, 10, 20, 50, 200])  # cut-offs K of the @K metrics
    exclude_history: bool = True  # remove the user's earlier items from the ranking (as HSTU does)
    batch_size: int = 256  # users scored per evaluation batch
    # metric families computed and recorded (genrec.eval.metrics: hr (alias hit), recall, ndcg, mrr, invalid_rate,
    # auc, gauc, logloss); empty = every metric of the run's kind. train.early_stop_metric must be among them
    # (checked when the trainer starts).
    metrics: list[str] = field(default_factory=list)


@dataclass
class RankingConfig:
    """The ranking (CTR) track: how impressions and labels are derived, and the temporal split (spec §6.1)."""

    labels: str = "auto"  # auto | ratings | behaviors (auto: behaviors when the log has them, else ratings)
    rating_threshold: float = 4.0  # ratings: label = rating >= threshold
    positive_behaviors: list[str] = field(default_factory=lambda: ["fav", "cart", "buy"])  # behaviors logs
    window: str = "day"  # behaviors: a pv is positive if a positive behavior follows in the same day | session | horizon (within horizon_hours)
    session_gap: int = 1800  # seconds, when window = session
    impression_behaviors: list[str] | None = None  # window=horizon; None: every behavior not in positive_behaviors
    horizon_hours: float | None = None  # window=horizon; None: 72 (impressions whose horizon passes the log's end drop)
    min_history: int = 1  # impressions with fewer earlier events are dropped
    valid_frac: float = 0.1  # validation = the last 10% of the training period
    test_frac: float = 0.1  # test = the last 10% of impressions
    eval_batch_size: int = 1024  # impressions scored per evaluation batch


@dataclass
class SIDConfig:
    """Where a generator's semantic ids come from: a saved table, or built from item embeddings."""

    table: str = ""  # a SID table folder written by `genrec sid build`; empty = build into the run folder
    embeddings: str = "text"  # text | cf | file | cooccurrence (leave-one-out training sessions + categories)
    source_run: str = ""  # cf: a trained genrec run folder whose item embedding table is quantized
    embeddings_file: str = ""  # file: a .npy array (num_items, D) for items 1..num_items
    # text: item columns joined into the text that is embedded (those the items table has)
    text_fields: list[str] = field(default_factory=lambda: ["title", "brand", "categories", "genres", "price"])
    quantizer: str = "rqvae"  # rqvae | rqkmeans
    levels: int = 3  # codes per item (quantizer levels), before a collision code is added
    codebook_size: int = 256  # codes per level
    first_codebook_size: int = 0  # level-1 codes when different (GLASS codebook resizing); 0 = codebook_size
    rqvae_epochs: int = 200  # rqvae: training epochs of the quantizer
    seed: int = 0  # seed of the quantizer (and of the co-occurrence embeddings)
    cache_dir: str = "data_cache/embeddings"  # text embeddings are cached here by text fingerprint


@dataclass
class GeneratorConfig:
    """Generator-only training and decoding knobs (TIGER, GAMER, GLASS)."""

    warmup_steps: int = 10_000  # constant lr up to here, then lr * sqrt(warmup_steps / step) (TIGER §4)
    linear_warmup_steps: int = 0  # optional linear ramp from 0 at the very start (not in the paper)
    beam_size: int = 20  # validation/test beam width = the longest ranked list (spec A-T3)
    constrained: bool = True  # trie-constrained decoding for validation and test
    valid_max_queries: int = 0  # 0 = every validation query; else a fixed seeded subset (for slow machines)
    test_other_decoding: bool = True  # also decode the test split the other way (free vs constrained) and record it


@dataclass
class RunConfig:
    model: dict[str, Any] = field(default_factory=lambda: {"name": "sasrec"})  # name + the model's keys
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ranking: RankingConfig = field(default_factory=RankingConfig)
    sid: SIDConfig = field(default_factory=SIDConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    multibehavior: MultiBehaviorConfig = field(default_factory=MultiBehaviorConfig)
    pretrain: dict[str, Any] = field(default_factory=dict)  # HPGR stage 1 (genrec.train.pretrain.PretrainConfig)
    stages: list[str] = field(default_factory=list)  # e.g. [pretrain, finetune]; empty = the model's own stage
    source: str = ""  # where the recipe's numbers come from

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["train"]["betas"] = list(self.train.betas)
        return d


STAGES = ("pretrain", "finetune")

_SECTIONS = {"data": DataConfig, "objective": ObjectiveConfig, "train": TrainConfig, "eval": EvalConfig,
             "ranking": RankingConfig, "sid": SIDConfig, "generator": GeneratorConfig,
             "multibehavior": MultiBehaviorConfig}


def _suggest(key: str, options: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(key, options, n=1)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else f" (known: {', '.join(sorted(options))})"


def _coerce(value: Any, target_type: Any, where: str) -> Any:
    t = target_type if isinstance(target_type, str) else getattr(target_type, "__name__", str(target_type))
    t = str(t)
    if t.endswith(" | None"):  # an optional key: unset (as a run record writes it back), or of the type before
        if value is None:
            return None
        t = t.removesuffix(" | None")
    try:
        if t in ("int",) and not isinstance(value, bool):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if t == "float":
            return float(value)
        if t == "bool":
            if isinstance(value, bool):
                return value
            raise ValueError
        if t == "str":
            return str(value)
        if t.startswith("tuple"):
            return tuple(float(v) for v in value)
        if t.startswith("list[int]"):
            return [int(v) for v in value]
        if t.startswith("list[str]"):
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            return [str(v) for v in value]
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected {t}, got {value!r}") from None
    return value


def dataclass_from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build ``cls`` from ``data``; unknown keys and wrongly typed values raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"unknown config key '{where}.{key}'" + _suggest(key, list(known), f"{where}."))
        kwargs[key] = _coerce(value, known[key].type, f"{where}.{key}")
    return cls(**kwargs)


def config_from_dict(raw: dict[str, Any], where: str = "config") -> RunConfig:
    """A :class:`RunConfig` from a recipe mapping (sections left out keep their defaults); an unknown section or
    key, a wrongly typed value or one out of range raises :class:`~genrec.errors.ConfigError` naming it."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: top level must be a mapping")
    allowed = {"model", "data", "objective", "train", "eval", "ranking", "sid", "generator", "multibehavior",
               "pretrain", "stages", "source"}
    for key in raw:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown section '{key}'" + _suggest(key, list(allowed)))
    cfg = RunConfig()
    if "model" in raw:
        if not isinstance(raw["model"], dict):
            raise ConfigError(f"{where}: 'model' must be a mapping (name: ..., plus the model's keys)")
        cfg.model = {"name": "sasrec", **raw["model"]}
    for name, cls in _SECTIONS.items():
        if name in raw:
            setattr(cfg, name, dataclass_from_dict(cls, raw[name] or {}, name))
    if "pretrain" in raw:
        if not isinstance(raw["pretrain"] or {}, dict):
            raise ConfigError(f"{where}: 'pretrain' must be a mapping of HPGR stage-1 settings")
        cfg.pretrain = dict(raw["pretrain"] or {})
    if "stages" in raw:
        stages = raw["stages"] or []
        stages = [stages] if isinstance(stages, str) else stages
        if not isinstance(stages, list) or any(s not in STAGES for s in stages):
            raise ConfigError(f"{where}: stages {stages!r}: each must be one of {list(STAGES)}")
        cfg.stages = list(stages)
    if "source" in raw:
        cfg.source = str(raw["source"])
    check_ranges(cfg, where)
    return cfg


def _deep_merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """``child`` over ``base``: mappings merge key by key, anything else (lists included) is replaced."""
    out = dict(base)
    for k, v in child.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a recipe. ``extends: OTHER.yaml`` (relative to the recipe's folder) starts from OTHER and merges
    this file's keys over it, section by section, so an ablation recipe states only what it changes."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{p}: invalid YAML{at}") from None
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping of sections (model:, data:, train:, ...), "
                          f"not a {type(data).__name__}")
    if "extends" not in data:
        return data
    data = dict(data)
    parent = data.pop("extends")
    if not isinstance(parent, str) or not parent:
        raise ConfigError(f"{p}: 'extends' must be the path of another recipe")
    ppath = (p.parent / parent).resolve()
    if ppath in _seen or ppath == p.resolve():
        raise ConfigError(f"{p}: 'extends' forms a cycle through {ppath.name}")
    base = load_yaml(ppath, (*_seen, p.resolve()))
    if not isinstance(base, dict):
        raise ConfigError(f"{ppath}: top level must be a mapping")
    return _deep_merge(base, data)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (values parsed as YAML) to a raw config mapping."""
    raw = dict(raw)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected section.key=value")
        path, value = item.split("=", 1)
        parts = path.strip().split(".")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        if parts == ["stages"] or parts == ["source"]:
            raw[parts[0]] = parsed
            continue
        if len(parts) < 2 or (len(parts) > 2 and parts[0] not in ("model", "pretrain")):
            raise ConfigError(f"override '{item}': expected section.key=value (e.g. train.lr=0.001)")
        node = dict(raw.get(parts[0]) or {})
        raw[parts[0]] = node
        for part in parts[1:-1]:  # nested keys (pretrain.sem.d_model=64)
            child = dict(node.get(part) or {})
            node[part] = child
            node = child
        node[parts[-1]] = parsed
    return raw


def with_ablation(raw: dict[str, Any], ablation: str | Path) -> dict[str, Any]:
    """``raw`` with the keys an ablation recipe states itself (not its ``extends`` or ``source``) merged over it:
    the same change applied to another size of the model (e.g. a CPU-budget recipe)."""
    p = Path(ablation)
    if not p.exists():
        raise ConfigError(f"{p}: ablation recipe not found")
    try:
        own = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError:
        raise ConfigError(f"{p}: invalid YAML") from None
    if not isinstance(own, dict):
        raise ConfigError(f"{p}: top level must be a mapping")
    return _deep_merge(raw, {k: v for k, v in own.items() if k not in ("extends", "source")})


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                ablation: str | Path | list[str | Path] | None = None) -> RunConfig:
    """A recipe, then the own keys of each ``ablation`` recipe in order, then ``section.key=value`` overrides."""
    raw = load_yaml(path) if path else {}
    for abl in ([ablation] if isinstance(ablation, (str, Path)) else ablation or []):
        raw = with_ablation(raw, abl)
    raw = apply_overrides(raw, overrides or [])
    return config_from_dict(raw, str(path) if path else "config")


# The bundled recipes: package data (``genrec/configs``, in a source checkout a link to the top-level ``configs/``
# folder, copied into the wheel), so an installed genrec finds them too.
RECIPES_DIR = Path(str(importlib.resources.files("genrec") / "configs"))


def recipe_names() -> list[str]:
    """Names of the recipes in :data:`RECIPES_DIR` (``genrec train NAME``), sorted; empty without the folder."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")) if RECIPES_DIR.is_dir() else []


def resolve_recipe(name: str | None) -> str | None:
    """A recipe argument -> a YAML path: an existing path as given, else ``configs/NAME.yaml``; None stays None."""
    if name is None:
        return None
    p = Path(name)
    if p.exists():
        return str(p)
    cand = RECIPES_DIR / f"{name}.yaml"
    if cand.exists():
        return str(cand)
    raise ConfigError(f"config '{name}' not found (a YAML path, or one of: {', '.join(recipe_names())})")


def replace(cfg: Any, **kw: Any) -> Any:
    return dataclasses.replace(cfg, **kw)


def early_stop_metric(cfg: RunConfig, default: str) -> str:
    """``train.early_stop_metric``, with ``auto`` resolved to the trainer's default (ndcg@10 or auc)."""
    m = cfg.train.early_stop_metric
    return default if m in ("", "auto") else m
