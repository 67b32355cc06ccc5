"""The ``sparsebench`` command: run, status, report, list.

User errors (unknown names, bad values, malformed grids, missing data, unwritable roots) print
one line on stderr and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.errors import UserError

DEFAULT_ROOT = "sparsebench-runs"


def _root(value: str | None) -> Path:
    return Path(value or os.environ.get("SPARSEBENCH_ROOT") or DEFAULT_ROOT)


def ensure_writable(root: Path) -> Path:
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise UserError(f"output root {root} is not writable ({exc.strerror}); "
                        "pass --root DIR or set SPARSEBENCH_ROOT") from None
    return root


def cmd_run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from bench.grid import load_grid, parse_only, select
    from bench.launch import pending, run_debug

    grid = load_grid(args.grid)
    runs = select(grid, parse_only(args.only))
    root = _root(args.root)
    if args.dry_run:
        todo = {r.run_id for r in pending(runs, root)} if root.exists() else None
        for run in runs:
            cfg = run.config
            state = "" if todo is None else ("  (done)" if run.run_id not in todo else "")
            print(f"{run.run_id}  {cfg.model.name:14s} {cfg.data.name:10s} {run.entry:14s} "
                  f"s={cfg.sparsity.target:<5g} seed={cfg.seed}{state}")
        print(f"{len(runs)} runs in grid {grid.name}")
        return 0
    ensure_writable(root)
    data_root = Path(args.data_root) if args.data_root else None
    todo = pending(runs, root)
    print(f"grid {grid.name}: {len(runs)} runs, {len(runs) - len(todo)} already done, "
          f"{len(todo)} to run under {root}")
    started = time.perf_counter()
    failed = 0
    with tqdm(total=len(todo), unit="run", disable=not todo) as bar:
        def on_result(run, result):
            nonlocal failed
            cfg = run.config
            status = (f"top1 {result['top1']:.1f}%" if result["status"] == "ok"
                      else f"FAILED: {result['error']}")
            failed += result["status"] != "ok"
            bar.write(f"{run.entry:14s} s={cfg.sparsity.target:<5g} seed={cfg.seed}  {status}")
            bar.update(1)

        run_debug(todo, root, data_root, retry_failed=args.retry_failed, on_result=on_result)
    print(f"trained {len(todo)} runs in {time.perf_counter() - started:.0f} s"
          + (f", {failed} failed" if failed else ""))
    if not args.no_report:
        _report(root, Path(args.out) if args.out else root / "report")
    return 0


def _report(root: Path, out: Path) -> None:
    from bench.report import write_report

    paths = write_report(root, out)
    print(f"report: {out} ({len(paths)} files)")
    for path in paths:
        if path.suffix == ".md" and path.name != "README.md":
            print(f"\n{path.read_text()}")


def cmd_status(args: argparse.Namespace) -> int:
    from bench import store
    from bench.grid import load_grid, parse_only, select
    from bench.run import run_folder

    grid = load_grid(args.grid)
    root = _root(args.root)
    counts = {"done": 0, "failed": 0, "partial": 0, "missing": 0}
    for run in select(grid, parse_only(args.only)):
        folder = run_folder(root, run.config)
        result = store.read_result(folder)
        if result is not None:
            state = "done" if result["status"] == "ok" else "failed"
        elif (folder / store.CHECKPOINT).exists():
            state = "partial"
        else:
            state = "missing"
        counts[state] += 1
        cfg = run.config
        extra = f"  {result['error']}  (log: {folder / store.LOG})" if state == "failed" else ""
        print(f"{state:8s} {cfg.model.name:14s} {cfg.data.name:10s} {run.entry:14s} "
              f"s={cfg.sparsity.target:<5g} seed={cfg.seed}{extra}")
    print(", ".join(f"{n} {k}" for k, n in counts.items()))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    root = _root(args.root)
    if not (root / "runs").exists():
        raise UserError(f"no runs under {root}: run a grid first or pass --root DIR")
    out = Path(args.out) if args.out else root / "report"
    ensure_writable(out)
    _report(root, out)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    if args.what == "methods":
        from methods import REGISTRY

        for name, cls in sorted(REGISTRY.items()):
            doc = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip()
            print(f"{name:14s} {doc.splitlines()[0] if doc else ''}")
    elif args.what == "models":
        from bench.models import MODELS

        for name, spec in sorted(MODELS.items()):
            print(f"{name:14s} {spec.description}")
    elif args.what == "datasets":
        from bench.data import DATASETS

        for name, spec in sorted(DATASETS.items()):
            print(f"{name:14s} {spec.description}")
    else:
        from bench.grid import builtin_grids, load_grid

        for name in sorted(builtin_grids()):
            grid = load_grid(name)
            print(f"{name:14s} {len(grid.runs):4d} runs  {grid.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparsebench",
                                     description="Benchmark harness for sparse training.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train every missing run of a grid, then report")
    run.add_argument("grid", help="a grid TOML file or the name of a built-in grid (e.g. smoke)")
    run.add_argument("--root",
                     help=f"output root (default $SPARSEBENCH_ROOT or ./{DEFAULT_ROOT})")
    run.add_argument("--data-root", help="dataset root (default $SPARSEBENCH_DATA or "
                     "~/.cache/sparsebench)")
    run.add_argument("--only", help="filter runs: key=value,... with keys model, dataset, "
                     "method, sparsity, seed")
    run.add_argument("--dry-run", action="store_true", help="list the runs, train nothing")
    run.add_argument("--retry-failed", action="store_true", help="rerun runs that failed")
    run.add_argument("--no-report", action="store_true", help="skip the report at the end")
    run.add_argument("--out", help="report folder (default ROOT/report)")
    run.set_defaults(func=cmd_run)

    status = sub.add_parser("status", help="done / partial / failed / missing per run")
    status.add_argument("grid")
    status.add_argument("--root")
    status.add_argument("--only")
    status.set_defaults(func=cmd_status)

    report = sub.add_parser("report", help="tables and plots from the results on disk")
    report.add_argument("--root")
    report.add_argument("--out")
    report.set_defaults(func=cmd_report)

    lst = sub.add_parser("list", help="list methods, models, datasets or built-in grids")
    lst.add_argument("what", choices=("methods", "models", "datasets", "grids"))
    lst.set_defaults(func=cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"sparsebench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sparsebench: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
