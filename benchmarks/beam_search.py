"""Time trie-constrained beam search over a Beauty-sized SID table, and count invalid SIDs without the trie.

The SID table is built from RQ-KMeans codes of random vectors (12,101 items, 3 levels x 256 codes + the
collision level), so no trained model is needed. The decoder is a small random network: the last token's
embedding (+ a position embedding) through a 2-layer MLP to 256 logits. It stands in for TIGER's decoder only
to time the search machinery (masking, top-k, trie steps, state reordering); a real decoder adds its own cost.

    python benchmarks/beam_search.py            # defaults finish in well under 2 minutes on 2 CPU cores

With ``--run RUN_DIR`` the decoder is a trained generator instead (e.g. TIGER on Beauty): its own SID table,
its test users' real histories, full encoder + KV-cached decoder, so the times are end-to-end per user:

    python benchmarks/beam_search.py --run runs/bench/tiger-beauty-cpu__beauty-seed1 --users 256
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_result  # noqa: E402

from genrec.sid import RQKMeans, RQKMeansConfig, SIDTable, SIDTrie, beam_search  # noqa: E402


class RandomStepDecoder(nn.Module):
    """logits(position t) = MLP(emb(last token) + pos(t)); the state is the last hidden row, reordered per step."""

    def __init__(self, width: int, depth: int, dim: int = 128) -> None:
        super().__init__()
        self.width = width
        vocab = depth * width  # one token namespace per SID position, as TIGER's <a_*>, <b_*>, ...
        self.tok = nn.Embedding(vocab + 1, dim)  # + a start token
        self.pos = nn.Embedding(depth, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, width))
        self.start = vocab

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = tokens.shape[1]  # tokens: (R, t)
        last = tokens[:, -1] + (t - 1) * self.width if t else torch.full((tokens.shape[0],), self.start)
        h = self.tok(last) + self.pos.weight[t] + state  # (R, D)
        return self.mlp(h), h  # (R, V), (R, D)


def build_table(num_items: int, levels: int, codes: int, dim: int, iters: int, seed: int) -> tuple[SIDTable, float]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_items, dim, generator=g)  # (N, dim)
    t0 = time.perf_counter()
    q = RQKMeans(RQKMeansConfig(num_levels=levels, codebook_size=codes, iters=iters, seed=seed))
    q.fit(x)
    table = SIDTable.from_quantizer(q, torch.arange(1, num_items + 1), x)
    return table, time.perf_counter() - t0


def time_search(dec: RandomStepDecoder, trie: SIDTrie, users: int, beam: int, reps: int, constrained: bool,
                seed: int) -> tuple[float, float]:
    """Median milliseconds per user over ``reps`` searches of ``users`` users, and the invalid-beam rate."""
    g = torch.Generator().manual_seed(seed)
    state = torch.randn(users, dec.pos.weight.shape[1], generator=g) * 0.5  # (B, D) per-user context
    beam_search(dec, trie, users, beam, state=state, constrained=constrained)  # warm-up
    times, invalid = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        res = beam_search(dec, trie, users, beam, state=state, constrained=constrained)
        times.append(time.perf_counter() - t0)
        invalid.append(res.invalid_rate)
    return 1000 * statistics.median(times) / users, sum(invalid) / len(invalid)


def time_trained(run_dir: str, beam: int, batches: list[int], users: int, seed: int) -> tuple[dict, dict]:
    """Beam-search a trained generator's test users; returns (metrics, record fields)."""
    import numpy as np

    from genrec.data.splits import leave_one_out
    from genrec.eval.generation import history_matrix
    from genrec.runs.open import open_run

    run = open_run(run_dir)
    test = leave_one_out(run.seqs).test
    pick = np.sort(np.random.default_rng(seed).choice(len(test), min(users, len(test)), replace=False))
    rows, ends = test.rows[pick], test.hist_end[pick]
    hist = history_matrix(run.seqs, rows, ends, run.cfg.data.max_len)  # (U, L)
    uids = run.seqs.user_ids[rows]
    metrics: dict[str, float] = {}
    for b in batches:
        n = len(rows) if b > 1 else min(len(rows), 64)  # batch 1 is slow: time 64 users
        for constrained in (True, False):
            run.model.generate(hist[:b], uids[:b], beam_size=beam, constrained=constrained)  # warm-up
            t0 = time.perf_counter()
            invalid = 0
            for i in range(0, n, b):
                res = run.model.generate(hist[i:i + b], uids[i:i + b], beam_size=beam, constrained=constrained)
                invalid += int((~res.valid).sum())
            ms = 1000 * (time.perf_counter() - t0) / n
            tag = "constrained" if constrained else "unconstrained"
            metrics[f"ms_per_user_{tag}_batch{b}"] = ms
            metrics[f"invalid_rate_{tag}_batch{b}"] = invalid / (n * beam)
            print(f"beam {beam}, {b:3d} users/call, {tag:13s}: {ms:7.2f} ms/user, "
                  f"invalid SIDs in top-{beam}: {invalid / (n * beam):.1%}")
    from genrec.sid.build import load_sid_table

    fields = {"dataset": run.dataset.manifest.get("name", ""),
              "model": f"trained {run.cfg.model['name']} ({Path(run_dir).name})",
              "sid_health": load_sid_table(Path(run_dir) / "sid").health().as_dict()}
    return metrics, fields


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=12101)
    ap.add_argument("--levels", type=int, default=3)
    ap.add_argument("--codes", type=int, default=256)
    ap.add_argument("--dim", type=int, default=64, help="dimension of the random vectors quantised into SIDs")
    ap.add_argument("--kmeans-iters", type=int, default=10)
    ap.add_argument("--beam", type=int, default=20)
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 64], help="users per search call")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="beam__cpu")
    ap.add_argument("--run", help="a trained generator run folder (times its real model on its test users)")
    ap.add_argument("--users", type=int, default=256, help="--run: test users to decode")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.run:
        metrics, fields = time_trained(args.run, args.beam, args.batches, args.users, args.seed)
        record = {**fields, "metrics": metrics,
                  "protocol": {"beam": args.beam, "batches": args.batches, "users": args.users,
                               "threads": args.threads, "device": "cpu", "decoder": "trained model, KV cache"}}
        name = args.name if args.name != "beam__cpu" else f"beam__{Path(args.run).name.split('__')[0]}"
        print(f"wrote {write_result(name, record)}")
        return

    table, build_s = build_table(args.items, args.levels, args.codes, args.dim, args.kmeans_iters, args.seed)
    health = table.health()
    t0 = time.perf_counter()
    trie = SIDTrie.from_table(table)
    trie_s = time.perf_counter() - t0
    print(f"SID table: {health.summary()}")
    print(f"built in {build_s:.1f}s (RQ-KMeans on random {args.dim}-d vectors), trie in {1000 * trie_s:.0f} ms")
    dec = RandomStepDecoder(max(table.codebook_sizes), table.length).eval()
    print("decoder: random 2-layer MLP over the last token's embedding (times the search machinery only)")

    metrics: dict[str, float] = {"trie_build_ms": 1000 * trie_s}
    for users in args.batches:
        for constrained in (True, False):
            ms, bad = time_search(dec, trie, users, args.beam, args.reps, constrained, args.seed)
            tag = "constrained" if constrained else "unconstrained"
            metrics[f"ms_per_user_{tag}_batch{users}"] = ms
            metrics[f"invalid_rate_{tag}_batch{users}"] = bad
            print(f"beam {args.beam}, {users:3d} users/call, {tag:13s}: {ms:7.2f} ms/user, "
                  f"invalid SIDs in top-{args.beam}: {bad:.1%}")
    record = {
        "dataset": f"synthetic Beauty-sized SID table ({args.items} items, {args.levels}x{args.codes} + collision "
                   f"level of size {table.codebook_sizes[-1]})",
        "model": "random 2-layer MLP step decoder (times masking/top-k/trie machinery, not a trained TIGER)",
        "protocol": {"beam": args.beam, "batches": args.batches, "reps": args.reps, "threads": args.threads,
                     "device": "cpu", "sid_source": f"RQ-KMeans on random {args.dim}-d vectors",
                     "kmeans_iters": args.kmeans_iters, "seed": args.seed},
        "metrics": metrics,
        "sid_health": health.as_dict(),
    }
    print(f"wrote {write_result(args.name, record)}")


if __name__ == "__main__":
    main()
