"""Load-test `genrec serve` on loopback: throughput and latency with and without micro-batching.

Starts `genrec serve` as a subprocess on a free 127.0.0.1 port (exporting a run folder first when
given one) twice, with micro-batching and with ``--no-batching`` (one request per forward pass),
waits for /health, then drives POST /recommend from an async httpx client at each concurrency
level (default 1, 8, 64), batched then unbatched at each level so that changes in machine load
hit both alike. Every level stops after ``--requests`` answers or ``--duration`` seconds,
whichever comes first; the ratio of the two throughputs is printed per level. Client and server share the machine, so on few cores the client's own cost is
part of what is measured; the results JSON records the machine.

    python benchmarks/serve_load.py runs/hstu-beauty --data data_cache/beauty
    python benchmarks/serve_load.py ARTIFACT_DIR --concurrency 1 8 64 --requests 2000 --duration 20

``--data`` (a prepared dataset folder with the artifact's fingerprint) replays real user histories
(their last ``max_len`` events and timestamps); without it, histories are random catalogue items.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_result  # noqa: E402

HOST = "127.0.0.1"  # loopback only, by design


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def resolve_artifact(target: Path, workdir: Path) -> Path:
    """The artifact folder for ``target``: itself, or a fresh export when it is a run folder."""
    if (target / "artifact.json").exists():
        return target
    if (target / "config.json").exists():
        from genrec.serve.artifact import export_run

        out = workdir / "artifact"
        print(f"exporting run {target} -> {out}", flush=True)
        return export_run(target, out)
    sys.exit(f"serve_load: {target} is neither an artifact (artifact.json) nor a run folder (config.json)")


def make_bodies(art: Path, data: Path | None, n: int, k: int, history_len: int, seed: int) -> list[dict[str, Any]]:
    """Request bodies: real user histories from ``data``, or random catalogue items."""
    man = json.loads((art / "artifact.json").read_text())
    ext = json.loads((art / "items.json").read_text())["external_ids"]
    max_len, num_items = int(man["max_len"]), int(man["num_items"])
    rng = np.random.default_rng(seed)
    bodies = []
    if data is not None:
        from genrec.data.schema import load_dataset
        from genrec.data.sequences import UserSequences

        ds = load_dataset(data)
        if ds.fingerprint != man["data_fingerprint"]:
            sys.exit(f"serve_load: {data} has fingerprint {ds.fingerprint}, the artifact {man['data_fingerprint']}")
        seqs = UserSequences.from_interactions(ds.interactions)
        rows = rng.choice(len(seqs), size=min(n, len(seqs)), replace=False)
        w = seqs.windows(rows, seqs.lengths[rows], max_len)  # each sampled user's last max_len events
        items, times = w.take(seqs.items), w.take(seqs.timestamps)  # (n, L)
        for b, m in enumerate(w.lengths):
            bodies.append({"history": [ext[int(i)] for i in items[b, :m]], "timestamps": [int(t) for t in times[b, :m]],
                           "k": k})
        return bodies
    for _ in range(n):
        length = history_len or int(rng.integers(1, max_len + 1))
        items = rng.integers(1, num_items + 1, size=length)
        bodies.append({"history": [ext[int(i)] for i in items], "k": k})
    return bodies


class Server:
    """`genrec serve` in a subprocess, logging to a file (a pipe nobody reads could block it)."""

    def __init__(self, art: Path, batching: bool, args: argparse.Namespace, log: Path) -> None:
        self.port = free_port()
        self.base = f"http://{HOST}:{self.port}"
        cmd = [sys.executable, "-m", "genrec.cli", "serve", str(art), "--host", HOST, "--port", str(self.port),
               "--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms),
               "--queue-size", str(args.queue_size), "--log-level", "warning", "--no-access-log"]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        if not batching:
            cmd.append("--no-batching")
        self.log = log
        self._fh = open(log, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._fh, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120.0) -> None:
        import httpx

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"serve_load: the server exited with {self.proc.returncode}:\n{self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.base}/health", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        sys.exit(f"serve_load: the server did not answer /health within {timeout:.0f}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._fh.close()


async def drive(base: str, bodies: list[dict[str, Any]], concurrency: int, max_requests: int,
                duration: float) -> dict[str, Any]:
    """Run ``concurrency`` closed-loop clients until ``max_requests`` answers or ``duration`` seconds."""
    import httpx

    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    issued = 0
    # one client (one keep-alive connection) per worker, built before the clock starts: a shared httpx
    # pool, or building clients (an SSL context each) while timing, would be measured as server slowness
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    clients = [httpx.AsyncClient(base_url=base, limits=limits, timeout=30.0) for _ in range(concurrency)]

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal issued
        while issued < max_requests and time.perf_counter() < deadline:
            body = bodies[issued % len(bodies)]
            issued += 1
            t0 = time.perf_counter()
            try:
                r = await client.post("/recommend", json=body)
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] += 1
                continue
            statuses[r.status_code] += 1
            if 200 <= r.status_code < 300:
                latencies.append(time.perf_counter() - t0)

    try:
        t_start = time.perf_counter()
        deadline = t_start + duration
        await asyncio.gather(*[worker(c) for c in clients])
        elapsed = time.perf_counter() - t_start
    finally:
        for c in clients:
            await c.aclose()
    lat = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    ok = len(latencies)
    return {"concurrency": concurrency, "requests": sum(statuses.values()) + sum(errors.values()), "ok": ok,
            "elapsed_s": round(elapsed, 3), "throughput_rps": round(ok / elapsed, 2),
            "p50_ms": round(float(np.percentile(lat, 50)), 3), "p99_ms": round(float(np.percentile(lat, 99)), 3),
            "mean_ms": round(float(lat.mean()), 3),
            "non_2xx": {str(s): c for s, c in sorted(statuses.items()) if not 200 <= s < 300},
            "client_errors": dict(errors)}


def batch_stats(base: str) -> dict[str, Any]:
    import httpx

    return httpx.get(f"{base}/metadata", timeout=10).json()["batching"]["stats"]


def run_levels(art: Path, bodies: list[dict[str, Any]], args: argparse.Namespace, workdir: Path
               ) -> dict[str, dict[str, Any]]:
    """Both servers up at once; each level runs batched then unbatched, so drift in machine load hits both."""
    servers = {"batched": Server(art, True, args, workdir / "server-batched.log"),
               "unbatched": Server(art, False, args, workdir / "server-unbatched.log")}
    out: dict[str, dict[str, Any]] = {mode: {} for mode in servers}
    try:
        t0 = time.time()
        for server in servers.values():
            server.wait_ready()
            asyncio.run(drive(server.base, bodies, 4, args.warmup, 30.0))
        print(f"servers up and warm in {time.time() - t0:.1f}s", flush=True)
        for c in args.concurrency:
            for mode, server in servers.items():
                before = batch_stats(server.base)
                res = asyncio.run(drive(server.base, bodies, c, args.requests, args.duration))
                after = batch_stats(server.base)
                nb = after["batches"] - before["batches"]
                res["server_batches"] = nb
                res["mean_batch_size"] = round((after["requests"] - before["requests"]) / nb, 2) if nb else None
                out[mode][f"c{c}"] = res
                print(f"{mode:>9} c={c:<3} {res['throughput_rps']:>8.1f} req/s  p50 {res['p50_ms']:>7.2f} ms  "
                      f"p99 {res['p99_ms']:>7.2f} ms  mean batch {res['mean_batch_size']}  "
                      f"non-2xx {res['non_2xx'] or 0}  errors {res['client_errors'] or 0}", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target", type=Path, help="an artifact folder (genrec export) or a run folder")
    ap.add_argument("--data", type=Path, default=None, help="prepared dataset to replay real histories from")
    ap.add_argument("--name", default=None, help="results name (default MODEL-DATASET)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--requests", type=int, default=600, help="answers per concurrency level, at most")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per concurrency level, at most")
    ap.add_argument("--warmup", type=int, default=32, help="requests before timing, per server")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--history-len", type=int, default=0, help="random-history length (0 = uniform 1..max_len)")
    ap.add_argument("--bodies", type=int, default=512, help="distinct request bodies to cycle through")
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--queue-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0, help="server torch threads (0 = genrec serve's auto)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-write", action="store_true", help="print only; do not write benchmarks/results/")
    args = ap.parse_args()
    if min(args.concurrency) < 1 or args.requests < 1 or args.duration <= 0:
        sys.exit("serve_load: concurrency, requests and duration must be positive")

    t_all = time.time()
    with tempfile.TemporaryDirectory(prefix="genrec-serve-load-") as tmp:
        workdir = Path(tmp)
        art = resolve_artifact(args.target, workdir)
        man = json.loads((art / "artifact.json").read_text())
        bodies = make_bodies(art, args.data, args.bodies, args.k, args.history_len, args.seed)
        results: dict[str, Any] = run_levels(art, bodies, args, workdir)
    ratio = {}
    print("\nthroughput, batched / unbatched:")
    for c in args.concurrency:
        b, u = results["batched"][f"c{c}"]["throughput_rps"], results["unbatched"][f"c{c}"]["throughput_rps"]
        ratio[f"c{c}"] = round(b / u, 3) if u else None
        print(f"  c={c:<3} {b:>8.1f} / {u:>8.1f} req/s = {ratio[f'c{c}']}x")
    print(f"total {time.time() - t_all:.0f}s")
    results["throughput_ratio_batched_over_unbatched"] = ratio
    name = args.name or f"{man['model']}-{man.get('dataset') or 'data'}"
    record = {
        "dataset": {"name": man.get("dataset"), "fingerprint": man["data_fingerprint"],
                    "histories": "replayed from --data" if args.data else "random catalogue items"},
        "model": {"name": man["model"], "kinds": man["kinds"], "num_items": man["num_items"], "max_len": man["max_len"],
                  "run": man.get("run"), "genrec_version": man["genrec_version"]},
        "protocol": {"endpoint": "POST /recommend", "host": HOST, "client": "httpx.AsyncClient, closed loop",
                     "concurrency": args.concurrency, "max_requests_per_level": args.requests,
                     "max_seconds_per_level": args.duration, "warmup_requests": args.warmup, "k": args.k,
                     "history_len": args.history_len or f"uniform 1..{man['max_len']}",
                     "max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms,
                     "queue_size": args.queue_size, "server_threads": args.threads or "auto (genrec serve default)",
                     "cpu_count": os.cpu_count(), "client_and_server_share_the_machine": True},
        "metrics": results,
    }
    if not args.no_write:
        print(f"wrote {write_result(f'serve__{name}', record)}")


if __name__ == "__main__":
    main()
