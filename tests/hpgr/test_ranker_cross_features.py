"""Equal inputs: MTGR's candidate cross features on the HSTU ranker and HPGR (``model.cross_features``).

Off (the default): the same weights from a seed, features ignored, no feature tables (the bit-for-bit comparison
with the pre-refactor models is ``tests/core/test_hstu_block.py``). On: a candidate's features reach its score and
no other candidate's, on every HPGR path. Elsewhere: the trainer feeds them and a reopened run reproduces its
numbers (``tests/hpgr/test_ranker_trainer.py``); no feature and no ranker's score of an impression reads a later
event (``tests/hpgr/test_features.py``).
"""

from __future__ import annotations

import pytest
import torch

from genrec.data.features import CROSS_FEATURES
from genrec.data.sequences import SeqBatch
from genrec.models.hpgr import HPGRRanker
from genrec.models.hstu_ranker import HSTURanker
from genrec.models.mtgr import MTGR
from genrec.models.registry import build_model

V, N, B, C = 40, 12, 4, 3
HPGR_PATHS = [{"pgsa": False}, {"impl": "dense"}, {"impl": "dense", "rows": "candidate"}, {"impl": "gather"},
              {"impl": "gather", "rows": "candidate"}]
RANKERS = [("hstu_ranker", {})] + [("hpgr", {"top_k": 3, "sigma": 1.0, **kw}) for kw in HPGR_PATHS]


def _batch(seed: int = 0) -> SeqBatch:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([N, 7, 3, 1])
    valid = torch.arange(N)[None] < lengths[:, None]
    ts = torch.cumsum(torch.randint(1, 7200, (B, N), generator=g), 1) * valid
    return SeqBatch(items=torch.randint(1, V + 1, (B, N), generator=g) * valid, timestamps=ts, lengths=lengths,
                    query_time=ts.max(1).values + 60)


def _features(seed: int = 0, c: int = C) -> dict[str, torch.Tensor]:
    """Every key impression_features returns; the rankers read only the cross features."""
    g = torch.Generator().manual_seed(seed)
    f = {name: torch.randint(0, v, (B, c), generator=g) for name, v in CROSS_FEATURES.items()}
    f["cand_category"] = torch.randint(0, 6, (B, c), generator=g)
    f["profile"] = torch.randint(0, 50, (B, 2), generator=g)
    return f


def _model(name: str, seed: int = 0, **kw) -> HSTURanker:
    torch.manual_seed(seed)
    return build_model({"name": name, "d_model": 16, "num_layers": 2, "num_heads": 2, "dropout": 0.0,
                        "linear_dropout": 0.0, **kw}, V, N).eval()


def test_the_switch_is_the_features_capability():
    assert HSTURanker.needs_features is False and HPGRRanker.needs_features is False  # the class: its default
    assert MTGR.needs_features is True
    assert _model("hstu_ranker").needs_features is False
    assert _model("hstu_ranker", cross_features=True).needs_features is True
    assert _model("hpgr", cross_features=True, top_k=3).needs_features is True


@pytest.mark.parametrize("name,kw", RANKERS[:2])
def test_off_is_the_model_without_features(name, kw):
    off, on = _model(name, **kw), _model(name, cross_features=True, **kw)
    a, b = off.state_dict(), on.state_dict()
    assert not any(k.startswith("cross_emb.") for k in a)  # no tables when off
    assert list(a) == [k for k in b if not k.startswith("cross_emb.")]  # built last: a seed draws the rest as before
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [k for k in b if k.startswith("cross_emb.")] == [f"cross_emb.{n}.weight" for n in CROSS_FEATURES]
    batch, cands = _batch(), torch.randint(1, V + 1, (B, C))
    with torch.no_grad():
        assert torch.equal(off.score(batch, cands, features=_features()), off.score(batch, cands))  # ignored


@pytest.mark.parametrize("name,kw", RANKERS)
def test_a_candidates_features_reach_its_score_and_no_other(name, kw):
    model = _model(name, cross_features=True, **kw)
    batch, f = _batch(1), _features(1)
    cands = torch.randint(1, V + 1, (B, C), generator=torch.Generator().manual_seed(1))
    f2 = {k: v.clone() for k, v in f.items()}
    for k, vocab in CROSS_FEATURES.items():
        f2[k][:, 1] = (f2[k][:, 1] + 1) % vocab  # candidate 1 only
    zeros = {k: torch.zeros_like(v) for k, v in f.items()}
    with torch.no_grad():
        base = model.score(batch, cands, features=f)
        changed = model.score(batch, cands, features=f2)
        alone = torch.cat([model.score(batch, cands[:, c : c + 1], features={k: v[:, c] if k in CROSS_FEATURES else v
                                                                            for k, v in f.items()})
                           for c in range(C)], dim=1)  # (B,) features: one candidate per row, as in training
        chunks = model.score(batch, cands, micro_batch=2, features=f)
        missing = model.score(batch, cands)  # no features read as "no earlier data", id 0
        zero = model.score(batch, cands, features=zeros)
    assert torch.allclose(base[:, [0, 2]], changed[:, [0, 2]], atol=1e-6)
    assert (base[:, 1] - changed[:, 1]).abs().min() > 1e-6  # every row's candidate 1 moved
    assert torch.allclose(base, alone, atol=1e-5) and torch.allclose(base, chunks, atol=1e-5)
    assert torch.equal(missing, zero) and not torch.allclose(base, zero, atol=1e-6)


def test_hpgr_paths_agree_with_features_and_all_kept_is_the_hstu_ranker():
    """PGSA still selects on item ids alone: with every column kept HPGR is the HSTU ranker, features included."""
    batch, f = _batch(2), _features(2)
    cands = torch.randint(1, V + 1, (B, C), generator=torch.Generator().manual_seed(2))
    plain = _model("hstu_ranker", cross_features=True)
    with torch.no_grad():
        want = plain.score(batch, cands, features=f)
        for kw in HPGR_PATHS:
            hpgr = _model("hpgr", cross_features=True, top_k=N, **kw)  # K >= N: every column kept
            hpgr.load_state_dict(plain.state_dict())
            assert torch.allclose(hpgr.score(batch, cands, features=f), want, atol=1e-5), kw
        sparse = [_model("hpgr", cross_features=True, top_k=2, sigma=0.0, **kw) for kw in HPGR_PATHS[1:4:2]]
        sparse[1].load_state_dict(sparse[0].state_dict())  # dense == gathered under a really sparse mask
        assert torch.allclose(sparse[0].score(batch, cands, features=f), sparse[1].score(batch, cands, features=f),
                              atol=1e-5)
        assert not torch.allclose(sparse[0].score(batch, cands, features=f), want, atol=1e-4)

