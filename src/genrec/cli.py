"""``genrec`` command line. Whatever a command raises ends as one line on stderr (``genrec.errors.error_report``:
exit 2 for the user's input, 1 for a failed run or a bug); ``--debug`` shows tracebacks."""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

from genrec import __version__
from genrec.errors import EXIT_INTERRUPTED, GenrecError, error_report


def _cmd_models(args: argparse.Namespace) -> int:
    from genrec.models import MODELS

    recipes = _recipes()
    print(f"{'model':<12} {'kinds':<22} recipes")
    for name, cls in sorted(MODELS.items()):
        rs = ", ".join(sorted(r for r, m in recipes.items() if m == name)) or "-"
        print(f"{name:<12} {','.join(cls.kinds):<22} {rs}")
    return 0


def _recipes() -> dict[str, str]:
    """Recipe name -> model name, from the configs/ folder of the source tree (when present); a recipe that
    ``extends:`` another takes the model of the recipe it extends."""
    from genrec.config import RECIPES_DIR, load_yaml, recipe_names

    out: dict[str, str] = {}
    for name in recipe_names():
        try:
            raw = load_yaml(RECIPES_DIR / f"{name}.yaml")
            out[name] = (raw.get("model") or {}).get("name", "?")
        except GenrecError:
            out[name] = "?"
    return out


def _print_metrics(title: str, metrics: dict, ks: list[int]) -> None:
    print(title)
    if "auc" in metrics:  # ranking (CTR) record
        cols = [c for c in ("auc", "gauc", "logloss") if c in metrics]
    else:
        cols = [f"{n}@{k}" for n in ("hr", "ndcg") for k in ks if k in (5, 10, 20, 50, 200) and f"{n}@{k}" in metrics]
        cols.append("mrr")
    print("  " + "  ".join(f"{c:>9}" for c in cols))
    print("  " + "  ".join(f"{metrics[c]:>9.4f}" for c in cols if c in metrics))


def _cmd_train(args: argparse.Namespace) -> int:
    from genrec.config import load_config, resolve_recipe
    from genrec.train.run import train_run

    overrides = list(args.set or [])
    if args.data:
        overrides.append(f"data.path={args.data}")
    cfg = load_config(resolve_recipe(args.config), overrides)
    out = args.out or f"runs/{cfg.model['name']}-{time.strftime('%Y%m%d-%H%M%S')}"
    t0 = time.time()
    res = train_run(cfg, out, resume=not args.no_resume)
    if "metrics" in res and "per_behavior" in res["metrics"]:
        from genrec.eval.multibehavior import format_table

        print(format_table(res))
        print(f"run folder: {out}")
    elif "metrics" in res:
        pr = res.get("protocol", {})
        _print_metrics(f"{cfg.model['name']} test ({pr.get('task', '')}, {pr.get('split', '')}, "
                       f"{pr.get('candidates', '')}), best epoch {pr.get('best_epoch')}, {time.time() - t0:.0f}s:",
                       res["metrics"], cfg.eval.ks)
        print(f"run folder: {out}")
    elif "stopped_early_by" in res:
        print(f"stopped at step {res['summary']['global_step']} ({res['stopped_early_by']}); run the same command "
              f"again to resume: {out}")
    return 0


# what `genrec evaluate --json` has always shown of a retriever's protocol (the record itself holds more)
RETRIEVER_JSON_PROTOCOL = ("split", "evaluated_on", "candidates", "exclude_history", "history_window")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from genrec.eval.evaluate import evaluate_run
    from genrec.eval.multibehavior import format_table
    from genrec.eval.retrieval import RETRIEVAL_TASK

    res = evaluate_run(args.run_dir, args.split, exclude_history=args.exclude_history,
                       constrained=not args.unconstrained, rescore_history=args.rescore_history,
                       repeat_breakdown=args.repeat_breakdown)
    pr = res["protocol"]
    retriever = pr.get("task") == RETRIEVAL_TASK
    if args.json:
        shown = {k: res[k] for k in ("model", "data_fingerprint", "protocol", "metrics") if k in res}
        if retriever:
            shown["protocol"] = {k: pr[k] for k in RETRIEVER_JSON_PROTOCOL}
        print(json.dumps(shown, indent=2, default=str))
    elif "per_behavior" in res["metrics"]:
        print(format_table(res))
    elif retriever:
        _print_metrics(f"{res['model']} {args.split} ({pr['split']}, full catalogue, "
                       f"exclude_history={pr['exclude_history']}):", res["metrics"], pr["ks"])
    else:
        _print_metrics(f"{res['model']} {args.split} ({pr.get('task')}, {pr.get('candidates', '')}):",
                       res["metrics"], pr.get("ks", [5, 10, 20]))
    return 0


