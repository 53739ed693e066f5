"""HPGR on the retrieval track: HSTU/SASRec initialised from the stage-1 table (two stages from one recipe),
and HSTU's top-K re-ranked by the hpgr ranker, on the tiny sequential toy dataset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from genrec.config import config_from_dict, load_config
from genrec.data.schema import Dataset, Interactions, load_dataset
from genrec.data.sequences import UserSequences
from genrec.data.splits import EvalSamples, leave_one_out
from genrec.errors import ConfigError
from genrec.eval.candidates import Candidates, full_ranking, reranked_ranks, training_prefixes
from genrec.models.pretrained import (
    ITEM_KEY,
    ITEM_TABLE_FILE,
    apply_pretrained,
    copy_pretrained_table,
    fill_stage1,
    parse_stage1,
    stage1_sem,
)
from genrec.models.registry import build_model
from genrec.train.pretrain import parse_pretrain_config, pretrain_sessions
from genrec.train.rerank import RerankTrainer, parse_rerank_config, rerank_run
from genrec.train.run import open_run, train_run
from genrec.train.stages import run_stages
from genrec.train.trainer import Trainer
from tests.conftest import (
    assert_same_weights,
    latest_state,
    latest_weights,
    load_benchmark,
    make_toy,
    tiny_cfg,
)

D = 16
TINY_PRETRAIN = {"sem": {"d_model": D, "num_heads": 2, "intra_layers": 1, "inter_layers": 1},
                 "session_gap": 3600, "max_len": 20, "epochs": 1, "max_steps": 3, "batch_size": 32,
                 "probe_rows": 8, "device": "cpu"}


def _retriever_cfg(model: str = "hstu", stages: list[str] | None = None, **train):
    raw = tiny_cfg(model, train={"device": "cpu", "epochs": 1, **train})
    raw["model"]["d_model"] = D
    raw["pretrain"] = TINY_PRETRAIN
    if stages is not None:
        raw["stages"] = stages
    return config_from_dict(raw)


def _artifact(ds: Dataset, out: Path) -> Path:
    seqs = UserSequences.from_interactions(ds.interactions)
    return pretrain_sessions(ds, leave_one_out(seqs), parse_pretrain_config(TINY_PRETRAIN), out)


def _with_last_two_changed(ds: Dataset) -> Dataset:
    """The same log with every user's validation and test item (its last two events) replaced."""
    inter = ds.interactions
    seqs = UserSequences.from_interactions(inter)
    item = inter.item_id.copy()
    last = np.concatenate([seqs.offsets[1:] - 1, seqs.offsets[1:] - 2])
    item[last] = (item[last] + 7) % ds.num_items + 1
    new = Interactions(inter.user_id, item, inter.timestamp)
    man = {**ds.manifest, "fingerprint": ds.manifest["fingerprint"] + "-changed"}
    return Dataset(interactions=new, items=ds.items, users=ds.users, manifest=man)


# -- 1. the stage-1 table initialises the retriever ---------------------------------------------------


def _pretrained_model(name: str, art: Path, num_items: int, **model):
    """A retriever built from its config alone (``model.stage1`` recorded from the artifact), then initialised."""
    params = fill_stage1({"name": name, "d_model": D, "num_layers": 1, "num_heads": 1, "pretrained": str(art),
                          **model})
    built = build_model(params, num_items, 20)
    assert apply_pretrained(built) == 1
    return built


@pytest.mark.parametrize("name", ["hstu", "sasrec"])
def test_pretrained_table_lands_in_the_item_embedding(tmp_path, name):
    ds = make_toy()
    art = _artifact(ds, tmp_path / "pre")
    table = load_file(str(art / ITEM_TABLE_FILE))[ITEM_KEY]  # (I+1, D)
    model = _pretrained_model(name, art, ds.num_items)
    assert torch.equal(model.item_emb.weight[1:], table[1:])
    assert not model.item_emb.weight[0].any()
    plain = build_model({"name": name, "d_model": D, "num_layers": 1, "num_heads": 1}, ds.num_items, 20)
    assert not torch.allclose(plain.item_emb.weight[1:], table[1:])
    emb = torch.nn.Embedding(ds.num_items + 1, D)
    copy_pretrained_table(emb, art, ds.num_items, name)  # the one-call form, for a bare embedding
    assert torch.equal(emb.weight, model.item_emb.weight)


