"""``generator.rescore_history`` on GAMER: the user's items merged into a narrow beam carry their exact
log-probabilities (under the shared and the per-row beam memory alike), and the evaluation hands them over."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genrec.data.multibehavior import BehaviorLevels, session_split
from genrec.data.sequences import pad_windows
from genrec.eval.multibehavior import evaluate_behaviors
from genrec.models.recency import Recency
from genrec.sid import score_sids
from tests.gamer.conftest import cycle_events, make_dataset, tiny_model
from tests.gamer.test_gamer_shared_prefix import NUM_ITEMS, histories, sharp_model


@pytest.mark.parametrize("memory", ["shared", "per_row"])
def test_every_item_merged_into_a_narrow_beam_gives_the_exact_top_k(memory):
    model = sharp_model(4, beam_memory=memory).double()
    items, behs = histories(7, n=4)
    it = torch.from_numpy(pad_windows(items, model.max_len)[0])
    bh = torch.from_numpy(pad_windows(behs, model.max_len)[0])
    every = torch.arange(1, NUM_ITEMS + 1)
    got = model.generate(it, bh, 2, beam_size=5, k=5, known=every.repeat(len(items), 1))
    beam = model.generate(it, bh, 2, beam_size=5, k=5)
    # reference: every item's SID teacher-forced from its own copy of the prompt
    prompts = model.prompt_tokens(*model.history_tensors(it, bh), 2).repeat_interleave(NUM_ITEMS, 0)
    step, state = model.step_fn(prompts, shared=False)
    exact = score_sids(step, model.item_sids[every].repeat(len(items), 1), state).view(len(items), NUM_ITEMS)
    assert (got.scores >= beam.scores - 1e-6).all()  # the i-th best of a superset is never worse
    missed = 0
    for u in range(len(items)):
        order = torch.argsort(exact[u], descending=True, stable=True)[:5]
        assert got.items[u].tolist() == (order + 1).tolist()
        assert torch.allclose(got.scores[u].float(), exact[u, order].float(), atol=1e-5)
        missed += beam.items[u].tolist() != got.items[u].tolist()
    assert missed > 0  # the beam alone misses some of the exact top 5: the merge is what finds them


def test_evaluation_hands_recent_items_to_the_generator_and_baselines_ignore_them():
    ds = make_dataset(cycle_events(num_users=24, seed=5))
    split = session_split(ds.interactions, BehaviorLevels.from_manifest(ds.manifest), 1800)
    model = tiny_model(1).double()
    calls: list = []
    orig = model.generate

    def spy(*args, **kwargs):
        calls.append(kwargs.get("known"))
        return orig(*args, **kwargs)

    model.generate = spy
    plain = evaluate_behaviors(model, split, "test", [3], [1, 5], beam_size=5, batch_size=4)
    more = evaluate_behaviors(model, split, "test", [3], [1, 5], beam_size=5, batch_size=4, rescore_history=3)
    assert all(c is None for c in calls[:len(calls) // 2])
    handed = [c for c in calls[len(calls) // 2:]]
    assert handed and all(c is not None and c.shape[1] == 3 for c in handed)
    assert more.per_behavior["buy"]["num_users"] == plain.per_behavior["buy"]["num_users"]
    rec = Recency(Recency.Config(True), 0, 10)
    a = evaluate_behaviors(rec, split, "test", [3], [1, 5], beam_size=5)
    b = evaluate_behaviors(rec, split, "test", [3], [1, 5], beam_size=5, rescore_history=3)
    assert a.per_behavior == b.per_behavior
    assert np.isfinite(more.per_behavior["buy"]["ndcg@5"])