def _cmd_recommend(args: argparse.Namespace) -> int:
    from genrec.runs.open import open_run
    from genrec.train.run import recommend

    run = open_run(args.run_dir)
    item_ext = run.dataset.item_external_ids()
    ext_to_int = {e: i for i, e in enumerate(item_ext) if i > 0}
    if args.history is not None:
        names = [x.strip() for x in args.history.split(",") if x.strip()]
        unknown = [x for x in names if x not in ext_to_int]
        if unknown:
            raise GenrecError(f"unknown item id(s) in --history: {', '.join(unknown[:10])}")
        hist = [ext_to_int[x] for x in names]
        times, uid = None, None
    elif args.user is not None:
        user_ext = run.dataset.user_external_ids()
        try:
            uid = user_ext.index(str(args.user), 1)
        except ValueError:
            raise GenrecError(f"unknown user id '{args.user}'") from None
        row = int((run.seqs.user_ids == uid).nonzero()[0][0])
        sl = run.seqs.row(row)
        hist, times = run.seqs.items[sl].tolist(), run.seqs.timestamps[sl].tolist()
    else:
        raise GenrecError("give --user ID or --history ITEM,ITEM,...")
    recs = recommend(run, hist, times, k=args.k, exclude_history=not args.include_history,
                     user=uid if args.user is not None else None)
    titles = {}
    if "title" in run.dataset.items.column_names:
        titles = dict(zip(run.dataset.items.column("item_id").to_pylist(), run.dataset.items.column("title").to_pylist()))
    if args.json:
        print(json.dumps([{"item": item_ext[i], "score": s, "title": titles.get(i)} for i, s in recs]))
        return 0
    for rank, (i, s) in enumerate(recs, 1):
        t = titles.get(i)
        print(f"{rank:>3}. {item_ext[i]:<16} {s:+.4f}" + (f"  {t}" if t else ""))
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    """Synthetic data -> SASRec and HSTU -> a metrics table, in a couple of minutes on a laptop CPU."""
    from genrec.config import load_config, resolve_recipe
    from genrec.train.run import train_run

    rows = []
    for model in ("sasrec", "hstu"):
        cfg = load_config(resolve_recipe(f"quickstart-{model}"), args.set or [])
        t0 = time.time()
        res = train_run(cfg, Path(args.out) / model, resume=True)
        rows.append((model, res["metrics"], time.time() - t0, res["protocol"]["best_epoch"]))
    print("\nQuick start: synthetic data, leave-one-out, full-catalogue ranking, history excluded")
    cols = ["hr@10", "ndcg@10", "hr@50", "ndcg@50", "mrr"]
    print(f"{'model':<8}" + "".join(f"{c:>9}" for c in cols) + f"{'best ep':>9}{'seconds':>9}")
    for model, m, sec, ep in rows:
        print(f"{model:<8}" + "".join(f"{m[c]:>9.4f}" for c in cols) + f"{ep:>9}{sec:>9.0f}")
    print(f"runs in {args.out}/; try: genrec recommend {args.out}/hstu --user 1 -k 10")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genrec", description="Generative recommendation: train, evaluate, serve.")
    p.add_argument("--version", action="version", version=f"genrec {__version__}")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    import importlib

    for room in ("genrec.data.cli", "genrec.sid.cli", "genrec.eval.cli", "genrec.tune.cli", "genrec.serve.cli"):
        try:
            mod = importlib.import_module(room)
        except ModuleNotFoundError as exc:  # optional room (e.g. serving extras not installed)
            if exc.name and exc.name.startswith("genrec"):
                continue
            mod = None
        if mod is not None:
            mod.register(sub)

    t = sub.add_parser("train", help="train a model from a recipe (YAML) with overrides")
    t.add_argument("config", nargs="?", help="recipe: a YAML path or a name from configs/ (default: SASRec defaults)")
    t.add_argument("--data", help="prepared dataset folder (overrides data.path)")
    t.add_argument("--out", help="run folder (default runs/MODEL-DATE)")
    t.add_argument("--set", nargs="*", metavar="SECTION.KEY=VALUE", help="config overrides, e.g. train.lr=0.001")
    t.add_argument("--no-resume", action="store_true", help="ignore checkpoints already in the run folder")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a trained run on its test (or validation) split",
                       description="Evaluate a run folder's best weights; reads the run, writes nothing to it.")
    e.add_argument("run_dir", help="a run folder written by genrec train")
    e.add_argument("--split", choices=["test", "valid"], default="test",
                   help="which held-out events to evaluate on (default: test)")
    g = e.add_mutually_exclusive_group()
    g.add_argument("--exclude-history", dest="exclude_history", action="store_true", default=None,
                   help="retrievers: remove each user's earlier items from the ranking (default: the recipe's "
                        "eval.exclude_history)")
    g.add_argument("--no-exclude-history", dest="exclude_history", action="store_false",
                   help="retrievers: rank earlier items too")
    e.add_argument("--unconstrained", action="store_true", help="generators: free (not trie-constrained) decoding")
    e.add_argument("--rescore-history", type=int, default=None, metavar="N",
                   help="multi-behavior generators: also score each user's N most recent distinct history items "
                        "exactly and merge them into the beam (default: the recipe's generator.rescore_history)")
    e.add_argument("--repeat-breakdown", action="store_true",
                   help="multi-behavior runs: also score each behavior's targets the user met before the session "
                        "(repeat) and the others (new) apart")
    e.add_argument("--json", action="store_true", help="print the results record (model, protocol, metrics) as JSON")
    e.set_defaults(func=_cmd_evaluate)

    r = sub.add_parser("recommend", help="top-k items for a known user or a given history",
                       description="Top-k items of a retriever or next-item generator run, for a user of its "
                                   "dataset (--user) or a history you give (--history).")
    r.add_argument("run_dir", help="a run folder written by genrec train")
    r.add_argument("--user", help="external user id from the dataset")
    r.add_argument("--history", help="comma-separated external item ids, oldest first")
    r.add_argument("-k", type=int, default=10, help="how many items (default 10)")
    r.add_argument("--include-history", action="store_true", help="allow items already in the history")
    r.add_argument("--json", action="store_true", help="print a JSON list of {item, score, title}")
    r.set_defaults(func=_cmd_recommend)

    m = sub.add_parser("models", help="list registered models, their kinds and recipes")
    m.set_defaults(func=_cmd_models)

    q = sub.add_parser("quickstart", help="synthetic data -> SASRec + HSTU -> metrics table")
    q.add_argument("--out", default="runs/quickstart", help="folder for the two runs (default runs/quickstart)")
    q.add_argument("--set", nargs="*", metavar="SECTION.KEY=VALUE", help="overrides for both recipes, "
                   "e.g. train.epochs=2")
    q.set_defaults(func=_cmd_quickstart)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a reader that left shows here, not in the interpreter's last flush
        return code
    except KeyboardInterrupt:
        print("genrec: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return _reader_gone()
    except Exception as exc:  # the one policy (genrec.errors.error_report): one line, never a traceback
        if args.debug:
            raise
        line, code = error_report(exc)
        print(line, file=sys.stderr)
        return code


BROKEN_PIPE = 141  # 128 + SIGPIPE: what `cat` or `grep` return when the reader of their output leaves


def _reader_gone() -> int:
    """Output piped into a reader that stopped early (``genrec evaluate --json | head``): that is the reader's
    choice, not an error. Standard output is pointed at the null device so the interpreter's final flush cannot
    fail again, and the exit code is the one a Unix tool killed by SIGPIPE reports."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):  # stdout is no real file (a capture)
        pass
    return BROKEN_PIPE


def _exit(code: int) -> None:
    """End the process. A ``torchrun`` worker leaves with ``os._exit`` once ``main`` has returned: its files are
    written and its process group closed, and skipping the library destructors avoids an abort at exit
    ("terminate called without an active exception", seen now and then under load) from worker threads that
    are still alive then."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    _exit(main())