@pytest.mark.parametrize("name", ["hstu", "sasrec"])
def test_a_pretrained_retriever_is_built_without_reading_the_artifact(tmp_path, name):
    """Its structure follows from model.stage1; building draws exactly one stage-1 SEM's random numbers (where
    earlier versions built the artifact's SEM) and initialising draws none, so seeded runs keep their weights."""
    ds = make_toy()
    art = _artifact(ds, tmp_path / "pre")
    params = fill_stage1({"name": name, "d_model": D, "num_layers": 1, "num_heads": 1, "pretrained": str(art)})
    shutil.rmtree(art)
    torch.manual_seed(0)
    model = build_model(params, ds.num_items, 20)
    after_build = torch.get_rng_state()
    torch.manual_seed(0)
    build_model({k: v for k, v in params.items() if k not in ("pretrained", "stage1")}, ds.num_items, 20)
    stage1_sem(parse_stage1(params["stage1"]))
    assert torch.equal(after_build, torch.get_rng_state())
    with pytest.raises(ConfigError, match="a pretrain artifact"):
        apply_pretrained(model)  # the table itself is read only when a run starts fresh
    _artifact(ds, art)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    apply_pretrained(model)
    assert torch.equal(state, torch.get_rng_state())


def test_the_trainer_initialises_a_fresh_run_only(tmp_path):
    """A fresh run starts from the table; a resumed one from its checkpoint, without reading the artifact."""
    ds = make_toy()
    art = _artifact(ds, tmp_path / "pre")
    table = load_file(str(art / ITEM_TABLE_FILE))[ITEM_KEY]  # (I+1, D)
    cfg = _retriever_cfg()
    cfg.model = {**cfg.model, "pretrained": str(art)}
    fresh = Trainer(cfg, tmp_path / "run", ds)
    assert torch.equal(fresh.model.item_emb.weight[1:], table[1:]) and cfg.model["stage1"]["num_items"] == ds.num_items
    fresh.fit()
    shutil.rmtree(art)
    resumed = Trainer(cfg, tmp_path / "run", ds)
    assert resumed.resumed_from is not None
    assert_same_weights(resumed.model.state_dict(), latest_weights(tmp_path / "run"))


def test_pretrained_width_or_catalogue_mismatch_is_a_config_error(tmp_path):
    ds = make_toy()
    art = _artifact(ds, tmp_path / "pre")
    with pytest.raises(ConfigError, match="width 16"):
        _pretrained_model("hstu", art, ds.num_items, d_model=32)
    with pytest.raises(ConfigError, match="items"):
        _pretrained_model("hstu", art, ds.num_items + 5)
    with pytest.raises(ConfigError, match="not a stage-1 artifact"):
        _pretrained_model("sasrec", tmp_path / "nowhere", ds.num_items)
    with pytest.raises(ConfigError, match="needs model.stage1"):  # models never read the artifact themselves
        build_model({"name": "hstu", "d_model": D, "pretrained": str(art)}, ds.num_items, 20)


def test_stage_one_never_sees_validation_or_test_items(tmp_path):
    """Leave-one-out cut-off: changing every user's last two items leaves the stage-1 artifact bit-identical."""
    ds = make_toy()
    cfg = _retriever_cfg(stages=["pretrain"])
    a = run_stages(cfg, tmp_path / "a", dataset=ds)["pretrain"]
    b = run_stages(cfg, tmp_path / "b", dataset=_with_last_two_changed(ds))["pretrain"]
    seqs = UserSequences.from_interactions(ds.interactions)
    assert a["num_events"] == int(leave_one_out(seqs).train_end.sum()) == len(ds.interactions.item_id) - 2 * len(seqs)
    assert a["events_fingerprint"] == b["events_fingerprint"]
    ta = load_file(str(tmp_path / "a" / "pretrain" / ITEM_TABLE_FILE))[ITEM_KEY]
    tb = load_file(str(tmp_path / "b" / "pretrain" / ITEM_TABLE_FILE))[ITEM_KEY]
    assert torch.equal(ta, tb)
    meta = json.loads((tmp_path / "a" / "pretrain" / "pretrain.json").read_text())
    assert meta["cutoff"]["kind"] == "split" and meta["cutoff"]["split"] == "leave_one_out"
    assert meta["config"]["seed"] == cfg.train.seed  # one artifact per benchmark seed


