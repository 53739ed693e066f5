"""MTGR: dynamic mask vs its definition, token groups, group layer norm, candidate isolation, exposure-time
causality, learning a toy CTR rule end to end through impression_features, config errors."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from genrec.data.features import CROSS_FEATURES, impression_features
from genrec.data.impressions import impressions_from_ratings, make_impression_batch
from genrec.data.schema import Dataset, Interactions
from genrec.data.sequences import SeqBatch
from genrec.errors import ConfigError
from genrec.eval.ranking import auc
from genrec.models import MODELS
from genrec.models.mtgr import (
    GROUP_C,
    GROUP_R,
    GROUP_S,
    GROUP_U,
    MTGR,
    mtgr_mask,
)
from genrec.models.registry import build_model
from genrec.nn.hstu_block import GroupLayerNorm
from tests.hpgr.conftest import mean_bce

U, S, R, C = GROUP_U, GROUP_S, GROUP_R, GROUP_C


def _model(**kw) -> MTGR:
    cfg = MTGR.Config(**{"d_model": 16, "num_layers": 2, "num_heads": 2, "feat_dim": 4, **kw})
    torch.manual_seed(0)
    return MTGR(cfg, num_items=30, max_len=10).eval()


def _batch(B=3, N=7, seed=0) -> SeqBatch:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([N, 4, 1])[:B]
    valid = torch.arange(N)[None] < lengths[:, None]
    ts = torch.cumsum(torch.randint(1, 20_000, (B, N), generator=g), 1) * valid
    return SeqBatch(items=torch.randint(1, 31, (B, N), generator=g) * valid, timestamps=ts, lengths=lengths,
                    query_time=ts.max(1).values + 60)


def _feats(B, C, seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    f = {name: torch.randint(0, v, (B, C), generator=g) for name, v in CROSS_FEATURES.items()}
    f["cand_category"] = torch.randint(0, 6, (B, C), generator=g)
    f["profile"] = torch.randint(0, 50, (B, 3), generator=g)
    return f


def _cols(f: dict[str, torch.Tensor], cols) -> dict[str, torch.Tensor]:
    return {k: (v if k == "profile" else v[:, cols]) for k, v in f.items()}


def test_registered_as_ranker_with_features():
    assert MODELS["mtgr"] is MTGR and MTGR.kinds == ("ranker",) and MTGR.needs_features is True
    m = build_model({"name": "mtgr"}, num_items=5, max_len=4)  # all defaults work
    batch = _batch(N=4)
    batch = SeqBatch(items=batch.items.clamp(max=5), timestamps=batch.timestamps, lengths=batch.lengths,
                     query_time=batch.query_time)
    assert m.score(batch, torch.tensor([[1], [2], [3]])).shape == (3, 1)  # no features: all read as missing


def _mask_by_definition(groups, times, real, i, j, mode="dynamic", history="full") -> bool:
    """Spec §4.3 restated token by token."""
    if not (real[i] and real[j]):
        return False
    gi, gj = groups[i], groups[j]
    if gi == C:
        return i == j or gj == U or (gj in (S, R) and times[j] < times[i])
    if gj == C:
        return False
    if mode == "causal":
        return j <= i
    if gj == U:
        return True
    if gj == S:
        return j <= i if (gi == S and history == "causal") else True
    return gi == R and (times[j] < times[i] or i == j)  # gj == R


@pytest.mark.parametrize("mode,history", [("dynamic", "full"), ("dynamic", "causal"), ("causal", "full")])
def test_mask_equals_definition_on_hand_built_layout(mode, history):
    # row 0: 2 profile tokens | S S S | R R (tie at 50) R | pad | 3 candidates at different exposure times | pad
    # row 1: 2 profile tokens | S | pad ... | one candidate
    groups = torch.tensor([
        [U, U, S, S, S, R, R, R, S, C, C, C, C],
        [U, U, S, S, S, S, S, S, S, C, C, C, C],
    ])
    times = torch.tensor([
        [0, 0, 10, 20, 20, 50, 50, 70, 0, 60, 80, 50, 0],
        [0, 0, 5, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0],
    ])
    real = torch.tensor([
        [1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 0],
        [1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
    ]).bool()
    m = mtgr_mask(groups, times, real, mode, history)
    for b in range(2):
        for i in range(13):
            for j in range(13):
                want = _mask_by_definition(groups[b].tolist(), times[b].tolist(), real[b].tolist(), i, j, mode, history)
                assert bool(m[b, i, j]) == want, (b, i, j)
    if mode == "dynamic":
        # spot checks: the candidate exposed at 60 sees R@50 (both) but not R@70; R@50s do not see each other
        assert m[0, 9, 5] and m[0, 9, 6] and not m[0, 9, 7] and not m[0, 9, 10]
        assert not m[0, 5, 6] and not m[0, 6, 5] and m[0, 7, 5] and m[0, 7, 6]
        assert not m[0, 11, 5]  # exposed at 50: events at 50 are not strictly earlier
        assert not m[0, 2, 5] and not m[0, 0, 5]  # static tokens never see real-time ones


def test_token_groups_from_a_batch():
    model = _model(realtime_max=3, realtime_window=100)
    t = torch.tensor([[100, 200, 850, 900, 950, 990, 0], [100, 950, 960, 0, 0, 0, 0]])
    batch = SeqBatch(items=torch.tensor([[1, 2, 3, 4, 5, 6, 0], [1, 2, 3, 0, 0, 0, 0]]), timestamps=t,
                     lengths=torch.tensor([6, 3]), query_time=torch.tensor([1000, 1000]))
    _, groups, times, real, Fn = model.tokens(batch, torch.tensor([[7, 8], [9, 0]]))
    assert Fn == 1  # no features: one "missing profile" token
    # row 0: last 3 events (950, 990 within 100 s; 900 is exactly 100 s old) are real-time
    assert groups[0].tolist() == [U, S, S, S, R, R, R, S, C, C]
    assert groups[1].tolist() == [U, S, R, R, S, S, S, S, C, C]
    assert real[1].tolist() == [True, True, True, True, False, False, False, False, True, False]
    assert times[0, -2:].tolist() == [1000, 1000]
    no_rt = _model(realtime_max=0)
    assert (no_rt.tokens(batch, torch.tensor([[7], [9]]))[1] != R).all()


def test_group_layer_norm_uses_per_group_affine():
    torch.manual_seed(0)
    gln = GroupLayerNorm(4, 6)
    with torch.no_grad():
        gln.weight.normal_()
        gln.bias.normal_()
    x = torch.randn(2, 5, 6)
    groups = torch.tensor([[0, 1, 2, 3, 1], [3, 3, 0, 2, 2]])
    y = gln(x, groups)
    for b in range(2):
        for t in range(5):
            g = int(groups[b, t])
            ref = torch.nn.functional.layer_norm(x[b, t], (6,), gln.weight[g], gln.bias[g], eps=1e-6)
            assert torch.allclose(y[b, t], ref, atol=1e-5)
    shared = GroupLayerNorm(4, 6, enabled=False)
    assert shared.weight.shape == (1, 6)
    assert torch.allclose(shared(x, groups), torch.nn.functional.layer_norm(x, (6,), eps=1e-6), atol=1e-5)


def test_candidates_do_not_see_each_other():
    model = _model()
    batch = _batch()
    cands = torch.tensor([[3, 5, 7, 9], [1, 2, 3, 4], [30, 29, 28, 3]])
    f = _feats(3, 4)
    with torch.no_grad():
        together = model.score(batch, cands, features=f)
        alone = torch.cat([model.score(batch, cands[:, c : c + 1], features=_cols(f, [c])) for c in range(4)], dim=1)
        # change candidate 2 (id and every feature): the other candidates' scores stay the same
        cands2 = cands.clone()
        cands2[:, 2] = torch.tensor([11, 12, 13])
        f2 = {k: v.clone() for k, v in f.items()}
        for k in CROSS_FEATURES:
            f2[k][:, 2] = (f2[k][:, 2] + 1) % CROSS_FEATURES[k]
        changed = model.score(batch, cands2, features=f2)
        # extra padding in the history slots and a padding candidate change nothing either
        wide = SeqBatch(items=torch.nn.functional.pad(batch.items, (0, 3)),
                        timestamps=torch.nn.functional.pad(batch.timestamps, (0, 3)),
                        lengths=batch.lengths, query_time=batch.query_time)
        padded = model.score(wide, torch.nn.functional.pad(cands, (0, 1)),
                             features={k: (v if k == "profile" else torch.nn.functional.pad(v, (0, 1)))
                                       for k, v in f.items()})
    assert together.shape == (3, 4)
    assert torch.allclose(together, alone, atol=1e-5)
    keep = [0, 1, 3]
    assert torch.allclose(together[:, keep], changed[:, keep], atol=1e-6)
    assert not torch.allclose(together[:, 2], changed[:, 2], atol=1e-4)
    assert torch.allclose(together, padded[:, :4], atol=1e-5)


def test_candidate_sees_only_events_before_its_exposure_time():
    model = _model(realtime_max=7, realtime_window=0)  # the whole history is real-time: time-causal
    batch = _batch()
    cands = torch.tensor([[3, 4], [5, 6], [7, 8]])
    t = batch.timestamps[0]
    ct = batch.query_time[:, None].repeat(1, 2)
    ct[0, 0] = t[4]  # candidate (0, 0) was exposed when event 4 happened: it sees events 0..3 only
    with torch.no_grad():
        base = model.score(batch, cands, candidate_times=ct)
        items = batch.items.clone()
        items[0, 4:] = torch.tensor([30, 29, 28])
        late = model.score(SeqBatch(items=items, timestamps=batch.timestamps, lengths=batch.lengths,
                                    query_time=batch.query_time), cands, candidate_times=ct)
        items[0, 0] = 27
        early = model.score(SeqBatch(items=items, timestamps=batch.timestamps, lengths=batch.lengths,
                                     query_time=batch.query_time), cands, candidate_times=ct)
    assert torch.allclose(base[0, 0], late[0, 0], atol=1e-6)  # later events are invisible to it
    assert not torch.allclose(base[0, 1], late[0, 1], atol=1e-5)  # but not to the request-time candidate
    assert not torch.allclose(late[0, 0], early[0, 0], atol=1e-5)  # earlier events are visible


def _toy_ctr(num_users=80, num_items=40, n_per_user=40, seed=0) -> Dataset:
    """Each user likes one of 4 categories: rating 5 on its items, 1 elsewhere (5% flipped)."""
    rng = np.random.default_rng(seed)
    cat = np.arange(num_items) % 4 + 1  # item k+1 -> category
    fav = rng.integers(1, 5, num_users)
    u, i, t, r = [], [], [], []
    for user in range(num_users):
        items = rng.integers(1, num_items + 1, n_per_user)
        like = (cat[items - 1] == fav[user]) ^ (rng.random(n_per_user) < 0.05)
        u += [user + 1] * n_per_user
        i += items.tolist()
        t += (1_000_000 + np.cumsum(rng.integers(60, 7200, n_per_user))).tolist()
        r += np.where(like, 5.0, 1.0).tolist()
    inter = Interactions(np.array(u, dtype=np.int64), np.array(i, dtype=np.int64), np.array(t, dtype=np.int64),
                         rating=np.array(r, dtype=np.float32))
    items = pa.table({"item_id": np.arange(1, num_items + 1, dtype=np.int64),
                      "external_id": [str(k) for k in range(num_items)], "category_id": cat.astype(np.int64)})
    users = pa.table({"user_id": np.arange(1, num_users + 1, dtype=np.int64),
                      "external_id": [str(k) for k in range(num_users)],
                      "gender": rng.choice(["M", "F"], num_users).tolist()})
    return Dataset(interactions=inter, items=items, users=users,
                   manifest={"counts": {"users": num_users, "items": num_items}, "fingerprint": "toy"})


def test_tiny_mtgr_learns_a_toy_ctr_rule():
    ds = _toy_ctr()
    imps = impressions_from_ratings(ds.interactions, min_history=1)
    feats = impression_features(ds, imps, int(imps.timestamp.max()) + 1)
    assert feats["profile"].shape == (len(imps), 1)
    torch.manual_seed(0)
    model = MTGR(MTGR.Config(d_model=16, num_layers=1, num_heads=2, feat_dim=4, dropout=0.0, linear_dropout=0.0),
                 num_items=ds.num_items, max_len=20)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)

    def batch_of(idx):
        batch, cands, labels = make_impression_batch(ds.interactions, imps, idx, 20)
        return batch, cands, labels, {k: torch.from_numpy(v[idx]) for k, v in feats.items()}

    losses = []
    for _ in range(100):
        batch, cands, labels, f = batch_of(rng.choice(len(imps), 128, replace=False))
        loss = mean_bce(model, batch, cands, labels, features=f)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    idx = np.arange(len(imps))
    with torch.no_grad():
        batch, cands, labels, f = batch_of(idx)
        scores = model.score(batch, cands, features=f)[:, 0].numpy()
    assert np.mean(losses[-20:]) < 0.75 * np.mean(losses[:10])
    assert auc(imps.label.astype(np.int64), scores) > 0.8


@pytest.mark.parametrize("key,value", [
    ("d_model", 0), ("num_layers", -1), ("num_heads", 3), ("dropout", 1.0), ("linear_dropout", -0.1),
    ("realtime_max", -1), ("realtime_window", -5), ("mask", "full"), ("history_mask", "bidirectional"),
    ("time_bucket_fn", "linear"), ("profile_buckets", 0), ("feat_dim", 2.5), ("dqk", -1),
])
def test_bad_config_values_are_config_errors(key, value):
    with pytest.raises(ConfigError, match=key):
        MTGR(MTGR.Config(d_model=16, **{key: value}) if key != "d_model" else MTGR.Config(d_model=value),
             num_items=10, max_len=5)


def test_config_errors_through_the_registry_and_the_data():
    with pytest.raises(ConfigError, match="unknown config key"):
        build_model({"name": "mtgr", "d_modle": 8}, num_items=5, max_len=4)
    model = _model(max_profile_fields=2)
    with pytest.raises(ConfigError, match="max_profile_fields"):
        model.score(_batch(), torch.tensor([[1], [2], [3]]), features={"profile": torch.ones(3, 3, dtype=torch.long)})
