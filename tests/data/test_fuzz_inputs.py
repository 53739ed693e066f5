"""Fuzzing the readers and the recipe loader (issue 21): random bytes, random CSV shapes and random YAML values
end in a valid dataset or config, or in one-line GenrecError, never in another exception (a traceback).

Deterministic (``derandomize=True``: the examples are a function of the test's source) and bounded
(``max_examples``, no deadline on a busy machine), so CI is neither flaky nor slow; ``GENREC_FUZZ_EXAMPLES``
multiplies the examples and ``GENREC_FUZZ_RANDOM=1`` draws new ones, for a longer local hunt.
"""

from __future__ import annotations

import gzip
import os
import shutil
import string
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from genrec.config import config_from_dict, load_config
from genrec.data.schema import load_dataset
from genrec.data.sources import prepare_source
from genrec.errors import GenrecError

pytestmark = pytest.mark.reliability
SCALE = int(os.environ.get("GENREC_FUZZ_EXAMPLES", "1"))
FIXED = not os.environ.get("GENREC_FUZZ_RANDOM")  # set it to draw new examples each run (a local hunt)


def fuzz(n: int):
    return settings(max_examples=n * SCALE, deadline=None, derandomize=FIXED, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@contextmanager
def scratch() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="genrec-fuzz-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def result(fn, *args, **kw) -> str:
    """'ok' or 'refused: ...' (a one-line GenrecError); any other exception fails the test with its traceback."""
    try:
        fn(*args, **kw)
    except GenrecError as exc:
        assert "\n" not in str(exc) and str(exc).strip(), repr(exc)
        return f"refused: {str(exc).rsplit(': ', 1)[-1][:40]}"
    return "ok"


def outcome(fn, *args, **kw) -> None:
    """:func:`result`, counted (``pytest --hypothesis-show-statistics`` shows how often each outcome came up)."""
    event(result(fn, *args, **kw))


def prepared(source: str, path: Path, out: Path, **kw) -> None:
    """Prepare, then prove the result loads (a dataset written is a valid dataset)."""
    load_dataset(prepare_source(source, path, out, **kw))


# -- random bytes under every reader's file name ------------------------------------------------------------

READERS = [("generic", "log.csv", {"user_col": "u", "item_col": "i", "time_col": "t"}),
           ("movielens", "u.data", {}), ("movielens", "ratings.dat", {}), ("movielens", "ratings.csv", {}),
           ("taobao", "UserBehavior.csv", {}), ("amazon_5core", "reviews_X_5.json", {})]  # fmt: skip


@fuzz(40)
@given(data=st.binary(max_size=300), which=st.sampled_from(range(len(READERS))), wrap=st.sampled_from(["", "gz"]))
def test_random_bytes_never_escape_as_a_traceback(data: bytes, which: int, wrap: str) -> None:
    source, name, kw = READERS[which]
    with scratch() as d:
        path = d / name
        path.write_bytes(gzip.compress(data) if wrap else data)
        outcome(prepared, source, path, d / "out", **kw)


# -- random CSV shapes for the generic reader ---------------------------------------------------------------

CELLS = st.one_of(
    st.integers(-(10**25), 10**25).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", " ", "nan", "NaN", "inf", "-1", "0", "1e400", "2017-11-25", "2017-11-25T10:00:00Z", '"',
                     '""', "a,b", "\\N", "null", "１２"]),
    st.text(alphabet=string.printable + "éß中\x00", max_size=8),
)  # fmt: skip


PLAIN = {"u": st.integers(1, 5).map(str), "i": st.sampled_from(["a", "b", "c", "007"]),
         "t": st.integers(1_500_000_000, 1_700_000_000).map(str), "r": st.sampled_from(["1", "4", "5", "4.5"]),
         "b": st.sampled_from(["pv", "buy", "fav"]), "x": st.just("z")}  # fmt: skip


@st.composite
def csv_files(draw) -> tuple[str, str, dict]:
    """A log shaped like a real one (user, item, time and optional columns in any order), with one cell in ten
    replaced by an odd value, now and then a ragged row, a missing header or a header name gone."""
    sep = draw(st.sampled_from([",", "\t", ";", "|"]))
    extra = draw(st.lists(st.sampled_from(["r", "b", "x"]), unique=True, max_size=3))
    cols = draw(st.permutations(["u", "i", "t", *extra]))
    rows = []
    for _ in range(draw(st.integers(0, 12))):
        row = [draw(PLAIN[c]) if draw(st.integers(0, 9)) else draw(CELLS) for c in cols]
        if not draw(st.integers(0, 14)):
            row = row[:-1] if draw(st.booleans()) else [*row, "extra"]
        rows.append(row)
    header = [c if draw(st.integers(0, 19)) else "" for c in cols]
    no_header = not draw(st.integers(0, 4))
    end = draw(st.sampled_from(["\n", "\r\n"]))
    text = ("" if no_header else sep.join(header) + end) + "".join(sep.join(r) + end for r in rows)
    pos = {c: str(k + 1) for k, c in enumerate(cols)}
    kw = {"user_col": "u", "item_col": "i", "time_col": "t", "sep": sep,
          "time_format": draw(st.sampled_from(["unix_s"] * 4 + ["unix_ms", "iso", "%Y-%m-%d", "%Q"]))}
    if "r" in cols and draw(st.booleans()):
        kw["rating_col"] = "r"
    if "b" in cols and draw(st.booleans()):
        kw["behavior_col"] = "b"
    if no_header:
        kw.update(no_header=True, user_col=pos["u"], item_col=pos["i"], time_col=pos["t"],
                  **{k: pos[kw[k]] for k in ("rating_col", "behavior_col") if k in kw})
    return text, draw(st.sampled_from(["log.csv", "log.tsv", "log.csv.gz"])), kw