def test_stage_one_stopped_mid_epoch_resumes_to_the_same_artifact(tmp_path):
    """``train.max_steps`` stops stage 1 with a checkpoint and no artifact; the next run resumes it exactly."""
    ds = make_toy()
    pre = {**TINY_PRETRAIN, "epochs": 2, "max_steps": 0, "sem": {**TINY_PRETRAIN["sem"], "dropout": 0.2}}

    def cfg(**train):
        c = _retriever_cfg(stages=["pretrain"], checkpoint_every=2, **train)
        c.pretrain = pre
        return c

    run_stages(cfg(), tmp_path / "full", dataset=ds)
    stopped = run_stages(cfg(max_steps=5), tmp_path / "part", dataset=ds)
    art = tmp_path / "part" / "pretrain"
    assert stopped["stopped_early_by"] == "train.max_steps" and stopped["summary"]["global_step"] == 5
    assert not (art / "pretrain.json").exists() and latest_state(art)["step_in_epoch"] > 0  # mid-epoch
    resumed = run_stages(cfg(), tmp_path / "part", dataset=ds)
    assert not resumed["pretrain"]["skipped"]
    assert sorted(p.name for p in art.iterdir()) == ["item_table.safetensors", "pretrain.json", "sem.safetensors"]
    for name in ("item_table.safetensors", "sem.safetensors"):
        assert_same_weights(load_file(str(tmp_path / "full" / "pretrain" / name)), load_file(str(art / name)))
    meta_a, meta_b = (json.loads((r / "pretrain" / "pretrain.json").read_text()) for r in (tmp_path / "full",
                                                                                           tmp_path / "part"))
    assert meta_a.pop("seconds") >= 0 and meta_b.pop("seconds") >= 0
    assert meta_a == meta_b and len(meta_a["epoch_losses"]) == 2 and meta_a["steps"] == 8
    assert run_stages(cfg(), tmp_path / "part", dataset=ds)["pretrain"]["skipped"]  # and stage skipping holds


def test_two_stage_retriever_recipe_end_to_end(tmp_path):
    ds = make_toy()
    out = tmp_path / "run"
    res = train_run(_retriever_cfg(stages=["pretrain", "finetune"]), out, dataset=ds)
    assert res["stages"] == ["pretrain", "finetune"] and res["metrics"]["num_queries"] > 0
    assert (out / "finetune" / "results" / "test.json").exists()
    rec = json.loads((out / "finetune" / "config.json").read_text())
    assert rec["config"]["model"]["pretrained"] == str(out / "pretrain") and rec["config"]["stages"] == []
    # a re-run reuses stage 1 (same settings) and the finished fine-tuning run
    again = run_stages(_retriever_cfg(stages=["pretrain", "finetune"]), out, dataset=ds)
    assert again["pretrain"]["skipped"] and again["metrics"] == res["metrics"]
    # other stage-1 settings in the same folder are refused, not silently reused
    other = _retriever_cfg(stages=["pretrain", "finetune"])
    other.pretrain = {**TINY_PRETRAIN, "session_gap": 60}
    with pytest.raises(ConfigError, match="differs"):
        run_stages(other, out, dataset=ds)


# -- 2. re-ranking the retriever's top-K ---------------------------------------------------------------


def test_full_ranking_only_permutes_the_top_k():
    rng = np.random.default_rng(0)
    S, M, K = 40, 30, 8
    order = np.stack([rng.permutation(M) + 1 for _ in range(S)])  # (S, M) retriever's full order
    scores = rng.normal(size=(S, K))
    final = full_ranking(order, K, scores)
    assert np.array_equal(final[:, K:], order[:, K:])
    assert all(set(final[s, :K]) == set(order[s, :K]) for s in range(S))
    assert (final[:, :K] != order[:, :K]).any()
    # the rank the metrics use is the target's position in that full list
    targets = order[np.arange(S), rng.integers(0, M, S)]
    hstu_rank = np.argmax(order == targets[:, None], 1)
    c = Candidates(EvalSamples(np.arange(S), np.ones(S, np.int64)), targets, np.zeros(S, np.int64), order[:, :K],
                   np.zeros((S, K), np.float32), hstu_rank, np.zeros(S, np.float32))
    assert np.array_equal(reranked_ranks(c, scores), np.argmax(final == targets[:, None], 1))


