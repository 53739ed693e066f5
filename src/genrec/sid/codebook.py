"""The SID table: item id <-> semantic id, made unique by a collision level, versioned, with health metrics.

Quantizers map similar items to the same code tuple; a generator can only recommend an item it can name, so
(as in TIGER §3.1) items sharing the L-level prefix get an extra token 0, 1, 2, ... in item-id order. The table
records which quantizer (name, parameters, fingerprint) produced the codes from which inputs (fingerprint),
so a trained generator can refuse SIDs it was not trained on. Stored as JSON or parquet, never pickle.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from genrec.errors import DataError

FORMAT_VERSION = 1
PARQUET_META_KEY = b"genrec.sid_table"


@runtime_checkable
class Quantizer(Protocol):
    """What every quantizer offers, so the SID table and recipes never ask which one they hold."""

    name: str

    def fit(self, x: torch.Tensor, *, seed: int = 0) -> Any:
        """Learn the codebooks from item embeddings ``x`` (N, D)."""
        ...

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) float -> (N, L) int64 codes, one column per level."""
        ...

    def fingerprint(self) -> str:
        """A short hash of the parameters and learned codebooks (changes whenever the codes could)."""
        ...

    def params(self) -> dict[str, Any]:
        """JSON-serialisable hyper-parameters, recorded in the SID table."""
        ...

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        """Number of codes at each level."""
        ...


def tensor_fingerprint(*tensors: torch.Tensor | np.ndarray, extra: Any = None) -> str:
    """A 16-hex content hash of arrays (+ JSON-able extra), used to key caches and SID tables."""
    h = hashlib.sha256()
    for t in tensors:
        a = t.detach().to("cpu").contiguous().numpy() if isinstance(t, torch.Tensor) else np.ascontiguousarray(t)
        h.update(str((a.shape, str(a.dtype))).encode())
        h.update(a.tobytes())
    if extra is not None:
        h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def add_collision_level(codes: np.ndarray | torch.Tensor) -> np.ndarray:
    """(N, L) codes -> (N, L+1): items sharing an L-prefix get 0, 1, 2, ... in row order; unique items get 0."""
    c = np.asarray(codes.cpu() if isinstance(codes, torch.Tensor) else codes, dtype=np.int64)
    if c.ndim != 2:
        raise DataError(f"codes must be a (N, L) matrix, got shape {c.shape}")
    n = c.shape[0]
    if n == 0:
        return np.zeros((0, c.shape[1] + 1), dtype=np.int64)
    _, group = np.unique(c, axis=0, return_inverse=True)
    group = group.reshape(-1)  # (N,) prefix-group id
    order = np.argsort(group, kind="stable")  # groups contiguous, row order kept inside each group
    sorted_group = group[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_group)) + 1]  # first position of each group
    first = np.repeat(starts, np.diff(np.r_[starts, n]))  # (N,) group start for each sorted position
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - first
    return np.concatenate([c, rank[:, None]], axis=1)


class LevelHealth(NamedTuple):
    level: int  # 0-based SID position
    codebook_size: int
    usage: float  # fraction of the level's codes used by at least one item
    entropy_bits: float  # entropy of the level's code distribution (max log2(codebook_size))
    num_prefixes: int  # distinct prefixes (c_0..c_level)
    max_items_per_prefix: int  # largest number of items sharing the prefix (c_0..c_level)


@dataclass
class SIDHealth:
    num_items: int
    levels: list[LevelHealth]  # the quantizer levels, then the collision level
    collision_rate: float  # fraction of items whose quantizer code tuple is shared with another item
    collision_level_size: int  # size of the extra level = the largest collision group

    def as_dict(self) -> dict[str, Any]:
        return {"num_items": self.num_items, "collision_rate": self.collision_rate,
                "collision_level_size": self.collision_level_size,
                "levels": [lv._asdict() for lv in self.levels]}

    def summary(self) -> str:
        lines = [f"{self.num_items} items, collision rate {self.collision_rate:.2%} before the extra level "
                 f"(size {self.collision_level_size})"]
        for lv in self.levels:
            lines.append(f"  level {lv.level}: usage {lv.usage:.1%} of {lv.codebook_size}, "
                         f"entropy {lv.entropy_bits:.2f} bits, {lv.num_prefixes} prefixes, "
                         f"max {lv.max_items_per_prefix} items/prefix")
        return "\n".join(lines)


def _entropy_bits(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum()) if p.size else 0.0


