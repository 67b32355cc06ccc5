"""The ``sparsebench`` command: run, status, report, check, list.

User errors (unknown names, bad values, malformed grids, missing data, unwritable roots) print
one line on stderr and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.errors import UserError

DEFAULT_ROOT = "sparsebench-runs"
PREFLIGHT_STEPS = 3  # timed steps per recipe when --preflight-steps is not given
QUIET_HELP = ("print only errors and one-line summaries (no progress bars, per-run lines or "
              "tables)")


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

    from bench import store
    from bench.digests import Digests
    from bench.environment import check_root, check_runs
    from bench.grid import load_grid, parse_only, select
    from bench.launch import plan, run_debug, run_local, slurm_settings
    from bench.progress import Watcher
    from bench.run import run_folder

    grid = load_grid(args.grid)
    runs = select(grid, parse_only(args.only))
    root = _root(args.root)
    if args.executor != "slurm":
        # The grid's [slurm] table is part of the file: a typo in it is an error whichever
        # executor runs the grid today (--executor slurm checks it with its flags below).
        slurm_settings(grid.slurm, source=grid.path)
    if args.jobs is not None and args.jobs < 1:
        raise UserError(f"--jobs {args.jobs}: expected a number of runs at once >= 1")
    preflight_flags = [f for f, v in (("--preflight-steps", args.preflight_steps),
                                       ("--preflight-batch", args.preflight_batch))
                       if v is not None]
    if args.preflight and args.dry_run:
        raise UserError("--preflight and --dry-run are two different checks; give one")
    if preflight_flags and not args.preflight:
        raise UserError(f"{preflight_flags[0]} only applies to --preflight")
    if args.preflight:
        # Preflight trains no run and times on this machine: a flag for training is a mistake
        # about what it does, not something to ignore.
        training = [flag for flag, given in (
            ("--executor slurm", args.executor == "slurm"),
            ("--jobs", args.jobs is not None), ("--retry-failed", args.retry_failed),
            ("--no-report", args.no_report), ("--out", args.out),
            ("--tensorboard", args.tensorboard), ("--wandb", args.wandb)) if given]
        if training:
            raise UserError(f"{training[0]} does not apply to --preflight: it trains no run "
                            "and times on this machine")
        _no_slurm_flags(args)
        return _preflight(args, grid, runs)
    data_root = Path(args.data_root) if args.data_root else None
    if args.dry_run:
        return _dry_run(args, grid, runs, root, data_root)
    given = [f for f in (*SLURM_FLAGS, "--sbatch")
             if getattr(args, f.lstrip("-").replace("-", "_"), None)]
    if given and args.executor != "slurm":
        raise UserError(f"{given[0]} only applies to --executor slurm")
    _epoch_loggers(args)
    # Everything checkable before training, for the whole grid, before anything is written.
    check_root(root, Path(args.out) if args.out else None)
    check_runs(runs, data_root, devices=args.executor != "slurm")
    if args.executor == "slurm":
        return _submit_slurm(args, grid, runs, root, data_root)
    ensure_writable(root)
    # Plus the runs they reuse (EigenDamage's dense run) when --only left those out.
    digests = Digests(root)
    todo = plan(runs, root, args.retry_failed, digests)
    digests.save()
    print(f"grid {grid.name}: {len(runs)} runs{_added(todo.added)}, {len(todo.done)} already "
          f"done, {len(todo.order)} to run under {root}")
    started = time.perf_counter()
    failed = 0
    # Runs whose process ended without writing a result (killed, out of memory): nothing on
    # disk says they failed, so _failures is told.
    lost: set[str] = set()
    with tqdm(total=len(todo.order), unit="run", disable=not todo.order or args.quiet) as bar:
        def on_result(run, result):
            nonlocal failed
            cfg = run.config
            if result["status"] != "ok" and store.read_result(run_folder(root, cfg)) is None:
                lost.add(run.run_id)
            status = (f"top1 {result['top1']:.1f}%" if result["status"] == "ok"
                      else f"FAILED: {result['error']}" if result["status"] == "failed"
                      else f"ERROR ({result.get('error_kind')}): {result['error']}")
            failed += result["status"] != "ok"
            if not args.quiet or result["status"] != "ok":
                bar.write(f"{run.entry:14s} s={cfg.sparsity.target:<5g} seed={cfg.seed}  "
                          f"{status}")
            bar.update(1)

        # One bar per run in flight under the grid's bar: epoch and steps, from each run's
        # progress file (bench.progress).
        watched = [run_folder(root, run.config) for run in todo.order]
        with Watcher(watched, enabled=not args.quiet and bar.disable is False):
            if args.executor == "debug":
                run_debug(todo, root, data_root, retry_failed=args.retry_failed,
                          on_result=on_result)
            else:
                run_local(todo, root, data_root, jobs=args.jobs,
                          retry_failed=args.retry_failed, on_result=on_result)
    print(f"trained {len(todo.order)} runs in {time.perf_counter() - started:.0f} s"
          + (f", {failed} failed" if failed else ""))
    if not args.no_report:
        _report(root, Path(args.out) if args.out else root / "report", quiet=args.quiet,
                run_ids={r.run_id for r in grid.runs}, scope=f"grid {grid.name}")
    _target_warnings(runs, root)
    return _failures(grid.name, runs, root, lost)


def _failures(name: str, runs, root: Path, lost: set[str] = frozenset()) -> int:
    """1, with a line saying how many and what to do, when any run of the selection has a
    result that is not ok (failed now or before) or is in `lost` (its process ended without
    a result: an error of the environment); else 0."""
    from bench import store
    from bench.run import run_folder

    results = [store.read_result(run_folder(root, run.config)) for run in runs]
    bad = [r for r in results if r is not None and r.get("status") != "ok"]
    bad += [{"status": "error"} for run, r in zip(runs, results, strict=True)
            if r is None and run.run_id in lost]
    if not bad:
        return 0
    training = sum(r.get("status") == "failed" for r in bad)
    parts = []
    if training:
        parts.append(f"{training} in training (rerun with --retry-failed to retry)")
    if len(bad) > training:
        parts.append(f"{len(bad) - training} by an error of the environment (a plain rerun "
                     "retries)")
    print(f"sparsebench: {len(bad)} of {len(runs)} runs of grid {name} failed: "
          f"{'; '.join(parts)}", file=sys.stderr)
    return 1


def _preflight(args: argparse.Namespace, grid, runs) -> int:
    """Preflight (bench.preflight) after the checks run makes (device, model against data,
    train_subset, world size), except that a dataset may be absent: it is timed on synthetic
    data of its shape. -q prints the summary without the per-run table and timing lines."""
    from bench.environment import check_runs
    from bench.preflight import format_report, preflight

    data_root = Path(args.data_root) if args.data_root else None
    check_runs(runs, data_root, missing_data_ok=True)
    steps = PREFLIGHT_STEPS if args.preflight_steps is None else args.preflight_steps
    log = (lambda _line: None) if args.quiet else (lambda line: print(line, file=sys.stderr))
    try:
        result = preflight(runs, steps, args.preflight_batch, data_root, log=log)
    except KeyboardInterrupt:
        print("sparsebench: interrupted; preflight writes nothing, so there is nothing to "
              "resume", file=sys.stderr)
        return 130
    lines = format_report(result, grid.name)
    print("\n".join(lines[len(result.runs) + 1:] if args.quiet else lines))
    return 1 if any(e.error for e in result.runs) else 0


def _added(added) -> str:
    """' + N run(s) they reuse (entries)': the dependencies the selection left out, so that
    the counts that follow add up."""
    if not added:
        return ""
    entries = ", ".join(sorted({r.entry for r in added}))
    return f" + {len(added)} run{'s' if len(added) != 1 else ''} they reuse ({entries})"


def _no_slurm_flags(args: argparse.Namespace) -> None:
    given = [f for f in (*SLURM_FLAGS, "--sbatch")
             if getattr(args, f.lstrip("-").replace("-", "_"), None)]
    if given:
        raise UserError(f"{given[0]} only applies to --executor slurm")


def _dry_run(args: argparse.Namespace, grid, runs, root: Path, data_root: Path | None) -> int:
    """Every run that ``run`` would train (dependencies included), after every check ``run``
    makes before training: the [slurm] table and flags for --executor slurm, the logger
    packages, the root, and the data and device of every run it would train; writes
    nothing."""
    from bench.environment import check_root, check_runs
    from bench.launch import plan, slurm_settings

    if args.executor == "slurm":
        from bench.launch.slurm_settings import check_gpus

        check_gpus(slurm_settings(grid.slurm, _slurm_overrides(args, grid.slurm),
                                  source=grid.path),
                   {r.config.train.world_size for r in runs})
    else:
        _no_slurm_flags(args)
    _epoch_loggers(args)
    check_root(root, Path(args.out) if args.out else None)
    todo = plan(runs, root, args.retry_failed)
    # The dependencies plan() added train too, so their data and device are checked as well.
    check_runs([*runs, *todo.added], data_root, devices=args.executor != "slurm")
    done = {r.run_id for r in todo.done}
    added = {r.run_id for r in todo.added}
    for run in [*todo.done, *todo.order]:
        state = "  (done)" if run.run_id in done else (
            "  (needed by the grid's runs)" if run.run_id in added else "")
        print(f"{run.run_id}  {_run_line(run)}{state}")
    print(f"{len(runs)} runs in grid {grid.name}{_added(todo.added)}: {len(todo.done)} "
          f"already done, {len(todo.order)} to train")
    return 0


def _epoch_loggers(args: argparse.Namespace) -> None:
    """--tensorboard / --wandb: checked here (one line and exit 2 when the package is
    missing, before anything trains) and handed to the runs through the environment, which
    the local executor's subprocesses inherit (bench.loggers)."""
    from bench import loggers

    for flag, value, env, module, extra in (
        ("--tensorboard", args.tensorboard, loggers.TENSORBOARD_ENV, "tensorboard",
         "tensorboard"),
        ("--wandb", args.wandb, loggers.WANDB_ENV, "wandb", "wandb"),
    ):
        if not value:
            continue
        try:
            __import__(module)
        except ImportError:
            raise UserError(f"{flag} needs the {module} package: "
                            f"pip install 'sparsebench[{extra}]'") from None
        if flag == "--tensorboard":
            _check_folder(flag, Path(value))
        os.environ[env] = str(Path(value).resolve()) if flag == "--tensorboard" else value


