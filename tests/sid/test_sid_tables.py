"""One SID-table module: the multi-behavior builder gives the table the GAMER code built before, run folders
written by either builder load through one loader, and a caller above ``sid`` can hand in the CF source."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genrec.config import SIDConfig
from genrec.data.multibehavior import BehaviorLevels, session_split
from genrec.errors import ConfigError, DataError
from genrec.sid.build import build_session_sid_table, item_embeddings, load_sid_table
from genrec.sid.codebook import SIDTable, tensor_fingerprint
from genrec.sid.cooccurrence import cooccurrence_embeddings, item_categories
from genrec.sid.embed import ItemEmbeddings
from genrec.sid.rqkmeans import RQKMeans, RQKMeansConfig
from tests.gamer.conftest import NUM_ITEMS, cycle_events, make_dataset


@pytest.fixture
def mb():
    ds = make_dataset(cycle_events(num_users=16, seed=1))
    return ds, session_split(ds.interactions, BehaviorLevels.from_manifest(ds.manifest), 1800)


def _old_gamer_table(sc: SIDConfig, ds, split) -> SIDTable:
    """The multi-behavior SID recipe as the GAMER module spelled it before (co-occurrence -> RQ-KMeans)."""
    emb = cooccurrence_embeddings(split, ds.num_items, categories=item_categories(ds), seed=sc.seed)
    quant = RQKMeans(RQKMeansConfig(num_levels=sc.levels, codebook_size=sc.codebook_size, seed=sc.seed))
    quant.fit(emb.vectors)
    table = SIDTable.from_quantizer(quant, emb.item_ids, emb.vectors)
    table.quantizer_params = {**table.quantizer_params, "embeddings": emb.source}
    return table


@pytest.mark.parametrize("embeddings", ["cooccurrence", "cf"])  # cf without a source run = co-occurrence
def test_session_table_is_the_old_gamer_table(mb, embeddings):
    ds, split = mb
    sc = SIDConfig(embeddings=embeddings, quantizer="rqkmeans", levels=2, codebook_size=4, seed=3)
    new, old = build_session_sid_table(sc, ds, split), _old_gamer_table(sc, ds, split)
    assert np.array_equal(new.item_ids, old.item_ids) and np.array_equal(new.codes, old.codes)
    assert new.fingerprint == old.fingerprint and new.meta() == old.meta()


def test_session_table_is_built_on_one_thread_whatever_the_callers_setting(mb, monkeypatch):
    """GAMER and its TIGER baseline must decode one table; two threads round the sparse SVD and K-means
    differently (on the Tmall log, 74% of the items' codes changed), so the build pins one thread and restores
    the caller's setting after."""
    import genrec.sid.build as build

    ds, split = mb
    sc = SIDConfig(embeddings="cooccurrence", quantizer="rqkmeans", levels=2, codebook_size=4, seed=3)
    seen, fit = [], build.fit_quantizer
    monkeypatch.setattr(build, "fit_quantizer", lambda *a: (seen.append(torch.get_num_threads()), fit(*a))[1])
    before = torch.get_num_threads()
    tables = []
    try:
        for n in (2, 1):
            torch.set_num_threads(n)
            tables.append(build_session_sid_table(sc, ds, split))
            assert torch.get_num_threads() == n
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 1] and tables[0].fingerprint == tables[1].fingerprint


def test_session_table_needs_rqkmeans_or_a_saved_table(mb, tmp_path):
    ds, split = mb
    with pytest.raises(ConfigError, match="RQ-KMeans"):
        build_session_sid_table(SIDConfig(embeddings="cooccurrence", quantizer="rqvae"), ds, split)
    saved = build_session_sid_table(SIDConfig(embeddings="cooccurrence", quantizer="rqkmeans", levels=2,
                                              codebook_size=4), ds, split)
    saved.save(tmp_path / "mine.json")
    got = build_session_sid_table(SIDConfig(table=str(tmp_path), quantizer="rqvae"), ds, split)
    assert got.fingerprint == saved.fingerprint


def test_one_loader_reads_every_folder_kind(mb, tmp_path):
    ds, split = mb
    table = build_session_sid_table(SIDConfig(embeddings="cooccurrence", quantizer="rqkmeans", levels=2,
                                              codebook_size=4), ds, split)
    (tmp_path / "built").mkdir()
    (tmp_path / "built" / "health.json").write_text("{}")  # a genrec sid build folder: tables sit beside reports
    table.save(tmp_path / "built" / "sid_table.parquet")
    table.save(tmp_path / "loose.json")
    assert load_sid_table(tmp_path / "built").fingerprint == table.fingerprint
    assert load_sid_table(tmp_path / "loose.json").fingerprint == table.fingerprint
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="sid build"):
        load_sid_table(tmp_path / "empty")


def test_cf_source_is_handed_in_from_above(mb):
    ds, split = mb
    vec = torch.arange(NUM_ITEMS * 3, dtype=torch.float32).reshape(NUM_ITEMS, 3)
    seen = []

    def loader(run_dir: str) -> ItemEmbeddings:
        seen.append(run_dir)
        return ItemEmbeddings(np.arange(1, NUM_ITEMS + 1), vec, "cf:fake", tensor_fingerprint(vec))

    sc = SIDConfig(embeddings="cf", source_run="runs/retriever", quantizer="rqkmeans", levels=2, codebook_size=4)
    assert torch.equal(item_embeddings(sc, ds, cf_loader=loader).vectors, vec)
    table = build_session_sid_table(sc, ds, split, cf_loader=loader)
    assert seen == ["runs/retriever", "runs/retriever"] and table.quantizer_params["embeddings"] == "cf:fake"
