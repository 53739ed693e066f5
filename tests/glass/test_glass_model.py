"""GLASS model: gate range, batched beam search against per-beam references, TIGER equivalence, overfitting,
clear configuration errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genrec.data.sequences import UserSequences
from genrec.data.splits import leave_one_out
from genrec.errors import ConfigError, DataError
from genrec.eval.generation import history_matrix
from genrec.models.base import GeneratorBatch
from genrec.models.glass import GLASS, GlassInputs
from genrec.models.registry import build_model
from genrec.models.tiger import TIGER
from genrec.objectives import next_sid_loss
from genrec.sid.beam import score_sids
from genrec.train.generator import TrainExamples
from tests.glass.conftest import NUM_ITEMS, SHORT, TINY, tiny_model, toy_dataset, toy_table, toy_vectors


def histories(n: int = 3, length: int = 10, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.stack([rng.permutation(NUM_ITEMS)[:length] + 1 for _ in range(n)]))


def repeat_rows(inp: GlassInputs, u: int, times: int) -> GlassInputs:
    """User ``u``'s inputs repeated ``times`` times (every row an independent decode of that user)."""
    return GlassInputs(*(x[u:u + 1].repeat_interleave(times, 0) for x in inp))


def test_learned_gate_stays_strictly_inside_zero_one():
    model = tiny_model(seed=1)
    with torch.no_grad():
        for lin in model.gates:
            lin.weight.mul_(1e4)  # push the pre-activations far into saturation
    model.gate_log = []
    inp = model.encoder_inputs(histories())
    model.teacher_logits(inp, model.item_sids[torch.tensor([1, 2, 3])])
    g = torch.cat([x.flatten() for x in model.gate_log])
    assert g.numel() > 0 and bool((g > 0).all()) and bool((g < 1).all())
    assert float(g.min()) < 0.01 and float(g.max()) > 0.99  # really saturated, yet inside the open interval


def test_fixed_gate_mixes_the_two_attentions_with_its_weight():
    model = tiny_model(gate="fixed", fixed_gate=0.25)
    z_s, z_r = torch.zeros(1, 1, 4), torch.ones(1, 1, 4)
    assert float(model._gate(0, z_s, z_r)) == 0.25
    assert model.gates is None


def test_beam_search_equals_per_beam_and_brute_force_references():
    """Beams are searched for all users and beams at once; each must score what a lone decode of it scores."""
    model = tiny_model(seed=2, neighbour_codes=1, neighbour_min=2, long_pool=True)
    hist = histories(3, 10)
    res = model.generate(hist, [1, 2, 3], beam_size=NUM_ITEMS)  # as wide as the catalogue: exhaustive
    inp = model.encoder_inputs(model.history_tensor(hist), torch.tensor([1, 2, 3]))
    all_sids = model.item_sids[1:]  # (N, m)
    for u in range(3):
        one = repeat_rows(inp, u, NUM_ITEMS)
        _, state = model.step_fn(*one)
        ref = score_sids(model.step, all_sids, state)  # (N,) one row per SID, no beam interaction
        teacher = torch.log_softmax(model.teacher_logits(one, all_sids).float(), -1)
        teacher = teacher.gather(2, all_sids[..., None]).squeeze(-1).sum(1)  # training path (ground-truth key)
        assert torch.allclose(ref, teacher, atol=1e-5)
        order = torch.argsort(ref, descending=True)
        assert torch.allclose(res.scores[u], ref[order], atol=1e-5)
        assert sorted(res.items[u].tolist()) == list(range(1, NUM_ITEMS + 1))
    narrow = model.generate(hist, [1, 2, 3], beam_size=5)
    for u in range(3):
        _, state = model.step_fn(*repeat_rows(inp, u, 5))
        assert torch.allclose(score_sids(model.step, narrow.sids[u], state), narrow.scores[u], atol=1e-5)


def test_with_every_switch_off_glass_is_tiger():
    tiger_params = {k: v for k, v in TINY.items() if k in TIGER.Config.__dataclass_fields__ and k != "name"}
    torch.manual_seed(0)
    tiger = TIGER(TIGER.Config(**tiger_params), num_items=NUM_ITEMS, max_len=SHORT)
    tiger.set_sid_table(toy_table())
    glass = tiny_model(vectors=False, sid_tier=False, hard_search=False)
    missing, unexpected = glass.load_state_dict(tiger.state_dict(), strict=False)
    assert set(missing) == {"tier_bins", "code_neighbours", "has_vectors"} and not unexpected
    hist = histories(4, 12)
    a = tiger.eval().generate(hist[:, -SHORT:], [1, 2, 3, 4], beam_size=6)  # a tensor is read as given
    b = glass.generate(hist, [1, 2, 3, 4], beam_size=6)
    assert torch.equal(a.items, b.items) and torch.allclose(a.scores, b.scores, atol=1e-6)


