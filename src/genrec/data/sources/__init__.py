"""Readers from public dataset formats to :class:`~genrec.data.prepare.RawLog`, and their registry.

Each :class:`SourceSpec` couples a reader with the prepare defaults that suit its data (a day
for day-granular Amazon reviews, an hour for click logs, the behavior level order of a
multi-behavior log), so ``genrec data prepare SOURCE INPUT`` does the sensible thing without flags
while every choice still lands in the manifest.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genrec.data.prepare import DEFAULT_PARAMS, RawLog, prepare
from genrec.data.sources.amazon_5core import read_amazon_5core
from genrec.data.sources.amazon_p5 import read_amazon_p5
from genrec.data.sources.cml import RETAILROCKET, TMALL, read_retailrocket_cml, read_tmall_cml
from genrec.data.sources.generic import read_generic
from genrec.data.sources.movielens import read_movielens
from genrec.data.sources.seqrecbench import read_seqrecbench
from genrec.data.sources.taobao import BEHAVIOR_ORDER, read_taobao
from genrec.errors import ConfigError


@dataclass(frozen=True)
class SourceSpec:
    """A registered source: how to read it and which prepare parameters suit it."""

    name: str
    reader: Callable[..., RawLog]
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)

    @property
    def options(self) -> tuple[str, ...]:
        """Keyword options the reader accepts (everything else goes to prepare)."""
        sig = inspect.signature(self.reader)
        return tuple(n for n, p in sig.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY)


SOURCES: dict[str, SourceSpec] = {
    s.name: s
    for s in (
        SourceSpec(
            "movielens",
            read_movielens,
            "MovieLens ratings: ml-100k u.data, ml-1m/10m ratings.dat, ml-20m/25m ratings.csv (plain, .gz, zip "
            "or folder), with movie titles/genres from u.item/movies.dat/movies.csv when beside them",
            {"session_gap": 3600},
        ),
        SourceSpec(
            "amazon_p5",
            read_amazon_p5,
            "Amazon 2014 5-core sequences in the P5/TIGER format (sequential_data.txt folder), P5 item ids "
            "kept as internal ids, review dates and item text attached when present",
            {"session_gap": 86400, "dedup": "none"},  # the published P5/TIGER splits keep repeated pairs
        ),
        SourceSpec(
            "amazon_5core",
            read_amazon_5core,
            "Amazon 2014 per-category 5-core review JSON lines (reviews_X_5.json, .gz or zip)",
            {"session_gap": 86400},
        ),
        SourceSpec(
            "seqrecbench",
            read_seqrecbench,
            "SeqRecBenchmark-processed logs as staged CSV (interactions.csv.gz: user_id,item_id,timestamp; "
            "items.jsonl.gz titles), e.g. the Amazon 2014 Books sample; sha256 checked against SOURCE.md",
            {"session_gap": 86400},
        ),
        SourceSpec(
            "taobao",
            read_taobao,
            "Taobao UserBehavior.csv (user,item,category,behavior,timestamp; pv<fav<cart<buy), "
            "filtered to the official 2017-11-25..12-03 window",
            {"session_gap": 3600, "behavior_order": list(BEHAVIOR_ORDER)},
        ),
        SourceSpec(
            "tmall_cml",
            read_tmall_cml,
            "Tmall multi-behavior log of CML/KHGT as staged CSV (interactions.csv.gz: user_id,item_id,behavior,"
            "timestamp; fav<cart<buy, page views missing) with its published held-out purchases (test_buy.csv.gz)",
            {"session_gap": 3600, "behavior_order": list(TMALL.behaviors)},
        ),
        SourceSpec(
            "retailrocket_cml",
            read_retailrocket_cml,
            "RetailRocket multi-behavior log of CML/SSLRec as staged CSV (view<cart<buy, same layout as "
            "tmall_cml) with its published held-out purchases",
            {"session_gap": 3600, "behavior_order": list(RETAILROCKET.behaviors)},
        ),
        SourceSpec(
            "generic",
            read_generic,
            "any CSV/TSV/Parquet log with user_col, item_col, time_col (+ rating_col, behavior_col, sep, "
            "time_format)",
            {},
        ),
    )
}


def get_source(name: str) -> SourceSpec:
    """The registered source ``name``; a ConfigError lists the known names otherwise."""
    try:
        return SOURCES[name]
    except KeyError:
        raise ConfigError(f"unknown data source '{name}' (known: {', '.join(sorted(SOURCES))})") from None


def prepare_source(source: str, path: str | Path, out_dir: str | Path, *, name: str | None = None,
                   overwrite: bool = False, **kwargs: Any) -> Path:  # fmt: skip
    """Read ``path`` with source ``source`` and prepare it into ``out_dir``.

    Keyword arguments go to the reader when it declares them and to
    :func:`~genrec.data.prepare.prepare` otherwise; unset ones take the source defaults. ``overwrite``
    (``--force``) lets it replace a prepared dataset already in ``out_dir``.
    """
    spec = get_source(source)
    reader_opts = {k: v for k, v in kwargs.items() if k in spec.options}
    params = {k: v for k, v in kwargs.items() if k not in spec.options}
    unknown = sorted(set(params) - set(DEFAULT_PARAMS))
    if unknown:
        raise ConfigError(
            f"source '{source}' does not take {', '.join(unknown)} "
            f"(reader options: {', '.join(spec.options) or 'none'}; prepare: {', '.join(DEFAULT_PARAMS)})"
        )
    params = {**spec.defaults, **{k: v for k, v in params.items() if v is not None}}
    raw = spec.reader(path, **{k: v for k, v in reader_opts.items() if v is not None})
    return prepare(raw, out_dir, name=name or Path(out_dir).name, overwrite=overwrite, **params)


__all__ = ["SOURCES", "SourceSpec", "get_source", "prepare_source"]