def test_training_prefixes_stop_before_the_validation_item():
    seqs = UserSequences.from_interactions(make_toy().interactions)
    split = leave_one_out(seqs)
    p = training_prefixes(split)
    assert len(p) == int(np.maximum(split.train_end - 1, 0).sum())
    assert (p.hist_end >= 1).all() and (p.hist_end < split.train_end[p.rows]).all()
    last = training_prefixes(split, max_per_user=2)
    assert np.array_equal(np.unique(last.rows), np.unique(p.rows))
    assert (last.hist_end >= split.train_end[last.rows] - 2).all()


TINY_RERANK = {"model": {"d_model": D, "num_layers": 1, "num_heads": 2, "top_k": 4, "sigma": 1.0},
               "top_k": 10, "num_negatives": 4, "epochs": 2, "batch_size": 64, "patience": 0,
               "valid_users": 50, "eval_batch_size": 16, "device": "cpu"}


@pytest.fixture
def retriever_and_artifact(tmp_path, toy_dir):
    ds = load_dataset(toy_dir)  # a dataset folder, so the retriever run can be reopened from its record
    ret = tmp_path / "hstu"
    cfg = _retriever_cfg(epochs=2)
    cfg.data.path = str(toy_dir)
    train_run(cfg, ret, dataset=ds)
    return ds, ret, _artifact(ds, tmp_path / "pre")


def test_rerank_never_trains_on_a_validation_or_test_item(tmp_path, retriever_and_artifact, monkeypatch):
    ds, ret, art = retriever_and_artifact
    seen: list[tuple[np.ndarray, np.ndarray, torch.Tensor]] = []
    orig = RerankTrainer.train_batch

    def spy(self, c, idx, rng):
        out = orig(self, c, idx, rng)
        seen.append((c.samples.rows[idx], c.samples.hist_end[idx], out[0].items, out[1]))
        return out

    monkeypatch.setattr(RerankTrainer, "train_batch", spy)
    rerank_run(ret, art, parse_rerank_config(TINY_RERANK), tmp_path / "rr")
    seqs = UserSequences.from_interactions(ds.interactions)
    train_end = leave_one_out(seqs).train_end
    assert seen
    for rows, ends, hist, cands in seen:
        assert (ends < train_end[rows]).all()  # target index below the validation item
        positives = seqs.items[seqs.offsets[rows] + ends]
        assert np.array_equal(cands[:, 0].numpy(), positives)
        for b, (r, e) in enumerate(zip(rows, ends)):
            want = seqs.items[seqs.offsets[r] : seqs.offsets[r] + e][-20:]
            assert np.array_equal(hist[b, : len(want)].numpy(), want)  # history = training events before it
        assert (cands[:, 1:] != cands[:, :1]).all()  # the positive is never its own negative


def test_rerank_end_to_end_reports_both_stages(tmp_path, retriever_and_artifact):
    ds, ret, art = retriever_and_artifact
    out = tmp_path / "rr"
    res = rerank_run(ret, art, parse_rerank_config(TINY_RERANK), out)
    hstu = json.loads((ret / "results" / "test.json").read_text())["metrics"]
    # stage 1 on the same queries is exactly the retriever's own test evaluation
    for k in ("recall@5", "ndcg@10", "mrr", "num_queries"):
        assert res["metrics_retriever"][k] == pytest.approx(hstu[k])
    assert res["metrics"]["num_queries"] == hstu["num_queries"]
    # the top-K set is kept and the rest keeps its rank, so Recall@top_k cannot change
    assert res["metrics"]["recall@10"] == pytest.approx(res["metrics_retriever"]["recall@10"])  # top_k = 10
    assert (out / "results" / "test.json").exists() and (out / "best" / "model.safetensors").exists()
    assert res["train"]["finished"] and res["beta"] is not None
    # a finished run is reused, not retrained
    again = rerank_run(ret, art, parse_rerank_config(TINY_RERANK), out)
    assert again["metrics"] == res["metrics"]


