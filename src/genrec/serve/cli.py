"""``genrec export`` and ``genrec serve``.

Only argparse is imported here because ``genrec.cli`` imports this module for every command; torch
code and the optional FastAPI/uvicorn extras are imported inside the handlers, so ``genrec export``
works without the extras and ``genrec serve`` without them fails with one line saying what to install.
"""

from __future__ import annotations

import argparse
import os
import socket

from genrec.errors import GenrecError


def _cmd_export(args: argparse.Namespace) -> int:
    from genrec.serve.artifact import export_run, load_artifact

    out = export_run(args.run_dir, args.out, weights=args.weights, overwrite=args.force)
    art = load_artifact(out)  # prove the artifact loads before telling the user it is ready
    print(f"exported {art.model_name} ({', '.join(art.kinds)}; {art.num_items} items, max_len {art.max_len}, "
          f"data {art.data_fingerprint}) to {out}")
    print(f"serve it with: genrec serve {out}")
    return 0


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ModuleNotFoundError as exc:
        raise GenrecError(f"`genrec serve` needs the serving extras ({exc.name} is not installed): "
                          "pip install 'genrec[serve]'") from None
    from genrec.serve.app import create_app, run_server
    from genrec.serve.artifact import load_artifact
    from genrec.serve.batcher import BatchSettings

    if not 0 <= args.port <= 65535:
        raise GenrecError(f"--port {args.port}: must be between 0 and 65535")
    settings = BatchSettings(max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                             queue_size=args.queue_size, enabled=not args.no_batching)
    import torch

    if args.threads < 0:
        raise GenrecError(f"--threads {args.threads}: must be 0 (auto) or more")
    # auto: leave one core to the event loop; torch's spinning intra-op threads on every core starve it
    threads = args.threads or max(1, min(torch.get_num_threads(), (os.cpu_count() or 2) - 1))
    torch.set_num_threads(threads)
    art = load_artifact(args.artifact_dir, device=args.device)
    if args.port and not _port_free(args.host, args.port):
        raise GenrecError(f"cannot listen on {args.host}:{args.port}: the address is in use or not available")
    app = create_app(art, settings, max_body_bytes=args.max_body_bytes)
    mode = (f"micro-batching up to {settings.max_batch_size} requests / {settings.max_wait_ms:g} ms"
            if settings.enabled else "no batching")
    print(f"serving {art.model_name} ({art.num_items} items) on http://{args.host}:{args.port} "
          f"({mode}, queue {settings.queue_size}, {threads} torch thread(s)); API docs at /docs", flush=True)
    run_server(app, host=args.host, port=args.port, log_level=args.log_level, access_log=not args.no_access_log,
               drain_timeout=args.drain_timeout)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``export`` and ``serve`` to the ``genrec`` command line."""
    e = subparsers.add_parser("export", help="write a self-contained serving artifact for a trained run")
    e.add_argument("run_dir", help="a run folder written by `genrec train`")
    e.add_argument("--out", required=True, help="artifact folder to write")
    e.add_argument("--weights", choices=["best", "latest"], default="best",
                   help="best validation weights (default) or the latest checkpoint")
    e.add_argument("--force", action="store_true", help="replace an existing artifact folder")
    e.set_defaults(func=_cmd_export)

    s = subparsers.add_parser("serve", help="serve an exported artifact over HTTP (needs genrec[serve])")
    s.add_argument("artifact_dir", help="a folder written by `genrec export`")
    s.add_argument("--host", default="127.0.0.1", help="interface to listen on (default loopback only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--max-batch-size", type=int, default=32, help="most requests per forward pass")
    s.add_argument("--max-wait-ms", type=float, default=5.0, help="longest wait for a batch to fill")
    s.add_argument("--queue-size", type=int, default=256, help="waiting requests before answering 503")
    s.add_argument("--no-batching", action="store_true", help="one request per forward pass (baseline)")
    s.add_argument("--max-body-bytes", type=int, default=4 << 20, help="larger request bodies get 413")
    s.add_argument("--drain-timeout", type=int, default=30, help="seconds to finish in-flight requests on stop")
    s.add_argument("--device", default="cpu", help="torch device for the model (cpu, cuda, cuda:N)")
    s.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads (0 = auto: torch's default, leaving one core to the server)")
    s.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    s.add_argument("--no-access-log", action="store_true", help="do not log every request")
    s.set_defaults(func=_cmd_serve)
