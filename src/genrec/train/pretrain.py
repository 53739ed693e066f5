"""HPGR stage 1: pre-train the item table and the SEM with session MIM, then write an artifact for stage 2.

Leakage rule (spec §6.3): pre-training sees only events strictly before the fine-tuning training
cut-off. ``pretraining_events`` applies the cut *first* and sessionises what is left, so nothing at
or after the cut (not even a session boundary) can reach the tensors fed to the model:

- ``cutoff`` an int: a global time, events with ``t < cutoff`` are kept (temporal splits: ``t_valid``;
  ranking track: the impression split's ``t_valid``);
- ``cutoff`` a :class:`Split`: each row keeps its training events ``[0, train_end)`` (leave-one-out
  keeps everything before the validation item; temporal keeps everything before ``t_valid``).

The artifact is a folder written under a temporary name and renamed into place: ``item_table.safetensors``
(``item_emb`` (I+1, D)), ``sem.safetensors`` (the SEM without its item table) and ``pretrain.json``
(configs, cut-off, data fingerprint, events used, losses). ``load_pretrained`` rebuilds the SEM from the
JSON, checks every tensor's shape and never unpickles.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from genrec.config import dataclass_from_dict
from genrec.data.schema import Dataset
from genrec.data.sequences import SeqBatch, UserSequences, batch_order
from genrec.data.sessions import sessionize
from genrec.data.splits import Split
from genrec.errors import CheckpointError, ConfigError, DataError
from genrec.models.hpgr_sem import SessionEncoder
from genrec.objectives.mim import MIMConfig, MIMLoss, mask_items

ITEM_TABLE_FILE = "item_table.safetensors"
SEM_FILE = "sem.safetensors"
META_FILE = "pretrain.json"
ITEM_KEY = "item_emb"
FORMAT = "hpgr-pretrain/1"


@dataclass
class PretrainConfig:
    sem: SessionEncoder.Config = field(default_factory=SessionEncoder.Config)
    mim: MIMConfig = field(default_factory=MIMConfig)
    session_gap: int | None = 3600  # tau in seconds (spec §6.2: 1 h ML, 30 min Taobao/KuaiRand, 1 day Amazon)
    max_session_len: int | None = 50  # S_max
    max_len: int = 200  # most recent events per row fed to the SEM
    epochs: int = 50
    max_steps: int = 0  # 0 = no cap (tests and smoke runs set it)
    batch_size: int = 128
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # 0 = off
    seed: int = 0
    probe_rows: int = 256  # rows of the fixed-mask probe loss logged before/after training
    device: str = "cpu"


@dataclass
class Pretrained:
    """A loaded stage-1 artifact."""

    item_table: torch.Tensor  # (I+1, D), row 0 = padding
    sem: SessionEncoder  # carries the same item table in ``sem.item_emb``
    meta: dict[str, Any]


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
    start = np.maximum(seqs.offsets[rows], end - max_len)  # (B,)
    n = end - start
    L = max(1, int(n.max()) if len(n) else 1)
    ar = np.arange(L)
    # window of the last max_len events, then keep only the last max_sessions sessions of it
    win_valid = ar[None, :] < n[:, None]
    pos = np.where(win_valid, start[:, None] + ar[None, :], 0)  # (B, L)
    sid = np.where(win_valid, seqs.session_ids[pos], -1)
    last_sid = seqs.session_ids[np.maximum(end - 1, 0)]
    # session ids are increasing 1..S per row, so "last max_sessions sessions" = sid > last_sid - max_sessions
    in_recent = win_valid & (sid > (last_sid - max_sessions)[:, None])
    first = np.where(in_recent.any(1), np.argmax(in_recent, 1), n)  # (B,) first kept slot of the window
    start = start + first
    n = end - start
    L = max(1, int(n.max()) if len(n) else 1)
    ar = np.arange(L)
    valid = ar[None, :] < n[:, None]
    pos = np.where(valid, start[:, None] + ar[None, :], 0)

    def take(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.where(valid, a[pos], 0).astype(np.int64))

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
                   gen: torch.Generator, device: torch.device) -> tuple[torch.Tensor, int]:
    m = mask_items(batch.items, batch.lengths, batch.session_ids, sem.num_items, cfg.mim, gen)
    out = sem(m.items.to(device), batch.timestamps.to(device), batch.session_ids.to(device),
              batch.lengths.to(device))
    pos = m.positions.to(device) & out.event_valid  # (B, N)
    count = int(pos.sum())
    if count == 0:
        return out.events.sum() * 0.0, 0
    return loss_fn(out.events[pos], m.targets.to(device)[pos], sem.item_emb.weight, gen), count


@torch.no_grad()
def probe_loss(sem: SessionEncoder, seqs: UserSequences, cfg: PretrainConfig, rows: np.ndarray) -> float:
    """Mean MIM loss on ``rows`` under a fixed masking (seeded), in eval mode: comparable across training."""
    was = sem.training
    sem.eval()
    gen = torch.Generator().manual_seed(cfg.seed + 12345)
    loss_fn = MIMLoss(cfg.mim, sem.num_items)
    total, count = 0.0, 0
    device = next(sem.parameters()).device
    for i in range(0, len(rows), cfg.batch_size):
        batch = pretrain_batch(seqs, rows[i : i + cfg.batch_size], cfg.max_len, cfg.sem.max_sessions)
        loss, c = _mim_step_loss(sem, loss_fn, batch, cfg, gen, device)
        total, count = total + float(loss), count + c
    sem.train(was)
    return total / max(count, 1)


def _write_artifact(out_dir: Path, sem: SessionEncoder, meta: dict[str, Any]) -> None:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".tmp-{out_dir.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    state = {k: v.detach().cpu().contiguous() for k, v in sem.state_dict().items()}
    save_file({ITEM_KEY: state.pop("item_emb.weight")}, str(tmp / ITEM_TABLE_FILE))
    save_file(state, str(tmp / SEM_FILE))
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1, default=str))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    old = None
    if out_dir.exists():  # move the old artifact aside first: a crash leaves one complete folder
        old = out_dir.parent / f".old-{out_dir.name}-{os.getpid()}"
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def pretrain_sessions(data: Dataset | UserSequences, cutoff_time: int | Split, cfg: PretrainConfig,
                      out_dir: str | Path, num_items: int | None = None) -> Path:
    """Train SEM + item table with session MIM on pre-cut-off events; write the artifact to ``out_dir``.

    ``num_items`` sizes the item table for bare sequences (default: the largest id seen), so stage 2's
    catalogue can include items that only appear after the cut-off.
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
    num_items = n_items
    if num_items < 1:
        raise DataError("pretrain: no items")
    ev = pretraining_events(seqs, cutoff_time, cfg.session_gap, cfg.max_session_len)
    rows = np.flatnonzero(ev.lengths >= 2)
    if len(rows) == 0:
        raise DataError("pretrain: no user has two events before the cut-off")
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    sem = SessionEncoder(cfg.sem, num_items=num_items, max_len=cfg.max_len).to(device)
    opt = torch.optim.AdamW(sem.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    loss_fn = MIMLoss(cfg.mim, num_items)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    probe = rows[: cfg.probe_rows]
    initial = probe_loss(sem, ev, cfg, probe)
    epoch_losses, step, t0 = [], 0, time.time()
    for _ in range(cfg.epochs):
        sem.train()
        tot, cnt = 0.0, 0
        for idx in batch_order(ev.lengths[rows], cfg.batch_size, rng):
            batch = pretrain_batch(ev, rows[idx], cfg.max_len, cfg.sem.max_sessions)
            loss, count = _mim_step_loss(sem, loss_fn, batch, cfg, gen, device)
            if count == 0:
                continue
            opt.zero_grad(set_to_none=True)
            (loss / count).backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(sem.parameters(), cfg.grad_clip)
            opt.step()
            with torch.no_grad():
                sem.item_emb.weight[0].zero_()
            tot, cnt, step = tot + float(loss.detach()), cnt + count, step + 1
            if cfg.max_steps and step >= cfg.max_steps:
                break
        epoch_losses.append(tot / max(cnt, 1))
        if cfg.max_steps and step >= cfg.max_steps:
            break
    final = probe_loss(sem, ev, cfg, probe)
    cut = ({"kind": "split", "split": cutoff_time.name, "params": cutoff_time.params}
           if isinstance(cutoff_time, Split) else {"kind": "time", "t": int(cutoff_time)})
    meta = {
        "format": FORMAT,
        "config": asdict(cfg),
        "num_items": num_items,
        "d_model": cfg.sem.d_model,
        "cutoff": cut,
        "data_fingerprint": data_fp,
        "events_fingerprint": _events_fingerprint(ev),
        "num_events": int(ev.lengths.sum()),
        "num_users": int((ev.lengths > 0).sum()),
        "num_sessions": int(len(np.unique(ev.session_ids))),
        "steps": step,
        "epoch_losses": epoch_losses,
        "probe_loss": {"initial": initial, "final": final},
        "seconds": round(time.time() - t0, 2),
    }
    out = Path(out_dir)
    _write_artifact(out, sem, meta)
    return out


def load_pretrained(path: str | Path, num_items: int | None = None, device: str = "cpu") -> Pretrained:
    """Load a stage-1 artifact; shapes are checked against the config it was written with (and ``num_items``)."""
    root = Path(path)
    try:
        meta = json.loads((root / META_FILE).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{root / META_FILE}: not found; is {root} a pretrain artifact?") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{root / META_FILE}: not valid JSON ({exc.msg})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{root}: format {meta.get('format')!r}, expected {FORMAT!r}")
    n_items = int(meta["num_items"])
    if num_items is not None and num_items != n_items:
        raise CheckpointError(f"{root}: pre-trained on {n_items} items, the dataset has {num_items}")
    try:
        raw = meta["config"]
        sem_cfg = dataclass_from_dict(SessionEncoder.Config, raw["sem"], "pretrain.sem")
        max_len = int(raw["max_len"])
    except (KeyError, ConfigError, TypeError) as exc:
        raise CheckpointError(f"{root / META_FILE}: bad config ({exc})") from None
    sem = SessionEncoder(sem_cfg, num_items=n_items, max_len=max_len)
    try:
        table = load_file(str(root / ITEM_TABLE_FILE))[ITEM_KEY]
        state = load_file(str(root / SEM_FILE))
    except (FileNotFoundError, KeyError) as exc:
        raise CheckpointError(f"{root}: missing weights ({exc})") from None
    except Exception as exc:  # safetensors raises several types on corrupt files
        raise CheckpointError(f"{root}: unreadable safetensors ({exc})") from None
    state["item_emb.weight"] = table
    own = sem.state_dict()
    if set(own) != set(state):
        raise CheckpointError(f"{root}: weights do not match the SEM config (missing "
                              f"{sorted(set(own) - set(state))[:3]}, unexpected {sorted(set(state) - set(own))[:3]})")
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise CheckpointError(f"{root}: '{k}' has shape {tuple(v.shape)}, config expects {tuple(own[k].shape)}")
    sem.load_state_dict(state)
    sem.to(device).eval()
    return Pretrained(sem.item_emb.weight.detach().clone(), sem, meta)


__all__ = ["PretrainConfig", "Pretrained", "load_pretrained", "pretrain_batch", "pretrain_sessions",
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
