"""genrec's leave-one-out split as RecBole atomic files, and the check that both hold the same examples.

RecBole reads a pre-split sequential dataset through ``benchmark_filename``: ``NAME.train.inter``,
``NAME.valid.inter`` and ``NAME.test.inter``, one row per (user, history window, next item) with the columns
``user_id:token  item_id_list:token_seq  item_id:token``. Writing genrec's split out (instead of letting RecBole
re-sort day-resolution timestamps, whose ties it may order differently, and split again) makes both frameworks
train on and evaluate exactly the same targets. :func:`check_files` reads the files back and compares them with
genrec's split user by user, through plain slicing rather than the writer's windowing code.

The training file holds every training target of every user with its last ``max_len`` items, as RecBole's own
sequential augmentation would make them. Nothing here imports RecBole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from genrec.data.prepare import RawLog, prepare
from genrec.data.schema import Dataset
from genrec.data.sequences import UserSequences, event_windows
from genrec.data.splits import EvalSamples, Split

HEADER = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
PARTS = ("train", "valid", "test")


def subset_dataset(ds: Dataset, users: int, out_dir: Path) -> Path:
    """The first ``users`` users of ``ds`` as a prepared dataset of their own (items renumbered densely, so the
    catalogue is the items they touched); a quick run's data. Event order is kept (no dedup, stable sort)."""
    inter = ds.interactions
    keep = inter.user_id <= users  # (E,) ids are 1..U in (user, time) order
    raw = RawLog(user=inter.user_id[keep], item=inter.item_id[keep], timestamp=inter.timestamp[keep],
                 source="subset", label=f"first {users} users of {ds.manifest.get('name')}")
    return prepare(raw, out_dir, name=f"{ds.manifest.get('name')}-first{users}", dedup="none")


def _examples(seqs: UserSequences, split: Split, max_len: int) -> dict[str, tuple[np.ndarray, Any, np.ndarray]]:
    """Per part: (users (S,), the (S, L) history windows of each example, targets (S,))."""
    out = {}
    rows = np.flatnonzero(split.train_end >= 2)  # (R,) users with a training target
    per = split.train_end[rows] - 1  # (R,) training targets of each: positions 1 .. train_end-1
    row_of = np.repeat(rows, per)  # (S,)
    pos = np.arange(per.sum()) - np.repeat(np.cumsum(per) - per, per) + 1  # (S,) target position in its row
    tgt = seqs.offsets[row_of] + pos  # (S,) flat index of each target
    out["train"] = (seqs.user_ids[row_of], event_windows(seqs.offsets[row_of], tgt, max_len), seqs.items[tgt])
    for part in ("valid", "test"):
        s: EvalSamples = getattr(split, part)
        flat = seqs.offsets[s.rows] + s.hist_end  # (S,)
        out[part] = (seqs.user_ids[s.rows], seqs.windows(s.rows, s.hist_end, max_len), seqs.items[flat])
    return out


def write_recbole_files(seqs: UserSequences, split: Split, out_dir: str | Path, name: str, max_len: int
                        ) -> dict[str, int]:
    """Write ``out_dir/name/name.{train,valid,test}.inter``; returns the number of rows of each."""
    folder = Path(out_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    for part, (users, win, targets) in _examples(seqs, split, max_len).items():
        hist = win.take(seqs.items)  # (S, L) item ids, 0 on padding
        lines = [f"{u}\t{' '.join(map(str, h[:n]))}\t{t}\n"
                 for u, h, n, t in zip(users.tolist(), hist.tolist(), win.lengths.tolist(), targets.tolist())]
        (folder / f"{name}.{part}.inter").write_text(HEADER + "".join(lines))
        counts[part] = len(lines)
    return counts


def read_recbole_file(path: str | Path) -> list[tuple[int, list[int], int]]:
    """(user, history, target) of every row of one atomic file written by :func:`write_recbole_files`."""
    lines = Path(path).read_text().splitlines()
    if not lines or lines[0] + "\n" != HEADER:
        raise ValueError(f"{path}: not a sequential atomic file with header {HEADER.strip()!r}")
    out = []
    for line in lines[1:]:
        u, h, t = line.split("\t")
        out.append((int(u), [int(x) for x in h.split()], int(t)))
    return out


def check_files(seqs: UserSequences, split: Split, out_dir: str | Path, name: str, max_len: int,
                num_items: int) -> dict[str, Any]:
    """Compare the files with genrec's split: users, catalogue, and per user the validation and test targets with
    their history windows and the list of training targets. ``ok`` is True when everything is identical."""
    folder = Path(out_dir) / name
    got = {part: read_recbole_file(folder / f"{name}.{part}.inter") for part in PARTS}
    want: dict[str, dict[int, tuple[list[int], int]]] = {}
    for part in ("valid", "test"):
        s: EvalSamples = getattr(split, part)
        want[part] = {}
        for row, e in zip(s.rows.tolist(), s.hist_end.tolist()):
            a = int(seqs.offsets[row])
            want[part][int(seqs.user_ids[row])] = (seqs.items[a + max(0, e - max_len): a + e].tolist(),
                                                   int(seqs.items[a + e]))
    train_want = {int(seqs.user_ids[r]): seqs.items[seqs.offsets[r] + 1: seqs.offsets[r] + end].tolist()
                  for r, end in enumerate(split.train_end.tolist()) if end >= 2}
    train_got: dict[int, list[int]] = {}
    for u, _, t in got["train"]:
        train_got.setdefault(u, []).append(t)
    users = {u for rows in got.values() for u, _, _ in rows}
    items = {i for rows in got.values() for _, h, t in rows for i in (*h, t)}
    genrec_users = {int(seqs.user_ids[r]) for r in np.flatnonzero(seqs.lengths >= 2)}
    res: dict[str, Any] = {
        "users": len(users), "genrec_users": len(genrec_users), "items": len(items), "genrec_items": num_items,
        "rows": {part: len(rows) for part, rows in got.items()},
        "train_targets_identical": train_got == train_want,
    }
    for part in ("valid", "test"):
        rows = {u: (h, t) for u, h, t in got[part]}
        res[f"{part}_targets_identical"] = len(rows) == len(got[part]) and \
            {u: t for u, (_, t) in rows.items()} == {u: t for u, (_, t) in want[part].items()}
        res[f"{part}_histories_identical"] = rows == want[part]
    res["ok"] = (users == genrec_users and len(items) == num_items
                 and all(v for k, v in res.items() if k.endswith("_identical")))
    return res


def describe_check(res: dict[str, Any]) -> str:
    """One paragraph for the benchmark's output."""
    same = ", ".join(f"{k.removesuffix('_identical').replace('_', ' ')} {'identical' if v else 'DIFFERENT'}"
                     for k, v in res.items() if k.endswith("_identical"))
    return (f"split check (RecBole files vs genrec's leave-one-out split): users {res['users']} vs "
            f"{res['genrec_users']}, items {res['items']} vs {res['genrec_items']}, rows {res['rows']}; {same} -> "
            + ("OK" if res["ok"] else "MISMATCH"))