def _check_folder(flag: str, folder: Path) -> None:
    """`folder` is, or can be created as, a writable folder (else every run would fail when it
    opens its log there)."""
    from bench import store

    if folder.exists() and not folder.is_dir():
        raise UserError(f"{flag} {folder} is a file, not a folder")
    if not store.writable_folder(folder if folder.exists() else store.creation_parent(folder)):
        raise UserError(f"{flag} {folder} is not a writable folder")


def _target_warnings(runs, root: Path) -> None:
    """One line per finished run that missed its sparsity target (bench.report.eligibility)."""
    from bench import store
    from bench.report.eligibility import warning_line

    for run in runs:
        folder = store.find_run_dir(root, run.run_id)
        line = warning_line(run.entry, store.read_result(folder) if folder else None)
        if line:
            print(line)


def _report(root: Path, out: Path, published: Path | None = None, quiet: bool = False,
            run_ids: set[str] | None = None, scope: str = "",
            grid_ids: set[str] | None = None) -> None:
    from bench.report import published as published_numbers
    from bench.report import write_report

    paths = write_report(root, out, published, run_ids, scope, grid_ids)
    print(f"report: {out} ({len(paths)} files; open {out / 'index.html'})")
    if published is None and not published_numbers.DEFAULT_PATH.is_file():
        # A regular (not editable) install has no repository around it: say why the published
        # rows are missing instead of leaving them out silently.
        print(f"note: no published numbers shown: {published_numbers.DEFAULT_PATH} is absent "
              "(an install that is not editable); pass --published FILE")
    if quiet:
        return
    for path in paths:
        if path.suffix == ".md" and path.name != "README.md":
            print(f"\n{path.read_text()}")