def test_hard_search_informs_later_sid_tokens_but_not_the_first():
    model = tiny_model(seed=3, sid_tier=False)
    hist = histories(2, 12)
    other = hist.clone()
    other[:, 12 - SHORT - 6:12 - SHORT] = torch.roll(other[:, 12 - SHORT - 6:12 - SHORT], 1, 0)  # swap long windows
    target = model.item_sids[hist[:, -1]]
    a = model.teacher_logits(model.encoder_inputs(hist), target)
    b = model.teacher_logits(model.encoder_inputs(other), target)
    assert torch.allclose(a[:, 0], b[:, 0])  # sid_1 has no key yet: the long window is not read
    assert not torch.allclose(a[:, 1], b[:, 1])  # sid_2 attends to the retrieved items


def test_a_tiny_glass_overfits_a_toy_set():
    seqs = UserSequences.from_interactions(toy_dataset().interactions)
    ex = TrainExamples(leave_one_out(seqs).train_end)
    pick = np.random.default_rng(0).choice(len(ex), 32, replace=False)
    rows, ends = ex.rows[pick], ex.ends[pick]
    model = tiny_model(seed=4, neighbour_codes=1).train()
    inputs = model.training_inputs(GeneratorBatch(torch.from_numpy(history_matrix(seqs, rows, ends, model.max_len)),
                                                  torch.from_numpy(seqs.user_ids[rows]),
                                                  torch.from_numpy(seqs.items[seqs.offsets[rows] + ends])))

    def mean_loss() -> torch.Tensor:
        s, n = next_sid_loss(model.sid_logits(inputs))
        return s / n

    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    first = None
    for _ in range(60):
        loss = mean_loss()
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        assert float(mean_loss()) < 0.1 * first
    res = model.generate(torch.from_numpy(history_matrix(seqs, rows, ends, model.max_len)),
                         seqs.user_ids[rows], beam_size=5, k=1)
    acc = float((res.items[:, 0] == torch.from_numpy(seqs.items[seqs.offsets[rows] + ends])).float().mean())
    assert acc > 0.9, acc


@pytest.mark.parametrize("bad, match", [
    ({"gate_typo": 1}, "did you mean 'model.gate"),
    ({"gate": "soft"}, "model.gate"),
    ({"fixed_gate": 1.5}, "fixed_gate"),
    ({"gate_layers": "first"}, "gate_layers"),
    ({"tier_norm": "l2"}, "tier_norm"),
    ({"long_len": -1}, "long_len"),
    ({"num_tiers": 0}, "num_tiers"),
    ({"neighbour_codes": 2, "hard_search": False}, "hard_search"),
    ({"neighbour_codes": 6}, "neighbour_codes"),
    ({"retrieve_max": 0}, "retrieve_max"),
])
def test_bad_model_settings_are_config_errors(bad, match):
    with pytest.raises(ConfigError, match=match):
        build_model({**TINY, **bad}, NUM_ITEMS, SHORT)


def test_missing_or_mismatched_item_vectors_are_data_errors():
    model = tiny_model(vectors=False)
    with pytest.raises(DataError, match="set_item_vectors"):
        model.encoder_inputs(histories())
    with pytest.raises(DataError, match="lack"):
        model.set_item_vectors(np.arange(1, 5), torch.from_numpy(toy_vectors()[:4]))
    with pytest.raises(DataError, match="vectors"):
        model.set_item_vectors(np.arange(1, NUM_ITEMS + 1), torch.zeros(3, 8))
    model.set_item_vectors(np.arange(1, NUM_ITEMS + 1), torch.from_numpy(toy_vectors()))
    model.set_sid_table(toy_table())  # a new table invalidates the prototypes
    with pytest.raises(DataError):
        model.encoder_inputs(histories())
    assert isinstance(build_model(dict(TINY), NUM_ITEMS, SHORT), GLASS)
