"""The Amazon Books recipes train end to end on a toy copy of the staged layout, prepared by the seqrecbench reader:
the retrievers as written, the generators with SIDs built from the titles (the documented commands)."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from genrec.cli import main
from genrec.config import RECIPES_DIR, load_config

BOOKS = ("sasrec-books", "hstu-books", "tiger-books-cpu", "glass-books-cpu")
DAY = 86400
# one epoch on one thread for every recipe, with small batches (the model sizes stay the recipe's), so it tests too
BUDGET = ["train.epochs=1", "train.num_threads=1", "train.batch_size=16", "train.progress=false",
          "train.tensorboard=false", "eval.batch_size=64"]
# the toy catalogue (60 items) cannot fill 64 or 256 codes per level
TOY_SIDS = ["sid.codebook_size=4", "sid.rqvae_epochs=2", "generator.valid_max_queries=8", "generator.beam_size=5",
            "eval.ks=[1,5]"]


def _toy_folder(root, users=30, items=60, seed=0):
    """interactions.csv.gz + items.jsonl.gz in the staged format: day-resolution times with same-day ties."""
    rng = np.random.default_rng(seed)
    lines = ["user_id,item_id,timestamp\n"]
    for u in range(100, 100 + users):
        n = int(rng.integers(5, 30))
        days = np.sort(rng.integers(16000, 16060, size=n))  # repeats: same-day ties
        for i, d in zip(rng.choice(np.arange(100, 100 + items), size=n, replace=False), days):
            lines.append(f"{u},{int(i)},{int(d) * DAY}\n")
    folder = root / "books-toy"
    folder.mkdir()
    (folder / "interactions.csv.gz").write_bytes(gzip.compress("".join(lines).encode(), mtime=0))
    titles = "".join(json.dumps({"item_id": i, "title": f"Book number {i}"}) + "\n" for i in range(100, 100 + items))
    (folder / "items.jsonl.gz").write_bytes(gzip.compress(titles.encode(), mtime=0))
    return folder


@pytest.fixture(scope="module")
def toy_books(tmp_path_factory):
    root = tmp_path_factory.mktemp("books")
    out = root / "data"
    assert main(["data", "prepare", "seqrecbench", str(_toy_folder(root)), "--out", str(out)]) == 0
    return root, out


@pytest.fixture
def title_encoder(monkeypatch):
    """The packaged text model replaced by a deterministic one that records what it was asked to embed."""
    seen: list[str] = []

    def fake(device: str = "cpu"):
        def encode(texts):
            seen.extend(texts)
            rng = np.random.default_rng([sum(map(ord, t)) for t in texts])
            return rng.standard_normal((len(texts), 16)).astype(np.float32)
        return encode

    monkeypatch.setattr("genrec.sid.embed.minilm_encoder", fake)
    return seen


def test_books_recipes_state_their_protocol():
    for name in BOOKS:
        cfg = load_config(RECIPES_DIR / f"{name}.yaml")
        assert cfg.data.path == "data_cache/books" and cfg.data.split == "leave_one_out"
        assert "no published" in " ".join(cfg.source.lower().split())
    for name in BOOKS[:2]:
        cfg = load_config(RECIPES_DIR / f"{name}.yaml")
        assert cfg.data.max_len == 200 and cfg.eval.exclude_history
    for name in BOOKS[2:]:
        assert load_config(RECIPES_DIR / f"{name}.yaml").sid.text_fields == ["title"]


@pytest.mark.parametrize("name", BOOKS[:2])
def test_retriever_recipes_train_on_the_toy(toy_books, name):
    root, data = toy_books
    run = root / name
    assert main(["train", name, "--data", str(data), "--out", str(run), "--set", *BUDGET]) == 0
    res = json.loads((run / "results" / "test.json").read_text())
    assert res["model"] == name.split("-")[0] and 0.0 <= res["metrics"]["ndcg@10"] <= 1.0


def test_generator_recipes_build_sids_from_titles_and_train(toy_books, title_encoder):
    root, data = toy_books
    cache = f"sid.cache_dir={root / 'emb'}"
    sid = root / "sid-title"
    assert main(["sid", "build", "tiger-books-cpu", "--data", str(data), "--out", str(sid), "--set", cache,
                 *TOY_SIDS]) == 0
    assert title_encoder and all(t.startswith("Title: Book number ") for t in title_encoder)
    for name, extra in (("tiger-books-cpu", [f"sid.table={sid}"]), ("glass-books-cpu", [cache])):
        run = root / name
        assert main(["train", name, "--data", str(data), "--out", str(run), "--set", *BUDGET, *TOY_SIDS,
                     *extra]) == 0
        res = json.loads((run / "results" / "test.json").read_text())
        assert res["model"] == name.split("-")[0] and 0.0 <= res["metrics"]["hr@5"] <= 1.0