@fuzz(100)
@given(case=csv_files())
def test_random_csv_shapes_end_in_a_dataset_or_one_line(case: tuple[str, str, dict]) -> None:
    text, name, kw = case
    with scratch() as d:
        path = d / name
        data = text.encode("utf-8", errors="surrogatepass")
        path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
        outcome(prepared, "generic", path, d / "out", **kw)


@st.composite
def parquet_tables(draw) -> pa.Table:
    n = draw(st.integers(0, 6))
    kinds = {
        "int": st.lists(st.integers(-(2**63), 2**63 - 1), min_size=n, max_size=n),
        "float": st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=n, max_size=n),
        "str": st.lists(st.one_of(st.none(), st.text(max_size=6)), min_size=n, max_size=n),
        "bool": st.lists(st.booleans(), min_size=n, max_size=n),
    }
    cols = {c: draw(kinds[draw(st.sampled_from(sorted(kinds)))]) for c in ("u", "i", "t")}
    return pa.table(cols)


@fuzz(60)
@given(table=parquet_tables(), time_format=st.sampled_from(["unix_s", "unix_ms", "iso"]))
def test_random_parquet_columns_end_in_a_dataset_or_one_line(table: pa.Table, time_format: str) -> None:
    with scratch() as d:
        pq.write_table(table, d / "log.parquet")
        outcome(prepared, "generic", d / "log.parquet", d / "out", user_col="u", item_col="i", time_col="t",
                time_format=time_format)


# -- random recipes ------------------------------------------------------------------------------------------

SECTIONS = ["model", "data", "objective", "train", "eval", "ranking", "sid", "generator", "multibehavior",
            "pretrain", "stages", "source", "extends", "trian"]
KEYS = ["name", "lr", "epochs", "batch_size", "betas", "ks", "max_len", "split", "path", "seed", "device",
        "precision", "metrics", "dropout", "d_model", "num_heads", "warmup_ratio", "labels", "levels", "fused"]
VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(10**20), 10**20), st.floats(allow_nan=True),
              st.text(max_size=8), st.sampled_from(["1e-3", "auto", "[1, 2]", "temporal", "sasrec", "hstu"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS), inner, max_size=3)),
    max_leaves=6,
)  # fmt: skip
RECIPES = st.dictionaries(st.sampled_from(SECTIONS),
                          st.one_of(VALUES, st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=4)), max_size=5)


@fuzz(300)
@given(raw=RECIPES)
def test_random_recipe_values_load_or_are_one_line(raw: dict) -> None:
    outcome(config_from_dict, raw)


@fuzz(60)
@given(text=st.one_of(st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
                      RECIPES.map(lambda r: yaml.safe_dump(r, allow_unicode=True))),
       overrides=st.lists(st.text(alphabet=string.ascii_lowercase + "._=[]{}:,-0123456789 ", max_size=20),
                          max_size=3))
def test_random_recipe_files_and_overrides_load_or_are_one_line(text: str, overrides: list[str]) -> None:
    with scratch() as d:
        (d / "r.yaml").write_text(text, encoding="utf-8", errors="surrogatepass")
        outcome(load_config, d / "r.yaml", overrides)


def test_the_fuzzers_reach_both_outcomes() -> None:
    """A fuzzer whose every example is refused (or accepted) proves little: these inputs land on each side."""
    with scratch() as d:
        good = d / "log.csv"
        good.write_text("u,i,t\n1,a,1600000000\n1,b,1600000100\n2,a,1600000200\n")
        assert result(prepared, "generic", good, d / "o", user_col="u", item_col="i", time_col="t") == "ok"
        (d / "bytes.csv").write_bytes(b"\xff\x00")
        refused = result(prepared, "generic", d / "bytes.csv", d / "o2", user_col="u", item_col="i", time_col="t")
        assert refused.startswith("refused")
    assert result(config_from_dict, {"train": {"lr": 0.01}}) == "ok"
    assert result(config_from_dict, {"train": {"lr": "fast"}}).startswith("refused")
