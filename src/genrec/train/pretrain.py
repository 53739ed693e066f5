"""HPGR stage 1: pre-train the item table and the SEM with session MIM, then write an artifact for stage 2.

Leakage rule (spec §6.3): pre-training sees only events strictly before the fine-tuning training
cut-off. ``pretraining_events`` applies the cut *first* and sessionises what is left, so nothing at
or after the cut (not even a session boundary) can reach the tensors fed to the model:

- ``cutoff`` an int: a global time, events with ``t < cutoff`` are kept (temporal splits: ``t_valid``;
  ranking track: the impression split's ``t_valid``);
- ``cutoff`` a :class:`Split`: each row keeps its training events ``[0, train_end)`` (leave-one-out
  keeps everything before the validation item; temporal keeps everything before ``t_valid``).

The artifact (its format: ``genrec.models.pretrained``) is a folder renamed into place; until it is complete the
same folder is stage 1's run folder (``config.json``, atomic checkpoints), so pre-training is a run of the
shared loop (:class:`~genrec.train.base.TrainerBase`): ``train.max_steps`` stops it with a checkpoint and the
next call resumes it exactly; ``pretrain.max_steps`` caps it (the artifact is then written).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genrec.config import OptimConfig, RunConfig, TrainConfig, dataclass_from_dict, optim_knobs
from genrec.data.schema import Dataset
from genrec.data.sequences import SeqBatch, UserSequences, batch_order, event_windows
from genrec.data.sessions import sessionize
from genrec.data.splits import Split
from genrec.errors import ConfigError, DataError
from genrec.models.hpgr_sem import SessionEncoder
from genrec.models.pretrained import FORMAT, write_artifact
from genrec.nn.optim import build_optimizer
from genrec.objectives.mim import MIMConfig, MIMLoss, mask_items
from genrec.runs import lock
from genrec.train import distributed as dist_utils
from genrec.train.base import CHECKPOINT_DIR, CONFIG_FILE, TrainerBase


@dataclass
class PretrainConfig(OptimConfig):
    """The ``pretrain:`` section; ``lr``, ``betas``, ``weight_decay``, ``grad_clip`` are the optimiser knobs every
    training section shares (:class:`~genrec.config.OptimConfig`)."""

    sem: SessionEncoder.Config = field(default_factory=SessionEncoder.Config)
    mim: MIMConfig = field(default_factory=MIMConfig)
    session_gap: int | None = 3600  # tau in seconds (spec §6.2: 1 h ML, 30 min Taobao/KuaiRand, 1 day Amazon)
    max_session_len: int | None = 50  # S_max
    max_len: int = 200  # most recent events per row fed to the SEM
    epochs: int = 50
    max_steps: int = 0  # 0 = no cap (tests and smoke runs set it); the artifact is written at the cap
    batch_size: int = 128
    grad_clip: float = 1.0  # 0 = off
    seed: int = 0
    probe_rows: int = 256  # rows of the fixed-mask probe loss logged before/after training
    device: str = "cpu"


def pretraining_events(
    seqs: UserSequences, cutoff: int | Split, session_gap: int | None, max_session_len: int | None
) -> UserSequences:
    """The events pre-training may see (strictly before the cut-off), freshly sessionised."""
    lengths = seqs.lengths
    if isinstance(cutoff, Split):
        keep_n = np.minimum(np.asarray(cutoff.train_end, dtype=np.int64), lengths)
        if keep_n.shape != lengths.shape:
            raise DataError(f"pretrain: split has {keep_n.shape[0]} rows, sequences have {len(seqs)}")
    else:
        before = (seqs.timestamps < int(cutoff)).astype(np.int64)  # rows are time-sorted
        keep_n = np.add.reduceat(before, seqs.offsets[:-1]) if len(before) else np.zeros(len(seqs), np.int64)
        keep_n = np.where(lengths > 0, keep_n, 0)
    idx = np.arange(len(seqs.items))
    row = np.repeat(np.arange(len(seqs)), lengths)
    keep = (idx - seqs.offsets[:-1][row]) < keep_n[row]  # (E,) the first keep_n[u] events of each row
    offsets = np.concatenate([[0], np.cumsum(keep_n)]).astype(np.int64)
    row_of = np.repeat(np.arange(len(seqs)), keep_n)  # row index: sorted even if user ids are not
    ts = seqs.timestamps[keep]
    sess = sessionize(row_of, ts, session_gap, max_session_len) if len(ts) else np.zeros(0, np.int64)
    return UserSequences(user_ids=seqs.user_ids.copy(), offsets=offsets, items=seqs.items[keep], timestamps=ts,
                         behaviors=None if seqs.behaviors is None else seqs.behaviors[keep], session_ids=sess)


def pretrain_batch(seqs: UserSequences, rows: np.ndarray, max_len: int, max_sessions: int) -> SeqBatch:
    """Padded batch of each row's most recent events: at most ``max_len`` events and ``max_sessions`` sessions.

    Trimming to whole recent sessions here (not in the model) means the masking never picks a session the
    encoder would drop.
    """
    assert seqs.session_ids is not None
    rows = np.asarray(rows, dtype=np.int64)
    end = seqs.offsets[rows + 1]
    win = event_windows(seqs.offsets[rows], end, max_len)  # the last max_len events of each row
    sid = win.take(seqs.session_ids, fill=-1)  # (B, L)
    last_sid = seqs.session_ids[np.maximum(end - 1, 0)]
    # session ids are increasing 1..S per row, so "last max_sessions sessions" = sid > last_sid - max_sessions
    in_recent = win.real & (sid > (last_sid - max_sessions)[:, None])
    first = np.where(in_recent.any(1), np.argmax(in_recent, 1), win.lengths)  # (B,) first kept slot of the window
    win = event_windows(end - win.lengths + first, end, None)  # the window cut back to those whole sessions
    n = win.lengths

    def take(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(win.take(a).astype(np.int64))

    times = take(seqs.timestamps)
    last_t = times.gather(1, torch.from_numpy(np.maximum(n - 1, 0))[:, None])[:, 0]
    return SeqBatch(items=take(seqs.items), timestamps=times, lengths=torch.from_numpy(n.astype(np.int64)),
                    query_time=last_t, session_ids=take(seqs.session_ids), user_rows=torch.from_numpy(rows))


def _events_fingerprint(seqs: UserSequences) -> str:
    h = hashlib.sha256()
    for a in (seqs.offsets, seqs.items, seqs.timestamps, seqs.session_ids):
        h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def _mim_step_loss(sem: SessionEncoder, loss_fn: MIMLoss, batch: SeqBatch, cfg: PretrainConfig,
                   gen: torch.Generator, device: torch.device, packed: bool = False) -> tuple[torch.Tensor, int]:
    """(loss sum, masked slots) of one batch; ``packed`` (``train.packed``): the SEM on packed tokens, the same
    masked events read in the same (row-major) order."""
    m = mask_items(batch.items, batch.lengths, batch.session_ids, sem.num_items, cfg.mim, gen)
    inputs = (m.items.to(device), batch.timestamps.to(device), batch.session_ids.to(device), batch.lengths.to(device))
    if packed:
        events, valid = sem.packed_events(*inputs)  # (Te, D) at the valid events, (B, N)
        pos = m.positions.to(device) & valid  # (B, N)
        picked = events[pos[valid]]  # the masked events, row-major as events[pos] of the padded output
    else:
        out = sem(*inputs)
        events, pos = out.events, m.positions.to(device) & out.event_valid  # (B, N, D), (B, N)
        picked = events[pos]
    count = int(pos.sum())
    if count == 0:
        return events.sum() * 0.0, 0
    return loss_fn(picked, m.targets.to(device)[pos], sem.item_emb.weight, gen), count


@torch.no_grad()
def probe_loss(sem: SessionEncoder, seqs: UserSequences, cfg: PretrainConfig, rows: np.ndarray,
               packed: bool = False) -> float:
    """Mean MIM loss on ``rows`` under a fixed masking (seeded), in eval mode: comparable across training
    (``packed``: the SEM on packed tokens, as the run trains)."""
    was = sem.training
    sem.eval()
    gen = torch.Generator().manual_seed(cfg.seed + 12345)
    loss_fn = MIMLoss(cfg.mim, sem.num_items)
    total, count = 0.0, 0
    device = next(sem.parameters()).device
    for i in range(0, len(rows), cfg.batch_size):
        batch = pretrain_batch(seqs, rows[i : i + cfg.batch_size], cfg.max_len, cfg.sem.max_sessions)
        loss, c = _mim_step_loss(sem, loss_fn, batch, cfg, gen, device, packed)
        total, count = total + float(loss), count + c
    sem.train(was)
    return total / max(count, 1)


def cutoff_record(cutoff: int | Split) -> dict[str, Any]:
    """How ``pretrain.json`` records a cut-off."""
    if isinstance(cutoff, Split):
        return {"kind": "split", "split": cutoff.name, "params": cutoff.params}
    return {"kind": "time", "t": int(cutoff)}


def _loop_config(cfg: PretrainConfig, loop: TrainConfig | None) -> TrainConfig:
    """Stage 1's TrainConfig: the section's own optimiser, epochs, batch and seed; the loop knobs
    (``max_steps``, ``max_seconds``, ``checkpoint_every``, progress, threads, ``packed``) of the caller's ``train:``
    section."""
    lp = loop or TrainConfig(tensorboard=False)
    return TrainConfig(**optim_knobs(cfg), epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed,
                       device=cfg.device, patience=0, bf16=False, max_steps=lp.max_steps, max_seconds=lp.max_seconds,
                       checkpoint_every=lp.checkpoint_every, progress=lp.progress, tensorboard=lp.tensorboard,
                       num_threads=lp.num_threads, progress_interval=lp.progress_interval, packed=lp.packed)


class PretrainTrainer(TrainerBase):
    """Session MIM on the pre-cut-off events, in the shared loop; the run folder is the artifact's folder.

    Under ``torchrun`` each process masks its slice of a batch with its own stream, so a multi-process stage 1
    learns the same way but not with the single-process run's very masks.
    """

    compat_keys = ("format", "config", "cutoff", "num_items", "data_fingerprint", "events_fingerprint")
    skip_empty_steps = True  # a batch without a masked slot makes no update (as stage 1 always did)
    ddp_find_unused = True

    def __init__(self, ev: UserSequences, rows: np.ndarray, cfg: PretrainConfig, num_items: int,
                 cut: dict[str, Any], data_fp: str | None, out_dir: str | Path, resume: bool = True,
                 loop: TrainConfig | None = None) -> None:
        run = RunConfig(model={"name": "hpgr_sem"}, train=_loop_config(cfg, loop), source="pretrain")
        super().__init__(run, out_dir, None, default_metric="mim_loss")
        self.pcfg, self.ev, self.rows, self.num_items, self.cut, self.data_fp = cfg, ev, rows, num_items, cut, data_fp
        self.model = SessionEncoder(cfg.sem, num_items=num_items, max_len=cfg.max_len).to(self.device)
        self.optimizer = build_optimizer(self.model.parameters(), cfg)
        self.loss_fn = MIMLoss(cfg.mim, num_items)
        self.generators["mim"] = torch.Generator().manual_seed(cfg.seed)  # masks and negatives, run-long
        self.step_budget = cfg.max_steps
        self._orders: tuple[np.random.Generator, int] | None = None
        if not resume:  # start over: drop a stopped run's record and checkpoints (not an artifact), holding the
            self._lock_run_folder()  # writer's lock first: a folder another process trains into is never emptied
            if self.main:
                shutil.rmtree(self.run_dir / CHECKPOINT_DIR, ignore_errors=True)
                (self.run_dir / CONFIG_FILE).unlink(missing_ok=True)
        dist_utils.barrier()
        held = self._lock
        try:
            self.open_run(resume)
        finally:
            if held is not None:
                lock.release(held)  # the hold taken above; open_run took its own, given back by close()
        for key, value in (("epoch_losses", []), ("mim_sum", 0.0), ("mim_count", 0)):
            self.state.setdefault(key, value)
        if "probe_initial" not in self.state:
            self.state["probe_initial"] = probe_loss(self.model, ev, cfg, rows[: cfg.probe_rows], self.cfg.train.packed)

    def run_record(self) -> dict[str, Any]:
        config = {k: v for k, v in asdict(self.pcfg).items() if k != "device"}
        return {"format": FORMAT, "config": config, "cutoff": self.cut, "num_items": self.num_items,
                "data_fingerprint": self.data_fp, "events_fingerprint": _events_fingerprint(self.ev)}

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        # one generator draws every epoch's order in turn (as stage 1 always has): replay the draws before ``epoch``
        if self._orders is None or self._orders[1] > epoch:
            self._orders = (np.random.default_rng(self.pcfg.seed), 0)
        rng, drawn = self._orders
        lengths = self.ev.lengths[self.rows]
        for _ in range(drawn, epoch):
            batch_order(lengths, self.pcfg.batch_size, rng)
        self._orders = (rng, epoch + 1)
        return batch_order(lengths, self.pcfg.batch_size, rng)

    def step_loss(self, idx: np.ndarray) -> tuple[torch.Tensor, int]:
        cfg = self.pcfg
        batch = pretrain_batch(self.ev, self.rows[idx], cfg.max_len, cfg.sem.max_sessions)
        loss, count = _mim_step_loss(self.model, self.loss_fn, batch, cfg, self.generators["mim"], self.device,
                                     self.cfg.train.packed)
        if count == 0:
            return loss, 0
        self.state["mim_sum"] += float(loss.detach())
        self.state["mim_count"] += count
        return loss, count

    def after_update(self) -> None:
        with torch.no_grad():
            self.model.item_emb.weight[0].zero_()  # the padding row stays zero

    def on_epoch_end(self, epoch: int) -> dict[str, Any]:
        """The epoch's MIM loss per masked slot, kept for ``pretrain.json``."""
        st = self.state
        total, count = st["mim_sum"], st["mim_count"]
        if self.world > 1:
            both = dist_utils.all_reduce_sum(torch.tensor([total, count], dtype=torch.float64, device=self.device))
            total, count = float(both[0]), int(both[1])
        st["epoch_losses"].append(total / max(count, 1))
        st["mim_sum"], st["mim_count"] = 0.0, 0
        return {"mim_loss": st["epoch_losses"][-1]}

    def write(self) -> None:
        """The artifact, from the finished run (main process; the others wait for it)."""
        st, ev = self.state, self.ev
        if self.main:
            final = probe_loss(self.model, ev, self.pcfg, self.rows[: self.pcfg.probe_rows], self.cfg.train.packed)
            meta = {
                "format": FORMAT,
                "config": asdict(self.pcfg),
                "num_items": self.num_items,
                "d_model": self.pcfg.sem.d_model,
                "cutoff": self.cut,
                "data_fingerprint": self.data_fp,
                "events_fingerprint": _events_fingerprint(ev),
                "num_events": int(ev.lengths.sum()),
                "num_users": int((ev.lengths > 0).sum()),
                "num_sessions": int(len(np.unique(ev.session_ids))),
                "steps": st["global_step"],
                "epoch_losses": st["epoch_losses"],
                "probe_loss": {"initial": st["probe_initial"], "final": final},
                "seconds": round(float(st.get("train_seconds") or 0.0), 2),
                "packed": bool(self.cfg.train.packed),  # provenance: packed and padded agree up to rounding/dropout
            }
            write_artifact(self.run_dir, self.model, meta)
        dist_utils.barrier()


