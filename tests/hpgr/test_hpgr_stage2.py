"""HPGR stage 2: the PGSA ranker (dense == gathered for the whole model, all-kept == plain HSTU ranker),
the frozen relevance table, loading the stage-1 artifact, and the in-window sessioniser."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from genrec.data.sequences import SeqBatch
from genrec.data.sessions import sessionize
from genrec.errors import ConfigError
from genrec.models.hpgr import HPGRRanker, fit_table, pgsa_layer, window_sessions
from genrec.models.hstu_ranker import HSTURanker
from genrec.models.pretrained import (
    apply_pretrained,
    fill_stage1,
    load_pretrained,
    parse_stage1,
    read_meta,
    stage1_record,
    stage1_sem,
)
from genrec.models.registry import MODELS, build_model
from genrec.nn.hstu_block import DenseAttention
from genrec.nn.sparse import pgsa_mask
from tests.hpgr.conftest import mean_bce

V = 40  # catalogue size of every test here


def _batch(B=5, N=24, seed=0, full=False) -> SeqBatch:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, N + 1, (B,), generator=g)
    lengths[0] = N
    if full:
        lengths[:] = N
    valid = torch.arange(N)[None] < lengths[:, None]
    ts = torch.cumsum(torch.randint(1, 7200, (B, N), generator=g), 1) * valid
    return SeqBatch(items=torch.randint(1, V + 1, (B, N), generator=g) * valid, timestamps=ts, lengths=lengths,
                    query_time=ts.max(1).values + 60)


def _cfg(**kw) -> HPGRRanker.Config:
    base = {"d_model": 16, "num_layers": 2, "num_heads": 2, "dropout": 0.0, "linear_dropout": 0.0, "top_k": 3,
            "sigma": 1.0}
    return HPGRRanker.Config(**{**base, **kw})


def _pair(**kw) -> tuple[HPGRRanker, HPGRRanker]:
    torch.manual_seed(0)
    dense = HPGRRanker(_cfg(impl="dense", **kw), num_items=V, max_len=24)
    gather = HPGRRanker(_cfg(impl="gather", **kw), num_items=V, max_len=24)
    gather.load_state_dict(dense.state_dict())
    return dense, gather


def test_registered_as_ranker_and_config_checked():
    assert MODELS["hpgr"] is HPGRRanker and HPGRRanker.kinds == ("ranker",)
    m = build_model({"name": "hpgr", "d_model": 8, "num_heads": 2, "top_k": 4, "impl": "dense"}, num_items=5,
                    max_len=6)
    assert isinstance(m, HPGRRanker) and isinstance(m, HSTURanker)
    for bad in ({"impl": "sparse"}, {"rows": "some"}, {"top_k": 0}, {"sigma": -1.0}, {"attn_dropout": 0.1}):
        with pytest.raises(ConfigError):
            build_model({"name": "hpgr", "d_model": 8, "num_heads": 2, **bad}, num_items=5, max_len=6)
    with pytest.raises(ConfigError, match="pretrain stage"):
        fill_stage1({"name": "hpgr", "d_model": 8, "num_heads": 2, "pretrained": "no/such/folder"})
    with pytest.raises(ConfigError, match="needs model.stage1"):  # a model never reads the artifact itself
        build_model({"name": "hpgr", "d_model": 8, "num_heads": 2, "pretrained": "no/such/folder"}, 5, 6)


@pytest.mark.parametrize("rows,window,C,seed", [("all", "position", 1, 0), ("all", "position", 3, 1),
                                                 ("candidate", "position", 2, 2), ("all", "score", 1, 3)])
def test_dense_and_gathered_model_agree_with_gradients(rows, window, C, seed):
    dense, gather = _pair(rows=rows, window=window)
    batch = _batch(seed=seed)
    g = torch.Generator().manual_seed(seed)
    cands = torch.randint(1, V + 1, (5, C), generator=g)
    if C > 1:
        cands[1, -1] = 0  # a padding candidate is ignored by both
    labels = torch.randint(0, 2, (5, C), generator=g).float()
    ld, lg = mean_bce(dense, batch, cands, labels), mean_bce(gather, batch, cands, labels)
    ld.backward()
    lg.backward()
    assert torch.allclose(dense.score(batch, cands), gather.score(batch, cands), atol=1e-5)
    assert abs(float(ld.detach()) - float(lg.detach())) < 1e-5
    for (name, pd), (_, pg) in zip(dense.named_parameters(), gather.named_parameters()):
        if pd.grad is not None or pg.grad is not None:
            assert torch.allclose(pd.grad, pg.grad, atol=1e-5), name
    # the mask is really sparse here, and it changes the scores
    w = gather.column_weights(batch, cands[:, 0])
    assert int((w > 0).sum()) < int(batch.lengths.sum())
    with torch.no_grad():
        plain = HSTURanker(HSTURanker.Config(d_model=16, num_heads=2), V, 24)
        plain.load_state_dict(dense.state_dict())
        assert not torch.allclose(plain.score(batch, cands), gather.score(batch, cands), atol=1e-4)


@pytest.mark.parametrize("impl,rows", [("gather", "all"), ("dense", "all"), ("gather", "candidate")])
def test_all_columns_kept_equals_the_plain_hstu_ranker(impl, rows):
    torch.manual_seed(0)
    hpgr = HPGRRanker(_cfg(top_k=24, impl=impl, rows=rows), V, 24).eval()  # K >= N: every column kept
    plain = HSTURanker(HSTURanker.Config(d_model=16, num_heads=2), V, 24).eval()
    plain.load_state_dict(hpgr.state_dict())
    batch = _batch(seed=5)
    cands = torch.randint(1, V + 1, (5, 3))
    with torch.no_grad():
        assert torch.allclose(hpgr.score(batch, cands), plain.score(batch, cands), atol=1e-5)
        off = HPGRRanker(_cfg(top_k=3, pgsa=False), V, 24).eval()  # the dense-attention ablation
        off.load_state_dict(hpgr.state_dict())
        assert torch.allclose(off.score(batch, cands), plain.score(batch, cands), atol=1e-6)


def test_pgsa_layer_equals_the_ranker_layer_under_the_pgsa_mask():
    _, model = _pair()
    layer = model.layers[0]
    batch = _batch(seed=4)
    x = torch.randn(5, 25, 16)
    w = model.column_weights(batch, torch.randint(1, V + 1, (5,)))
    for rows in ("all", "candidate"):
        want = layer(x, DenseAttention(pgsa_mask(w, batch.lengths, rows), 24))
        for impl in ("gather", "dense"):
            got = pgsa_layer(layer, x, w, batch.lengths, 24, rows, impl)
            real = torch.cat([torch.arange(24)[None] < batch.lengths[:, None], torch.ones(5, 1, dtype=torch.bool)], 1)
            assert torch.allclose(got * real[..., None], want * real[..., None], atol=1e-5), (rows, impl)


def test_scores_do_not_depend_on_batch_mates_or_candidate_grouping():
    _, model = _pair()
    model.eval()
    batch = _batch(seed=7)
    cands = torch.randint(1, V + 1, (5, 3))
    with torch.no_grad():
        together = model.score(batch, cands)
        alone = torch.cat([model.score(batch, cands[:, c : c + 1]) for c in range(3)], dim=1)
        chunks = model.score(batch, cands, micro_batch=2)
    assert torch.allclose(together, alone, atol=1e-5) and torch.allclose(together, chunks, atol=1e-5)


def _from_artifact(artifact, num_items: int = V, **kw) -> HPGRRanker:
    """The ranker built from its config alone (``stage1`` recorded from the artifact), then initialised from it."""
    model = HPGRRanker(_cfg(pretrained=str(artifact), stage1=stage1_record(read_meta(artifact)), **kw),
                       num_items=num_items, max_len=24)
    assert apply_pretrained(model) == 1
    return model


def test_loads_the_artifact_and_keeps_relevance_frozen(artifact):
    pre = load_pretrained(artifact)
    torch.manual_seed(0)
    model = _from_artifact(artifact, use_sem=False)
    assert torch.equal(model.item_emb.weight, pre.item_table)  # initialised from the pre-trained table
    frozen = model.relevance_source().clone()
    assert torch.equal(frozen, pre.item_table)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "relevance_table" not in trainable and "relevance_table" in model.state_dict()
    batch = _batch(seed=2, full=True)
    cands = torch.randint(1, V + 1, (5, 1))
    w0 = model.column_weights(batch, cands[:, 0])
    assert not model.relevance(batch, cands[:, 0]).requires_grad
    opt = torch.optim.SGD(model.parameters(), lr=5.0)
    for _ in range(3):
        opt.zero_grad()
        mean_bce(model, batch, cands, torch.ones(5, 1)).backward()
        opt.step()
    assert not torch.equal(model.item_emb.weight, pre.item_table)  # the table fine-tunes ...
    assert torch.equal(model.relevance_source(), frozen)  # ... the relevance copy does not
    assert torch.equal(model.column_weights(batch, cands[:, 0]), w0)
    live = _from_artifact(artifact, use_sem=False, freeze_relevance=False)
    assert live.relevance_source().data_ptr() == live.item_emb.weight.data_ptr()  # follows the fine-tuned table
    with pytest.raises(ConfigError, match="holds 40 items"):
        _from_artifact(artifact, num_items=V + 1)


@pytest.mark.parametrize("use_sem", [True, False])
def test_built_from_stage1_alone_with_the_draws_of_loading(artifact, use_sem):
    """The structure follows from model.stage1 (the named folder does not exist: nothing is read); the SEM (kept or
    dropped) and W_sem are built after the ranker's own parameters, where loading the artifact used to build them,
    so the random draws, and hence every seeded run, are those of earlier versions."""
    stage1 = stage1_record(read_meta(artifact))
    torch.manual_seed(0)
    model = HPGRRanker(_cfg(pretrained="no/such/folder", stage1=stage1, use_sem=use_sem), num_items=V, max_len=24)
    after = torch.get_rng_state()
    torch.manual_seed(0)
    plain = HPGRRanker(_cfg(), num_items=V, max_len=24)
    sem = stage1_sem(parse_stage1(stage1))
    if use_sem:
        torch.nn.Linear(16, 16, bias=False)  # W_sem
    assert torch.equal(after, torch.get_rng_state())
    own = model.state_dict()
    for k, v in plain.state_dict().items():
        assert torch.equal(own[k], v), k
    if use_sem:  # the frozen SEM is part of the weights (its values come from the artifact or the run)
        assert all(torch.equal(own[f"sem.{k}"], v) for k, v in sem.state_dict().items())
        assert not any(p.requires_grad for p in model.sem.parameters())
    else:
        assert own["relevance_table"].shape == (V + 1, 16) and not any(k.startswith("sem") for k in own)


def test_frozen_sem_adds_session_aware_inputs(artifact):
    torch.manual_seed(0)
    model = _from_artifact(artifact, use_sem=True)
    torch.manual_seed(0)
    bare = _from_artifact(artifact, use_sem=False)
    bare.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith(("sem.", "sem_proj."))},
                         strict=False)
    batch = _batch(seed=3)
    cands = torch.randint(1, V + 1, (5, 2))
    model.train()
    assert not model.sem.training  # frozen SEM: no dropout while the ranker trains
    model.eval()
    bare.eval()
    with torch.no_grad():
        assert torch.allclose(model.score(batch, cands), bare.score(batch, cands), atol=1e-6)  # W_sem starts at 0
        feats = model.sem_features(batch)
        assert feats.shape == (5, 24, 16) and feats[0].abs().sum() > 0
        model.sem_proj.weight.normal_()
        assert not torch.allclose(model.score(batch, cands), bare.score(batch, cands), atol=1e-4)
    model.train()
    mean_bce(model, batch, cands, torch.ones(5, 2)).backward()
    assert model.sem_proj.weight.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in model.sem.parameters())


def test_sem_relevance_reads_the_session_context(artifact):
    """relevance="sem": r_j = cos(Ê[c], u_j) with u_j the frozen SEM's event vector, so moving event 0 into
    another session changes what PGSA keeps for the same items, while the table relevance stays put."""
    torch.manual_seed(0)
    model = _from_artifact(artifact, use_sem=True, relevance="sem")
    table = _from_artifact(artifact, use_sem=True)
    batch = _batch(seed=4, full=True)
    cands = torch.randint(1, V + 1, (5,))
    model.eval()
    with torch.no_grad():
        u = F.normalize(model.sem_features(batch), dim=-1)  # (B, N, Dp)
        e = F.normalize(model.relevance_source(), dim=-1)[cands]  # (B, Dp)
        assert torch.allclose(model.relevance(batch, cands), torch.einsum("bnd,bd->bn", u, e), atol=1e-6)
        assert not torch.allclose(model.relevance(batch, cands), table.relevance(batch, cands), atol=1e-3)
        moved = SeqBatch(items=batch.items, timestamps=batch.timestamps.clone(), lengths=batch.lengths,
                         query_time=batch.query_time)
        moved.timestamps[:, 1:] += 10 ** 7  # event 0 alone in its session, every other event unchanged
        assert not torch.allclose(model.relevance(moved, cands)[:, 0], model.relevance(batch, cands)[:, 0])
        assert torch.equal(table.relevance(moved, cands), table.relevance(batch, cands))
        assert model.score(batch, cands[:, None]).shape == (5, 1)
    with pytest.raises(ConfigError, match="model.relevance='sem'"):
        _from_artifact(artifact, use_sem=False, relevance="sem")
    with pytest.raises(ConfigError, match="model.relevance must be one of"):
        HPGRRanker(_cfg(relevance="items"), num_items=V, max_len=24)


def test_fit_table_keeps_dot_products():
    g = torch.Generator().manual_seed(0)
    table = torch.randn(30, 8, generator=g)
    table[0] = 0
    wide = fit_table(table, 12)
    assert torch.allclose(wide @ wide.T, table @ table.T, atol=1e-5)
    low_rank = torch.cat([torch.zeros(1, 8), torch.randn(29, 4, generator=g) @ torch.randn(4, 8, generator=g)])
    narrow = fit_table(low_rank, 4)  # a rank-4 table loses nothing in 4 dimensions
    assert narrow.shape == (30, 4) and torch.allclose(narrow @ narrow.T, low_rank @ low_rank.T, atol=1e-4)


def test_window_sessions_follow_the_sessionizer_rule():
    g = torch.Generator().manual_seed(0)
    B, N = 6, 40
    lengths = torch.tensor([40, 33, 1, 0, 12, 40])
    gaps = torch.tensor([5, 50, 4000])[torch.randint(0, 3, (B, N), generator=g)]
    ts = torch.cumsum(gaps, 1)
    for gap, cap in ((3600, 7), (None, 5), (3600, None)):
        sid = window_sessions(ts, lengths, gap, cap)
        for b in range(B):
            n = int(lengths[b])
            want = sessionize(np.zeros(n, np.int64), ts[b, :n].numpy(), gap, cap)
            assert sid[b, :n].tolist() == want.tolist() and not sid[b, n:].any()


def test_learns_to_find_the_candidate_in_the_history():
    # label = 1 iff the candidate is in the history; with relevance from the ranker's own (detached) table the
    # candidate's copy in the history is always an anchor, so the sparse model can learn it
    torch.manual_seed(0)
    B, N = 32, 16
    items = torch.randint(1, V + 1, (B, N))
    pos = items[torch.arange(B), torch.randint(0, N, (B,))]
    cands = torch.stack([pos, torch.randint(1, V + 1, (B,))], 1)
    labels = (cands[:, :, None] == items[:, None, :]).any(-1).float()
    ts = torch.cumsum(torch.randint(1, 100, (B, N)), 1)
    batch = SeqBatch(items=items, timestamps=ts, lengths=torch.full((B,), N), query_time=ts[:, -1] + 10)
    model = HPGRRanker(_cfg(num_layers=1, top_k=2, sigma=0.0), num_items=V, max_len=N)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = mean_bce(model, batch, cands, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0], losses[::10]
