"""benchmarks/pgsa_step.py: the dense and PGSA rows time the same model (same weights, same inputs), and the
quick mode runs end to end."""

import torch

from tests.conftest import load_benchmark


def test_dense_and_pgsa_time_the_same_weights_and_differ_only_in_attention():
    bench = load_benchmark("pgsa_step")
    args = bench.argparse.Namespace(d=16, layers=1, heads=2, k=2, sigma=1.0, items=50, batch=2, device="cpu")
    states = []
    for pgsa in (False, True):
        torch.manual_seed(0)
        states.append(bench.build_model(bench.model_cfg(args, pgsa), args.items, 32).state_dict())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    batch, cands, labels = bench.make_batch(32, args)
    assert batch.items.shape == (2, 32) and bool((batch.timestamps.diff(dim=1) > 0).all())


def test_quick_mode_reports_a_ratio_per_length():
    record = load_benchmark("pgsa_step").main(["--quick", "--no-write"])
    row = record["metrics"]["by_history_length"]["64"]
    assert row["dense_s"] > 0 and row["pgsa_s"] > 0
    assert abs(row["speedup"] - row["dense_s"] / row["pgsa_s"]) < 0.02 * row["speedup"] + 0.01