def pretrain_run(data: Dataset | UserSequences, cutoff_time: int | Split, cfg: PretrainConfig,
                 out_dir: str | Path, num_items: int | None = None, resume: bool = True,
                 loop: TrainConfig | None = None) -> dict[str, Any]:
    """Train SEM + item table with session MIM on pre-cut-off events; write the artifact to ``out_dir``.

    Returns the loop summary: when it is not ``finished`` (``loop.max_steps`` stopped it) ``out_dir`` holds
    the run's checkpoints and no artifact yet, and the next call resumes exactly. ``num_items`` sizes the item
    table for bare sequences (default: the largest id seen), so stage 2's catalogue can include items that only
    appear after the cut-off.
    """
    cfg.mim.check()
    if isinstance(data, Dataset):
        seqs, n_items, data_fp = UserSequences.from_interactions(data.interactions), data.num_items, data.fingerprint
    else:
        seqs, n_items, data_fp = data, int(data.items.max()) if len(data.items) else 0, None
    if num_items is not None:
        if num_items < n_items:
            raise ConfigError(f"pretrain: num_items={num_items} is below the largest item id {n_items}")
        n_items = num_items
    if n_items < 1:
        raise DataError("pretrain: no items")
    ev = pretraining_events(seqs, cutoff_time, cfg.session_gap, cfg.max_session_len)
    rows = np.flatnonzero(ev.lengths >= 2)
    if len(rows) == 0:
        raise DataError("pretrain: no user has two events before the cut-off")
    cut = json.loads(json.dumps(cutoff_record(cutoff_time), default=str))
    trainer = PretrainTrainer(ev, rows, cfg, n_items, cut, data_fp, out_dir, resume=resume, loop=loop)
    summary = trainer.fit()
    if summary["finished"]:
        trainer.write()
    return summary


