"""SEM: session index tensors and the intra-session mask, path independence, leakage of the stage-1 inputs,
and a tiny pre-training run whose artifact round-trips."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from genrec.data.sequences import UserSequences
from genrec.data.splits import leave_one_out
from genrec.errors import CheckpointError
from genrec.models.hpgr_sem import SessionEncoder, intra_session_mask, session_layout
from genrec.models.pretrained import load_pretrained
from genrec.objectives.mim import MIMConfig
from genrec.train.pretrain import PretrainConfig, pretrain_batch, pretrain_sessions, pretraining_events

torch.set_num_threads(1)

# hand-built batch: row 0 = sessions {0,1} {2,3,4} {5}; row 1 = {0} {1,2} then padding
ITEMS = torch.tensor([[5, 6, 7, 8, 9, 3], [1, 2, 3, 0, 0, 0]])
TIMES = torch.tensor([[0, 10, 5000, 5010, 5020, 99999], [100, 9000, 9001, 0, 0, 0]])
SIDS = torch.tensor([[1, 1, 2, 2, 2, 3], [7, 8, 8, 0, 0, 0]])
LENGTHS = torch.tensor([6, 3])


def _sem(**kw) -> SessionEncoder:
    torch.manual_seed(0)
    return SessionEncoder(SessionEncoder.Config(d_model=16, num_heads=2, **kw), num_items=20, max_len=8).eval()


def test_layout_indices():
    lay = session_layout(TIMES, SIDS, LENGTHS, max_sessions=64)
    assert lay.event_session.tolist() == [[0, 0, 1, 1, 1, 2], [0, 1, 1, 0, 0, 0]]
    assert lay.intra_pos.tolist() == [[0, 1, 0, 1, 2, 0], [0, 0, 1, 0, 0, 0]]
    assert lay.num_sessions.tolist() == [3, 2]
    assert lay.session_valid.tolist() == [[True, True, True], [True, True, False]]
    assert lay.session_recency[0].tolist() == [2, 1, 0] and lay.session_recency[1, :2].tolist() == [1, 0]
    # only the 2 most recent sessions kept: row 0 drops events 0-1
    lay2 = session_layout(TIMES, SIDS, LENGTHS, max_sessions=2)
    assert lay2.event_valid[0].tolist() == [False, False, True, True, True, True]
    assert lay2.event_session[0, 2:].tolist() == [0, 0, 0, 1]


def test_intra_session_mask_equals_definition():
    lay = session_layout(TIMES, SIDS, LENGTHS, max_sessions=64)
    mask = intra_session_mask(lay)  # (B, N+M, N+M), SES token of session m at slot N+m
    N, M = ITEMS.shape[1], lay.session_valid.shape[1]
    sessions = [[0, 0, 1, 1, 1, 2], [0, 1, 1]]
    for b in range(2):
        n = int(LENGTHS[b])
        seg = {j: sessions[b][j] for j in range(n)}  # real event slots
        seg.update({N + m: m for m in range(int(lay.num_sessions[b]))})  # real SES slots
        for i in range(N + M):
            for j in range(N + M):
                want = i in seg and j in seg and seg[i] == seg[j]
                assert bool(mask[b, i, j]) == want, (b, i, j)
    no_tok = intra_session_mask(lay, with_session_tokens=False)
    assert torch.equal(no_tok, mask[:, :N, :N])


@pytest.mark.parametrize("repr_", ["token", "mean"])
def test_other_sessions_reach_a_session_only_through_the_inter_path(repr_):
    sem = _sem(session_repr=repr_)
    changed = ITEMS.clone()
    changed[0, 0] = 17  # an item of session 0 of row 0
    with torch.no_grad():
        base, alt = sem(ITEMS, TIMES, SIDS, LENGTHS).events, sem(changed, TIMES, SIDS, LENGTHS).events
        assert not torch.allclose(base[0, 2:6], alt[0, 2:6], atol=1e-6)  # through g_m
        sem.fuse.weight.zero_()  # cut the inter-session path
        base, alt = sem(ITEMS, TIMES, SIDS, LENGTHS).events, sem(changed, TIMES, SIDS, LENGTHS).events
    assert torch.allclose(base[0, 2:6], alt[0, 2:6], atol=1e-6)  # other sessions: untouched
    assert not torch.allclose(base[0, :2], alt[0, :2], atol=1e-6)  # own session: changed
    assert torch.equal(base[1], alt[1])


@pytest.mark.parametrize("use_sessions", [True, False])
def test_padding_changes_nothing(use_sessions):
    sem = _sem(use_sessions=use_sessions)
    pad = lambda t: torch.nn.functional.pad(t, (0, 2))  # noqa: E731
    with torch.no_grad():
        a = sem(ITEMS, TIMES, SIDS, LENGTHS)
        b = sem(pad(ITEMS), pad(TIMES), pad(SIDS), LENGTHS)
    assert torch.allclose(a.events, b.events[:, :6], atol=1e-5)
    assert (b.events[:, 6:] == 0).all() and (a.events[1, 3:] == 0).all()
    if not use_sessions:  # the ablation is a plain Transformer: sessions do not matter
        assert a.sessions is None
        with torch.no_grad():
            c = sem(ITEMS, TIMES, torch.ones_like(SIDS), LENGTHS)
        assert torch.allclose(a.events, c.events)


def _sequences(users: int = 60, seed: int = 0, items: int = 40) -> UserSequences:
    """Sessions drawn from 4 item clusters (one cluster per session), so MIM has structure to learn."""
    rng = np.random.default_rng(seed)
    its, tss, offs = [], [], [0]
    for _ in range(users):
        t = 1_000_000 + int(rng.integers(0, 10_000))
        n_sess = int(rng.integers(2, 6))
        for _ in range(n_sess):
            c = int(rng.integers(0, 4))
            for _ in range(int(rng.integers(2, 7))):
                its.append(1 + c * (items // 4) + int(rng.integers(0, items // 4)))
                tss.append(t)
                t += int(rng.integers(10, 600))
            t += int(rng.integers(2 * 3600, 48 * 3600))
        offs.append(len(its))
    return UserSequences(user_ids=np.arange(1, users + 1), offsets=np.array(offs, dtype=np.int64),
                         items=np.array(its, dtype=np.int64), timestamps=np.array(tss, dtype=np.int64))


def _inputs(seqs: UserSequences, cutoff) -> list[torch.Tensor]:
    ev = pretraining_events(seqs, cutoff, 3600, 50)
    b = pretrain_batch(ev, np.arange(len(ev)), max_len=30, max_sessions=3)
    return [b.items, b.timestamps, b.session_ids, b.lengths]


def _append_after(seqs: UserSequences, t_from: int) -> UserSequences:
    """Every row gets 3 extra events at or after ``t_from`` (and the existing ones there are re-itemed)."""
    its, tss, offs = [], [], [0]
    for u in range(len(seqs)):
        it, ts = seqs.items[seqs.row(u)].copy(), seqs.timestamps[seqs.row(u)].copy()
        it[ts >= t_from] = 1
        late = max(int(ts[-1]), t_from) + np.array([0, 5, 99999])
        its.append(np.concatenate([it, [2, 3, 4]]))
        tss.append(np.concatenate([ts, late]))
        offs.append(offs[-1] + len(its[-1]))
    return UserSequences(seqs.user_ids, np.array(offs), np.concatenate(its), np.concatenate(tss))


def test_events_after_the_cutoff_never_reach_the_inputs():
    seqs = _sequences()
    t_cut = int(np.quantile(seqs.timestamps, 0.7))
    base = _inputs(seqs, t_cut)
    other = _inputs(_append_after(seqs, t_cut), t_cut)
    for a, b in zip(base, other):
        assert torch.equal(a, b)
    assert int(base[3].sum()) > 0 and (base[1][base[1] > 0] < t_cut).all()
    # leave-one-out: changing each user's last two (valid/test) events changes nothing either
    changed = UserSequences(seqs.user_ids, seqs.offsets, seqs.items.copy(), seqs.timestamps.copy())
    for u in range(len(seqs)):
        r = seqs.row(u)
        changed.items[r.stop - 2 : r.stop] = 1
        changed.timestamps[r.stop - 1] += 1  # a later test event cannot split or merge a train session
    for a, b in zip(_inputs(seqs, leave_one_out(seqs)), _inputs(changed, leave_one_out(changed))):
        assert torch.equal(a, b)


def test_tiny_pretraining_lowers_mim_loss_and_round_trips(tmp_path):
    seqs = _sequences(users=80)
    t_cut = int(np.quantile(seqs.timestamps, 0.9))
    cfg = PretrainConfig(sem=SessionEncoder.Config(d_model=16, num_heads=2, intra_layers=1, inter_layers=1,
                                                   dropout=0.0),
                         mim=MIMConfig(mask_ratio=0.3), max_len=30, epochs=100, max_steps=60, batch_size=16,
                         lr=5e-3, probe_rows=80)
    out = pretrain_sessions(seqs, t_cut, cfg, tmp_path / "stage1")
    meta = json.loads((out / "pretrain.json").read_text())
    assert meta["probe_loss"]["final"] < meta["probe_loss"]["initial"] - 0.3
    assert meta["probe_loss"]["final"] < math.log(40)  # better than a uniform guess over the catalogue
    assert meta["cutoff"] == {"kind": "time", "t": t_cut}
    assert meta["num_events"] == int((seqs.timestamps < t_cut).sum())
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())
    pre = load_pretrained(out, num_items=40)
    assert pre.item_table.shape == (41, 16)
    assert torch.equal(pre.sem.item_emb.weight, pre.item_table)
    with pytest.raises(CheckpointError):
        load_pretrained(out, num_items=41)
    meta["config"]["sem"]["d_model"] = 32  # weights no longer match the config
    (out / "pretrain.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError):
        load_pretrained(out)