ONLY_HELP = ("filter runs: key=value,... with keys model, dataset, method, sparsity (a fraction: "
             "0.9), seed; each key once, each value one the grid has. method=NAME also selects "
             "NAME's variants (method=static includes static-erk); a variant's name selects "
             "only that variant")

SLURM_FLAGS = {
    "--partition": "partition", "--account": "account", "--qos": "quality of service",
    "--time": "time limit per run: minutes, HH:MM:SS or D-HH:MM:SS (default 240)",
    "--gpus": "GPUs per run (default 0)", "--cpus": "CPUs per run (default 2)",
    "--mem": "memory per run, e.g. 16G", "--constraint": "node features",
    "--array-parallelism": "tasks of one array running at once (default 256)",
    "--max-array-size": "tasks per array (default: the cluster's MaxArraySize)",
}


def _slurm_overrides(args: argparse.Namespace, grid_table: dict) -> dict:
    from bench.launch import SLURM_KEYS

    overrides = {key: getattr(args, key, None) for key in SLURM_KEYS
                 if key not in ("extra", "setup")}
    if args.sbatch:
        extra = {}
        for item in args.sbatch:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise UserError(f"--sbatch takes KEY=VALUE (an sbatch long option), got {item!r}")
            extra[key.strip().lstrip("-")] = value.strip()
        base = grid_table.get("extra")
        overrides["extra"] = {**base, **extra} if isinstance(base, dict) else extra
    return overrides