def pretrain_sessions(data: Dataset | UserSequences, cutoff_time: int | Split, cfg: PretrainConfig,
                      out_dir: str | Path, num_items: int | None = None, resume: bool = True,
                      loop: TrainConfig | None = None) -> Path:
    """:func:`pretrain_run`, returning the artifact folder (complete once its ``pretrain.json`` exists)."""
    pretrain_run(data, cutoff_time, cfg, out_dir, num_items, resume, loop)
    return Path(out_dir)


__all__ = ["PretrainConfig", "PretrainTrainer", "pretrain_batch", "pretrain_run", "pretrain_sessions",
           "pretraining_events", "probe_loss"]


def parse_pretrain_config(raw: dict[str, Any] | None, where: str = "pretrain") -> PretrainConfig:
    """A run config's raw ``pretrain:`` mapping (nested ``sem:`` / ``mim:`` allowed) -> PretrainConfig.

    Unknown keys raise ConfigError like every other section, so a typo cannot pre-train another model.
    """
    if not isinstance(raw or {}, dict):
        raise ConfigError(f"{where}: expected a mapping of stage-1 settings")
    raw = dict(raw or {})
    nested = {}
    for key, cls in (("sem", SessionEncoder.Config), ("mim", MIMConfig)):
        if key in raw:
            nested[key] = dataclass_from_dict(cls, raw.pop(key) or {}, f"{where}.{key}")
    cfg = dataclass_from_dict(PretrainConfig, raw, where)
    for key, value in nested.items():
        setattr(cfg, key, value)
    for key in ("session_gap", "max_session_len"):  # int | None: the generic coercion leaves them as given
        value = getattr(cfg, key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{where}.{key}: expected an integer or null, got {value!r}")
    return cfg


__all__ += ["parse_pretrain_config"]
