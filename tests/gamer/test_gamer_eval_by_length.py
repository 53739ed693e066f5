"""Evaluation in order of history length: a prompt cut to its batch's longest history finds the lists the full
window finds (the left padding of a prompt changes nothing but rounding), so ``multibehavior.length_bucketing``
may sort evaluation queries and trim their batches."""

from __future__ import annotations

import numpy as np
import torch

from genrec.data.multibehavior import BehaviorLevels, session_split
from genrec.data.sequences import pad_windows
from genrec.eval.multibehavior import evaluate_behaviors
from tests.gamer.conftest import cycle_events, make_dataset, tiny_model
from tests.gamer.test_gamer_shared_prefix import histories, sharp_model


def test_a_trimmed_window_gives_the_full_windows_lists():
    model = sharp_model(3).double()
    items, behs = histories(5, n=8)
    full_i, _ = pad_windows(items, model.max_len)  # (B, <= 8) right-padded
    full_b, _ = pad_windows(behs, model.max_len)
    wide_i = np.zeros((len(items), model.max_len), np.int64)
    wide_b = np.zeros_like(wide_i)
    wide_i[:, :full_i.shape[1]], wide_b[:, :full_b.shape[1]] = full_i, full_b
    ref = model.generate(torch.from_numpy(wide_i), torch.from_numpy(wide_b), 3, beam_size=6)
    for r in range(len(items)):
        width = max(int((wide_i[r] > 0).sum()), 1)
        one = model.generate(torch.from_numpy(wide_i[r:r + 1, :width]), torch.from_numpy(wide_b[r:r + 1, :width]),
                             3, beam_size=6)
        assert one.items[0].tolist() == ref.items[r].tolist()
        assert torch.allclose(one.scores[0], ref.scores[r], atol=1e-9, rtol=0)


def test_evaluation_by_length_scores_every_query_as_in_file_order():
    ds = make_dataset(cycle_events(num_users=24, seed=3))
    split = session_split(ds.interactions, BehaviorLevels.from_manifest(ds.manifest), 1800)
    model = tiny_model(2).double()
    runs = [evaluate_behaviors(model, split, "test", [0, 3], [1, 5], beam_size=5, batch_size=4, by_length=flag)
            for flag in (False, True)]
    assert runs[0].per_behavior == runs[1].per_behavior and runs[0].per_behavior["buy"]["num_users"] > 4
    assert runs[0].invalid_rate == runs[1].invalid_rate