def _submit_slurm(args: argparse.Namespace, grid, runs, root: Path, data_root) -> int:
    from bench.launch import plan, slurm_settings, submit_slurm
    from bench.launch.slurm import cluster_max_array_size
    from bench.launch.slurm_settings import check_gpus

    settings = slurm_settings(grid.slurm, _slurm_overrides(args, grid.slurm), source=grid.path)
    check_gpus(settings, {r.config.train.world_size for r in runs})
    if plan(runs, root, args.retry_failed).order:
        # Reach the controller before the root, the manifest or the submit lock is written:
        # an unreachable SLURM is bad input too (one line, nothing written).
        cluster_max_array_size()
    ensure_writable(root)
    sub = submit_slurm(runs, root, data_root, settings, retry_failed=args.retry_failed,
                       name=f"sb-{grid.name}")
    for note in sub.notes:
        print(note)
    print(f"grid {grid.name}: {len(runs)} runs{_added(sub.added)}, {len(sub.done)} already "
          f"done, {len(sub.active)} queued or running, {len(sub.submitted)} to submit under "
          f"{root}")
    if sub.submitted:
        print(f"submitted {len(sub.submitted)} runs as {len(sub.arrays)} job array"
              f"{'s' if len(sub.arrays) != 1 else ''} ({', '.join(sub.arrays)}); "
              f"job logs under {root / 'slurm' / 'logs'}")
    else:
        print("nothing to submit")
    print(f"follow with: sparsebench status {args.grid} --root {root}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from bench.grid import load_grid, parse_only, select
    from bench.launch import STATES, status

    grid = load_grid(args.grid)
    root = _root(args.root)
    if root.exists() and not root.is_dir():  # else every run would read "missing"
        raise UserError(f"output root {root} is a file, not a folder; pass --root DIR or set "
                        "SPARSEBENCH_ROOT")
    states, used_slurm = status(select(grid, parse_only(args.only)), root)
    counts = dict.fromkeys(STATES, 0)
    for st in states:
        counts[st.state] += 1
        job = f"  job {st.job_id}" if st.job_id and st.state != "done" else ""
        detail = f"  {st.detail}" if st.detail else ""
        log = f"  (log: {st.log})" if st.log and st.state in ("failed", "partial", "corrupt") \
            else ""
        trials = f"  trials: {_trial_counts(st.trials)}" if st.trials else ""
        if args.quiet:
            continue
        print(f"{st.state:8s} {_run_line(st.run)}{job}{detail}{trials}{log}")
    # queued/running only when SLURM was asked (or a local run is training now); corrupt when
    # there is one.
    shown = [k for k in STATES if counts[k] or (k not in ("queued", "running", "corrupt")
                                                if not used_slurm else k != "corrupt")]
    print(", ".join(f"{counts[k]} {k}" for k in shown))
    trials = {t.folder: t for st in states for t in st.trials}
    if trials:  # shared by several runs: each counted once
        print(f"calibration trials: {_trial_counts(list(trials.values()))}")
    return 0


def _run_line(run) -> str:
    """A grid run (``GridRun``) in the columns every per-run listing uses (dry run, status)."""
    cfg = run.config
    return (f"{cfg.model.name:14s} {cfg.data.name:10s} {run.entry:14s} "
            f"s={cfg.sparsity.target:<5g} seed={cfg.seed}")


def _trial_counts(trials: list) -> str:
    """'2 done, 1 running' over `trials` (``bench.trial.TrialState``), in TRIAL_STATES order."""
    from bench.trial import TRIAL_STATES

    return ", ".join(f"{n} {k}" for k in TRIAL_STATES
                     if (n := sum(t.state == k for t in trials)))


def cmd_report(args: argparse.Namespace) -> int:
    root = _root(args.root)
    if not (root / "runs").exists():
        raise UserError(f"no runs under {root}: run a grid first or pass --root DIR")
    out = Path(args.out) if args.out else root / "report"
    run_ids, scope, grid_ids = None, "", None
    if args.grid:
        from bench.grid import load_grid, parse_only, select

        grid = load_grid(args.grid)
        run_ids = {r.run_id for r in select(grid, parse_only(args.only))}
        grid_ids = {r.run_id for r in select(grid, {})}
        scope = f"grid {grid.name}" + (f" --only {args.only}" if args.only else "")
    elif args.only:
        raise UserError("--only filters a grid's runs: sparsebench report GRID --only "
                        "key=value,...")
    # write_report checks the results, the published file and `out` before it creates
    # anything, and builds the folder aside: nothing is written when the command fails.
    _report(root, out, Path(args.published) if args.published else None, quiet=args.quiet,
            run_ids=run_ids, scope=scope, grid_ids=grid_ids)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from bench import check
    from bench.grid import parse_only

    root = _root(args.root)
    # nan compares false with everything and inf makes every drop a pass: finite only.
    if not (0 < args.sigmas < math.inf and 0 <= args.floor < math.inf):
        raise UserError(f"--sigmas must be a finite number > 0 and --floor a finite number "
                        f">= 0, got {args.sigmas:g} and {args.floor:g}")
    for flag in ("default_std", "default_sparsity_std"):
        value = getattr(args, flag)
        if value is not None and (not args.pin or not 0 <= value < math.inf):
            raise UserError(f"--{flag.replace('_', '-')} applies to --pin only and must be a "
                            "finite number >= 0")
    if args.pin:
        if args.out or args.allow_missing:
            raise UserError("--out and --allow-missing apply to a check, not to --pin")
        baseline, notes = check.pin(root, args.only, args.default_std, args.default_sparsity_std)
        check.write_baseline(Path(args.baseline), baseline)
        for note in notes:
            print(note)
        print(f"pinned {len(baseline['cells'])} cells from {baseline['pinned_from']['runs']} "
              f"runs under {root} to {args.baseline}")
        return 0
    baseline = check.load_baseline(Path(args.baseline))
    only = parse_only(args.only)
    runs = check.load_runs(root, only)
    comp = check.compare(baseline, check.cells(runs), sigmas=args.sigmas, floor=args.floor,
                         allow_missing=args.allow_missing, only=only,
                         current_fingerprint=check.common_fingerprint(runs))
    if not comp.checks:
        from bench.check.only_error import no_cell_error

        raise no_cell_error(args.only, only, baseline, args.baseline, root)
    src = baseline["pinned_from"]
    print(f"baseline {args.baseline}: {len(baseline['cells'])} cells pinned from "
          f"{src.get('root')} (git {', '.join(src.get('git') or ['?'])}); current: {root}")
    print(check.rule_line(comp))
    rows = check.table_rows(comp)
    if rows and not args.quiet:
        print(f"\n{check.format_table(rows)}\n")
    if args.out:
        from bench.store import atomic_write_text

        try:
            atomic_write_text(Path(args.out), check.to_csv(comp))
        except OSError as exc:
            raise UserError(f"cannot write {args.out}: {exc.strerror or exc}") from None
        print(f"comparison of all {len(comp.checks)} cells: {args.out}")
    print(check.summary_line(comp))
    print("check FAILED" if comp.failed else "check passed")
    return 1 if comp.failed else 0


def cmd_list(args: argparse.Namespace) -> int:
    # Read statically (bench.catalog): importing the registries would import torch (2-5 s).
    from bench import catalog

    if args.what == "grids":
        grids = catalog.grids()
        width = max(map(len, grids), default=0)
        for name, (description, axes) in grids.items():
            shape = " x ".join(f"{n} {axis}" for axis, n in axes.items())
            print(f"{name:{width}s} {catalog.grid_runs(name):4d} runs  {description}  "
                  f"({shape})")
        return 0
    listing = {"methods": catalog.methods, "models": catalog.models,
               "datasets": catalog.datasets}[args.what]()
    width = 20 if args.what == "models" else 14
    # Then what other installed packages register through entry points (bench.plugins).
    for name, text in [*listing.items(), *catalog.plugins(args.what, listing).items()]:
        print(f"{name:{width}s} {text}")
    if args.what == "models":
        print(f"{'tv:NAME':20s} any torchvision classification model, e.g. tv:resnet18 "
              f"(thin dense: tv: ResNets only)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """`show method NAME` describes a method; `show GRID` prints every run's resolved config."""
    what = args.what
    if what[0] == "method" and len(what) == 2:
        if args.only:
            raise UserError("--only applies to show GRID, not to show method NAME")
        from bench.describe import describe_method

        print(describe_method(what[1]))
        return 0
    if what == ["method"] and not Path("method").exists():
        from bench import catalog

        raise UserError(f"show method needs a method's name: show method NAME, with NAME one "
                        f"of {', '.join(sorted(catalog.methods()))}")
    if len(what) != 1:
        raise UserError(f"show {' '.join(what)}: valid are `show GRID` and `show method NAME`")
    from bench.grid import load_grid, parse_only, select
    from bench.show import describe

    grid = load_grid(what[0])
    runs = select(grid, parse_only(args.only))
    for run in runs:
        print("\n".join(describe(run)))
    print(f"{len(runs)} runs in grid {grid.name}")
    return 0


class _Parser(argparse.ArgumentParser):
    """Bad command-line input is one line too (argparse prints its usage first), exit 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from bench import __version__

    parser = _Parser(prog="sparsebench", description="Benchmark harness for sparse training.")
    parser.add_argument("--version", action="version", version=f"sparsebench {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train every missing run of a grid, then report")
    run.add_argument("grid", help="a grid TOML file or the name of a built-in grid (e.g. smoke)")
    run.add_argument("--root",
                     help=f"output root (default $SPARSEBENCH_ROOT or ./{DEFAULT_ROOT})")
    run.add_argument("--data-root", help="dataset root (default $SPARSEBENCH_DATA or "
                     "~/.cache/sparsebench)")
    run.add_argument("--only", help=ONLY_HELP)
    run.add_argument("--dry-run", action="store_true", help="check everything run checks (data, "
                     "devices, root, [slurm]) and list the runs it would train; train nothing")
    run.add_argument("--preflight", action="store_true", help="build every run and time a few "
                     "steps of each distinct recipe (synthetic data of the real shape when the "
                     "dataset is absent); print params, MACs, step time, peak memory and the "
                     "grid's estimated device-hours; write nothing")
    run.add_argument("--preflight-steps", type=int,
                     help="timed steps per recipe, after one warm-up step (default "
                     f"{PREFLIGHT_STEPS})")
    run.add_argument("--preflight-batch", type=int, metavar="N", help="time steps at batch "
                     "at most N and scale per example (for CPUs that cannot hold the real batch)")
    run.add_argument("--retry-failed", action="store_true", help="rerun runs that failed")
    run.add_argument("--no-report", action="store_true", help="skip the report at the end")
    run.add_argument("--out", help="report folder (default ROOT/report)")
    run.add_argument("--executor", choices=("local", "debug", "slurm"), default="local",
                     help="local: subprocesses, --jobs at a time (default); debug: one after "
                     "another in this process; slurm: submit job arrays and return")
    run.add_argument("--tensorboard", metavar="DIR", help="also log each epoch's metrics "
                     "to TensorBoard under DIR/<run> (needs the tensorboard extra)")
    run.add_argument("--wandb", metavar="PROJECT", help="also log each epoch's metrics to "
                     "Weights & Biases, offline unless WANDB_MODE says otherwise (needs the "
                     "wandb extra)")
    run.add_argument("--jobs", type=int, help="local executor: runs at once (default: the "
                     "number of cores / the runs' train.cpu_threads)")
    slurm = run.add_argument_group("SLURM (--executor slurm; override the grid's [slurm] table)")
    for flag, text in SLURM_FLAGS.items():
        slurm.add_argument(flag, help=text)
    slurm.add_argument("--sbatch", action="append", metavar="KEY=VALUE",
                       help="another sbatch option, e.g. --sbatch mail-type=FAIL (repeatable)")
    run.set_defaults(func=cmd_run)

    status = sub.add_parser("status", help="done / queued / running / failed / partial / "
                            "missing per run, from the run folders and squeue")
    status.add_argument("grid")
    status.add_argument("--root")
    status.add_argument("--only", help=ONLY_HELP)
    status.set_defaults(func=cmd_status)

    report = sub.add_parser("report", help="tables and plots from the results on disk")
    report.add_argument("grid", nargs="?", help="report only this grid's runs (a TOML file or "
                        "a built-in grid's name; default: every result under the root)")
    report.add_argument("--only", help="with GRID: only these runs, key=value,... as for run")
    report.add_argument("--root")
    report.add_argument("--out")
    report.add_argument("--published", metavar="FILE", help="published numbers to show next "
                        "to ours (default: the repository's baselines/published.toml)")
    report.set_defaults(func=cmd_report)

    chk = sub.add_parser("check", help="compare results with a pinned baseline; exit 1 on a "
                         "regression (--pin writes the baseline instead)")
    chk.add_argument("--baseline", required=True, metavar="FILE",
                     help="pinned baseline JSON (see baselines/pinned/README.md)")
    chk.add_argument("--root",
                     help=f"results root (default $SPARSEBENCH_ROOT or ./{DEFAULT_ROOT})")
    chk.add_argument("--only", help="compare only these cells: key=value,... with keys model, "
                     "dataset, method, sparsity, seed (as for run)")
    chk.add_argument("--sigmas", type=float, default=3.0,
                     help="k in tol = max(floor, k*sqrt(s_b^2/n_b + s_c^2/n_c)) (default 3)")
    chk.add_argument("--floor", type=float, default=0.5,
                     help="smallest accuracy tolerance, in top-1 points (default 0.5)")
    chk.add_argument("--allow-missing", action="store_true",
                     help="baseline cells with no current result do not fail the check")
    chk.add_argument("--out", metavar="CSV", help="also write the full comparison as CSV")
    chk.add_argument("--pin", action="store_true",
                     help="write FILE from the results under --root instead of checking")
    chk.add_argument("--default-std", type=float, metavar="POINTS",
                     help="--pin: top-1 std for single-seed cells (default: median std of the "
                     "multi-seed cells)")
    chk.add_argument("--default-sparsity-std", type=float,
                     help="--pin: achieved-sparsity std for single-seed cells whose counts are "
                     "learned (default: median over cells whose counts varied, else 0.01)")
    chk.set_defaults(func=cmd_check)

    show = sub.add_parser("show", help="show GRID: the fully resolved config of every run of "
                          "a grid; show method NAME: a method's hyperparameters, defaults and "
                          "source")
    show.add_argument("what", nargs="+", metavar="GRID | method NAME",
                      help="a grid TOML file or built-in grid name, or `method NAME`")
    show.add_argument("--only", help="filter runs as for run: key=value,...")
    show.set_defaults(func=cmd_show)

    lst = sub.add_parser("list", help="list methods, models, datasets or built-in grids")
    lst.add_argument("what", choices=("methods", "models", "datasets", "grids"))
    lst.set_defaults(func=cmd_list)

    # --quiet after the command too (sparsebench run smoke --quiet); SUPPRESS keeps the value
    # given before the command when it is not repeated after it.
    for command in sub.choices.values():
        command.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                             help=QUIET_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = args.func(args)
        sys.stdout.flush()  # a closed pipe shows up here, not in the interpreter's exit
        return status
    except BrokenPipeError:
        # The reader went away (`sparsebench report | head -1`): stop quietly, as a shell tool
        # killed by SIGPIPE does. stdout goes to /dev/null so the interpreter's final flush
        # does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + 13
    except UserError as exc:
        print(f"sparsebench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sparsebench: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