@dataclass
class SIDTable:
    """Item id <-> semantic id. ``codes[i]`` is the SID of ``item_ids[i]``; every SID is unique."""

    item_ids: np.ndarray  # (N,) int64
    codes: np.ndarray  # (N, m) int64, last column is the collision level when ``collision_level`` is set
    codebook_sizes: tuple[int, ...]  # (m,) vocabulary size of each SID position
    quantizer: str = "unknown"
    quantizer_params: dict[str, Any] = field(default_factory=dict)
    quantizer_fingerprint: str = ""
    input_fingerprint: str = ""
    collision_level: bool = True
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        self.item_ids = np.asarray(self.item_ids, dtype=np.int64).reshape(-1)
        self.codes = np.asarray(self.codes, dtype=np.int64)
        self.codebook_sizes = tuple(int(s) for s in self.codebook_sizes)
        self.validate()

    # ---- construction -------------------------------------------------------------------------------
    @classmethod
    def build(cls, item_ids: np.ndarray | torch.Tensor, codes: np.ndarray | torch.Tensor,
              codebook_sizes: tuple[int, ...] | list[int], quantizer: str = "unknown",
              quantizer_params: dict[str, Any] | None = None, quantizer_fingerprint: str = "",
              input_fingerprint: str = "") -> SIDTable:
        """Make SIDs unique with a collision level; ``codes`` (N, L) are the quantizer's codes per item."""
        ids = np.asarray(item_ids.cpu() if isinstance(item_ids, torch.Tensor) else item_ids, dtype=np.int64)
        order = np.argsort(ids, kind="stable")  # collision tokens follow item-id order whatever the input order
        full = add_collision_level(np.asarray(codes.cpu() if isinstance(codes, torch.Tensor) else codes)[order])
        sizes = tuple(int(s) for s in codebook_sizes) + (int(full[:, -1].max()) + 1 if len(full) else 1,)
        return cls(ids[order], full, sizes, quantizer, dict(quantizer_params or {}), quantizer_fingerprint,
                   input_fingerprint)

    @classmethod
    def from_quantizer(cls, quantizer: Quantizer, item_ids: np.ndarray | torch.Tensor, x: torch.Tensor) -> SIDTable:
        """Encode the (already fitted) quantizer's inputs ``x`` (N, D) and build the table."""
        codes = quantizer.encode(x)  # (N, L)
        return cls.build(item_ids, codes, quantizer.codebook_sizes, quantizer.name, quantizer.params(),
                         quantizer.fingerprint(), tensor_fingerprint(x))

    # ---- checks and views ---------------------------------------------------------------------------
    def validate(self) -> None:
        n = self.item_ids.shape[0]
        if self.codes.ndim != 2 or self.codes.shape[0] != n:
            raise DataError(f"SID table: codes shape {self.codes.shape} does not match {n} items")
        if len(self.codebook_sizes) != self.codes.shape[1]:
            raise DataError(f"SID table: {len(self.codebook_sizes)} codebook sizes for {self.codes.shape[1]} levels")
        if n and (self.codes.min() < 0 or (self.codes >= np.array(self.codebook_sizes)).any()):
            raise DataError("SID table: a code lies outside its level's codebook")
        if len(np.unique(self.item_ids)) != n:
            raise DataError("SID table: duplicate item ids")
        if n and len(np.unique(self.codes, axis=0)) != n:
            raise DataError("SID table: two items share a semantic id (build it with SIDTable.build)")

    @property
    def num_items(self) -> int:
        return int(self.item_ids.shape[0])


    def item_code_matrix(self, num_items: int, length: int, codebook_size: int, who: str) -> torch.Tensor:
        """(num_items + 1, length) int64: row ``i`` the SID of item ``i``, -1 where an item has none; the table is
        checked to fit a model of ``length`` positions and ``codebook_size`` codes (``who`` names it in errors)."""
        if self.length != length:
            raise DataError(f"{who}: SID table has {self.length} positions, model.sid_length is {length}")
        if max(self.codebook_sizes) > codebook_size:
            raise DataError(f"{who}: SID table codebook sizes {self.codebook_sizes} exceed model.codebook_size "
                            f"{codebook_size}")
        ids = self.item_ids
        if len(ids) and (ids.min() < 1 or ids.max() > num_items):
            raise DataError(f"{who}: SID table item ids must lie in 1..{num_items}")
        sids = torch.full((num_items + 1, length), -1, dtype=torch.long)
        sids[torch.tensor(ids)] = torch.tensor(self.codes)  # copies: the arrays may be read-only
        return sids
    @property
    def length(self) -> int:
        """Number of SID positions m (quantizer levels + collision level)."""
        return int(self.codes.shape[1])

    @property
    def fingerprint(self) -> str:
        return tensor_fingerprint(self.item_ids, self.codes, extra=list(self.codebook_sizes))

    def sid_of(self, item_ids: np.ndarray | list[int]) -> np.ndarray:
        """(n,) item ids -> (n, m) SIDs; unknown ids raise a DataError."""
        ids = np.asarray(item_ids, dtype=np.int64)
        pos = np.searchsorted(self.item_ids, ids)
        pos = np.clip(pos, 0, max(self.num_items - 1, 0))
        if self.num_items == 0 or (self.item_ids[pos] != ids).any():
            raise DataError("SID table: unknown item id(s) " + str(ids[self.item_ids[pos] != ids][:5].tolist()))
        return self.codes[pos]

    def lookup(self) -> dict[tuple[int, ...], int]:
        """SID tuple -> item id, for code that needs a Python mapping (the trie is the fast path)."""
        return {tuple(int(v) for v in row): int(i) for row, i in zip(self.codes, self.item_ids)}

    def health(self) -> SIDHealth:
        """Per level: code usage, entropy, distinct prefixes and largest prefix group; plus the collision rate."""
        n, m = self.codes.shape
        levels = []
        for lv in range(m):
            counts = np.bincount(self.codes[:, lv], minlength=self.codebook_sizes[lv])
            _, per_prefix = np.unique(self.codes[:, : lv + 1], axis=0, return_counts=True)
            levels.append(LevelHealth(lv, self.codebook_sizes[lv], float((counts > 0).mean()), _entropy_bits(counts),
                                      int(per_prefix.size), int(per_prefix.max()) if n else 0))
        q = m - 1 if self.collision_level else m
        if n and q > 0:
            _, inv, cnt = np.unique(self.codes[:, :q], axis=0, return_inverse=True, return_counts=True)
            collision_rate = float((cnt[inv.reshape(-1)] > 1).mean())
        else:
            collision_rate = 0.0
        size = self.codebook_sizes[-1] if self.collision_level else 0
        return SIDHealth(n, levels, collision_rate, size)

    # ---- persistence --------------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return {"format_version": self.format_version, "codebook_sizes": list(self.codebook_sizes),
                "quantizer": self.quantizer, "quantizer_params": self.quantizer_params,
                "quantizer_fingerprint": self.quantizer_fingerprint, "input_fingerprint": self.input_fingerprint,
                "collision_level": self.collision_level, "num_items": self.num_items,
                "fingerprint": self.fingerprint}

    def save(self, path: str | Path) -> Path:
        """Write ``.json`` or ``.parquet`` (by suffix) atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        if path.suffix == ".json":
            doc = {**self.meta(), "item_ids": self.item_ids.tolist(), "codes": self.codes.tolist()}
            tmp.write_text(json.dumps(doc, default=str))
        elif path.suffix == ".parquet":
            table = pa.table({"item_id": self.item_ids, "sid": pa.array(self.codes.tolist(), pa.list_(pa.int64()))})
            table = table.replace_schema_metadata({PARQUET_META_KEY: json.dumps(self.meta(), default=str).encode()})
            pq.write_table(table, tmp)
        else:
            raise DataError(f"{path}: SID tables are saved as .json or .parquet")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> SIDTable:
        path = Path(path)
        if not path.exists():
            raise DataError(f"{path}: SID table not found")
        try:
            if path.suffix == ".json":
                doc = json.loads(path.read_text())
                meta, ids, codes = doc, np.asarray(doc["item_ids"]), np.asarray(doc["codes"])
            elif path.suffix == ".parquet":
                table = pq.read_table(path)
                raw = (table.schema.metadata or {}).get(PARQUET_META_KEY)
                if raw is None:
                    raise DataError(f"{path}: parquet file has no SID table metadata")
                meta = json.loads(raw)
                ids = table.column("item_id").to_numpy()
                codes = np.asarray(table.column("sid").to_pylist(), dtype=np.int64)
            else:
                raise DataError(f"{path}: SID tables are read from .json or .parquet")
        except (KeyError, ValueError, pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{path}: not a readable SID table ({exc})") from None
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise DataError(f"{path}: SID table format version {version}, this genrec reads {FORMAT_VERSION}")
        codes = codes.reshape(len(ids), -1) if len(ids) else np.zeros((0, len(meta["codebook_sizes"])), np.int64)
        table_ = cls(ids, codes, tuple(meta["codebook_sizes"]), meta.get("quantizer", "unknown"),
                     meta.get("quantizer_params", {}), meta.get("quantizer_fingerprint", ""),
                     meta.get("input_fingerprint", ""), bool(meta.get("collision_level", True)), version)
        if meta.get("fingerprint") and meta["fingerprint"] != table_.fingerprint:
            raise DataError(f"{path}: SID table content does not match its recorded fingerprint (file edited?)")
        return table_


def entropy_upper_bound(codebook_size: int) -> float:
    """log2(K): the entropy of a perfectly balanced level, for comparing against ``LevelHealth.entropy_bits``."""
    return math.log2(codebook_size)
