"""The recipe sections a run is made of (``data:``, ``objective:``, ``train:``, ``eval:``, ``ranking:``, ``sid:``,
``generator:``): dataclasses whose defaults are working settings and whose field comments are the config
reference's text. :mod:`genrec.config` assembles them into a :class:`~genrec.config.RunConfig` and loads YAML."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

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
    # sequences of similar length share a batch (less padding); a batch's loss is the mean over its targets, so this
    # also gives short histories' targets more weight than random batches do (docs/models/sasrec.md, RecTools)
    length_bucketing: bool = True
    # what a step's summed loss is divided by: ``batch`` = its own number of targets (each batch weighs the same);
    # ``epoch_mean`` = the mean number of targets per batch over an epoch (each target weighs the same, as with
    # random batches, while length bucketing keeps its speed); retrievers only
    loss_denominator: str = "batch"
    # retrievers (sasrec, hstu) and rankers (hstu_ranker, mtgr; hpgr with pgsa=false or PGSA's gathered all rows,
    # its stage-1 session encoder too): the same batches computed on packed tokens, attention per group of similar
    # lengths (no padding in the token-wise layers, under 5% in attention; a ranker's candidates keep their mask,
    # and its evaluation packs too); equal to the padded path up to float rounding, dropout masks drawn in the
    # packed shape (BENCHMARKS.md 13)
    packed: bool = False
    # packed attention at long histories: MB of one head's fp32 scores per length group; groups are cut to fit and
    # their attention is recomputed in the backward pass instead of stored (genrec.nn.jagged), so a dense ranker at
    # N = 2,048 trains in a few GB; 0 = off (every group's scores kept, as before)
    attention_budget_mb: float = 0.0
    num_threads: int = 0  # torch intra-op threads; 0 = leave torch's default
    progress: bool = True  # progress bar / plain progress lines (the per-epoch lines stay)
    tensorboard: bool = True  # also log to RUN_DIR/tb/ (metrics.jsonl is always written)
    # seconds between plain progress lines while an epoch runs when standard error is not a terminal (a log file,
    # a pipe, CI); 0 = the per-epoch lines only. On a terminal train.progress shows a bar instead.
    progress_interval: float = 60.0
    # the learning rate of retrievers and rankers over the run: constant, or cosine (linear warmup over
    # warmup_ratio of the planned steps, train.epochs x batches per epoch, then cosine decay to 0 at the last one);
    # generators and GAMER keep their own schedules (generator:, multibehavior:)
    lr_schedule: str = "constant"
    warmup_ratio: float = 0.0  # lr_schedule=cosine: share of the planned steps spent warming up linearly
    # parameter-name prefix -> learning-rate multiplier, e.g. {item_emb: 0.1}: a pre-trained item table fine-tuned
    # gently (HPGR spec 5.3(c)); retrievers and rankers
    lr_scales: dict[str, float] = field(default_factory=dict)
    lr_scale_epochs: int = 0  # epochs the lr_scales hold, then every parameter takes the full rate; 0 = all

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
    # seeded subsets for a machine that cannot afford every impression (0 = all): a fixed sample of the training
    # impressions and one of each of validation and test, the same for every model and seed (stamped in results)
    train_sample: int = 0
    eval_sample: int = 0


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
    train_last: int = 0  # 0 = train on every prefix (TIGER); N = each user's N most recent training targets only
    test_other_decoding: bool = True  # also decode the test split the other way (free vs constrained) and record it
    # multi-behavior evaluation (GAMER and its generator baselines): also score the user's N most recent distinct
    # history items (inside the candidates) exactly and merge them into the beam's list; 0 = the beam alone
    rescore_history: int = 0