def test_rerank_stopped_mid_epoch_resumes_to_the_same_weights(tmp_path, retriever_and_artifact):
    ds, ret, art = retriever_and_artifact
    rr = {**TINY_RERANK, "model": {**TINY_RERANK["model"], "dropout": 0.2}, "prefixes_per_epoch": 256,
          "checkpoint_every": 3}
    rerank_run(ret, art, parse_rerank_config(rr), tmp_path / "full")
    stopped = rerank_run(ret, art, parse_rerank_config({**rr, "max_steps": 6}), tmp_path / "part")
    assert stopped["stopped_early_by"] == "train.max_steps"
    assert latest_state(tmp_path / "part")["step_in_epoch"] > 0  # mid-epoch: the negatives' draws replay
    res = rerank_run(ret, art, parse_rerank_config(rr), tmp_path / "part")
    assert res["train"]["global_step"] == latest_state(tmp_path / "full")["global_step"] == 8
    assert_same_weights(latest_weights(tmp_path / "full"), latest_weights(tmp_path / "part"))
    full = json.loads((tmp_path / "full" / "results" / "test.json").read_text())
    assert res["metrics"] == full["metrics"] and res["beta"] == full["beta"]



def test_rerank_refuses_a_ranker_that_asks_for_impression_features(tmp_path, retriever_and_artifact):
    """hpgr passes the class check (its default takes no features); model.cross_features turns them on, and the
    retrieval track has no impressions to compute them from."""
    ds, ret, art = retriever_and_artifact
    rr = parse_rerank_config({**TINY_RERANK, "model": {**TINY_RERANK["model"], "cross_features": True}})
    with pytest.raises(ConfigError, match="model.cross_features"):
        rerank_run(ret, art, rr, tmp_path / "rr")

def test_rerank_settings_are_checked():
    with pytest.raises(ConfigError):
        parse_rerank_config({"top_k": 10, "num_negatives": 10})
    with pytest.raises(ConfigError):
        parse_rerank_config({"negatives": 3})
    with pytest.raises(ConfigError):
        parse_rerank_config({"model": {"name": "hstu"}})
    with pytest.raises(ConfigError, match="rerank.precision"):
        parse_rerank_config({"precision": "fp16"})
    with pytest.raises(ConfigError, match="rerank.progress_interval"):
        parse_rerank_config({"progress_interval": -1})


def test_rerank_hands_precision_and_progress_to_the_loop(tmp_path, retriever_and_artifact):
    """rerank: takes the same precision and progress knobs as train:, and the shared loop reads them."""
    ds, ret, art = retriever_and_artifact
    rr = parse_rerank_config({**TINY_RERANK, "precision": "fp32", "progress": False, "progress_interval": 5})
    trainer = RerankTrainer(open_run(ret, device="cpu"), ret, art, rr, tmp_path / "rr")
    tc = trainer.cfg.train
    assert (tc.precision, tc.progress, tc.progress_interval) == ("fp32", False, 5)


def test_beauty_recipe_and_benchmark_settings_fit_together():
    """The recipe's stage-1 width matches HSTU's table, and every re-rank variant is a valid hpgr re-ranker."""
    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "configs" / "hpgr-hstu-beauty.yaml")
    base = load_config(root / "configs" / "hstu-beauty.yaml")
    assert cfg.stages == ["pretrain", "finetune"] and cfg.model == base.model and cfg.train == base.train
    assert cfg.pretrain["sem"]["d_model"] == cfg.model["d_model"] and cfg.pretrain["session_gap"] == 86400
    bench = load_benchmark("rerank")
    for variant in bench.VARIANTS.values():
        rc = parse_rerank_config(variant)
        assert rc.top_k == 200 and rc.model["d_model"] == cfg.pretrain["sem"]["d_model"]
    report = load_benchmark("report")
    m = {k: 0.1 for k in ("recall@5", "ndcg@5", "recall@10", "ndcg@10", "recall@20", "ndcg@20")}
    rec = {"_file": "rerank-fused__toy.json", "dataset": "toy", "variant": "fused", "seeds": [1],
           "retriever_mean": m, "retriever_std": {}, "rerank_mean": {**m, "ndcg@10": 0.2}, "rerank_std": {},
           "target_in_top_k_mean": 0.3}
    table = report.rerank_table([rec])
    assert "| toy | fused | HSTU + HPGR re-rank | 1 | 0.1000 | 0.1000 | 0.1000 | 0.2000 |" in table
