"""`sparsebench report`: aggregate every result.json under a root over seeds and write, per
(model, dataset), tables (Markdown, CSV, LaTeX), figures (PNG, SVG, PDF), a Markdown index
``<out>/README.md`` and the whole report as one static page ``<out>/index.html``.

Layout (names are fixed so links and scripts can rely on them)::

    <out>/index.html                  one page: tables (sortable), figures, leaderboard, curves
    <out>/README.md, results.csv (all aggregated cells, numeric), runs.csv (one row per run)
    <out>/leaderboard.md                            methods ranked per target sparsity
    <out>/<model>-<dataset>/accuracy.{md,tex}       method x target sparsity, mean ± std (n)
    <out>/<model>-<dataset>/accuracy.csv            the same as numbers (mean, std, n, min,
                                                    max, achieved sparsity) and cell flags
    <out>/<model>-<dataset>/summary.{md,csv,tex}    long form: achieved sparsity, params, MACs
    <out>/<model>-<dataset>/{params,macs,train_flops}.{png,svg,pdf}   accuracy vs cost, 6.9 in
    <out>/<model>-<dataset>/{params,macs,train_flops}-1col.{png,pdf}  the same at 3.3 in
    <out>/<model>-<dataset>/curves-s<pct>.{png,svg,pdf}   test top-1 / train loss per epoch
    <out>/<model>-<dataset>/layers-s<pct>.{png,svg,pdf}   per-layer density heatmap

Published numbers (``baselines/published.toml``, see bench.report.published) appear as extra,
labelled rows of the accuracy tables, hollow points on the plots and unranked rows of the
leaderboard, for the (model, dataset) pairs that have results.

The report is built in a temporary sibling folder and moved into place only once complete, so a
failure never leaves a half-written report (an existing one stays as it was).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Collection
from pathlib import Path

import pandas as pd

from bench import store
from bench.errors import UserError
from bench.report import published as published_numbers
from bench.report import reference
from bench.report.aggregate import aggregate, mixed_settings, normalise, pct, section_dir
from bench.report.html import Section as HtmlSection
from bench.report.html import page
from bench.report.leaderboard import RANKING, leaderboard, section
from bench.report.numeric import accuracy_frame, with_ranges
from bench.report.plots import (
    plot_accuracy,
    plot_curves,
    plot_layers,
    styles,
    with_relative_train_flops,
)
from bench.report.recipes import load as load_runs
from bench.report.tables import (
    accuracy_table,
    error_line,
    to_markdown,
    write_accuracy,
    write_summary,
)

__all__ = ["write_report", "aggregate"]


def write_report(root: Path, out: Path, published: Path | None = None,
                 run_ids: Collection[str] | None = None, scope: str = "",
                 grid_ids: Collection[str] | None = None) -> list[Path]:
    """Write the report for every result under `root` into `out`; returns the files written.
    `published`: the published-numbers file (None = the repository's baselines/published.toml,
    and none at all when that file is absent). `run_ids`: report only these runs (a grid's,
    so that a root shared by several grids is reported per grid); `scope` names them;
    `grid_ids`: the grid's runs before ``--only``, where a dense reference left out of the
    selection is looked for first (``bench.report.reference``)."""
    root, out = Path(root), Path(out)
    every = load_runs(root)
    runs = every
    if run_ids is not None:
        runs = every[every["run_id"].isin(set(run_ids))].reset_index(drop=True)
    if runs.empty:
        where = f" for {scope}" if scope else ""
        raise UserError(f"no results{where} under {store.runs_dir(root)}: run a grid first")
    entries = published_numbers.load(published)
    if out.exists() and not out.is_dir():
        raise UserError(f"report output {out} exists and is not a folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    except OSError as exc:
        raise UserError(f"cannot write the report to {out}: {exc.strerror or exc}") from exc
    try:
        written = _build(runs, tmp, root, entries, out, every, grid_ids)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the report is meant to be shared
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [out / p.relative_to(tmp) for p in written]


def _publish(tmp: Path, out: Path) -> None:
    """Swap the finished folder in; on failure the previous report is put back."""
    if not out.exists():
        os.rename(tmp, out)
        return
    old = out.with_name(f"{tmp.name}.old")
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _build(runs: pd.DataFrame, tmp: Path, root: Path, entries, out: Path,
           every: pd.DataFrame, grid_ids: Collection[str] | None) -> list[Path]:
    agg = aggregate(runs)
    written = [tmp / "results.csv", tmp / "runs.csv", tmp / "leaderboard.md"]
    # CSV numbers are pandas' default: each float as the shortest text that reads back as the
    # same float (85.2, not %.17g's 85.200000000000003), so they equal result.json's exactly.
    with_ranges(agg, runs).to_csv(written[0], index=False)
    # Paths relative to the root, so a copied or committed report names no machine's folders.
    runs.assign(path=[_from_root(p, root) for p in runs["path"]]).to_csv(written[1],
                                                                         index=False)
    sections, pages = [], []
    rows = normalise(runs)
    for (model, dataset), sub in agg.groupby(["model", "dataset"], sort=True):
        folder = tmp / section_dir(model, dataset)
        folder.mkdir()
        title = f"{model} on {dataset}"
        pub = published_numbers.for_section(entries, model, dataset)
        mine = rows[(rows["model"] == model) & (rows["dataset"] == dataset)]
        files = write_accuracy(sub, folder, title, pub) + write_summary(sub, folder, title)
        # The CSV is numbers (mean, std, n, min, max columns), not the Markdown cells.
        accuracy_frame(sub, mine, pub).to_csv(folder / "accuracy.csv", index=False)
        style = styles(sub.loc[~sub["is_dense"].astype(bool), "method_label"])
        ref = reference.find(sub, mine, every, grid_ids)
        html_section = HtmlSection(model, dataset, sub, mine, pub,
                                   leaderboard_md="\n".join(section(sub, title, pub, ref)))
        for axis in ("params", "macs", "train_flops"):
            # Training FLOPs are relative to the section's dense reference, also one that
            # the selection left out.
            frame = with_relative_train_flops(sub, ref.row) if axis == "train_flops" else sub
            made = plot_accuracy(frame, axis, folder / axis, title, pub, style)
            files += made
            if made:
                html_section.figures[axis] = _rel(folder / f"{axis}.svg", tmp)
        for target, paths in _layer_plots(mine, sub, folder, title):
            files += paths
            html_section.layers.append((target, _rel(paths[0].with_suffix(".svg"), tmp)))
        for target, paths in _curve_plots(mine, sub, folder, title, style):
            files += paths
            html_section.curves.append((target, _rel(paths[0].with_suffix(".svg"), tmp)))
        html_section.files = [_rel(p, tmp) for p in files if p.suffix in (".md", ".csv", ".tex")]
        written += files
        sections.append((model, dataset, sub, files, pub, ref))
        pages.append(html_section)
    written[2].write_text(leaderboard([(f"{m} on {d}", s, p, r)
                                       for m, d, s, _, p, r in sections]))
    readme = tmp / "README.md"
    readme.write_text(_index(runs, root_from(out, root), sections, tmp))
    index = tmp / "index.html"
    index.write_text(page(pages, out, root_from(out, root), RANKING, mixed_settings(runs)))
    return [readme, index, *written]


def _rel(path: Path, base: Path) -> str:
    return path.relative_to(base).as_posix()


def _from_root(path: object, root: Path) -> str:
    """A run folder relative to the root ('runs/<name>')."""
    return Path(os.path.relpath(Path(str(path)).resolve(), root.resolve())).as_posix()


def root_from(out: Path, root: Path) -> str:
    """The run root as the report names it: relative to the report folder ('..' for the
    default ROOT/report), never the absolute path of the machine that wrote it."""
    return Path(os.path.relpath(root.resolve(), out.resolve())).as_posix()


def _ok_runs(mine: pd.DataFrame, labels, target: float) -> pd.DataFrame:
    ok = mine[(mine["status"] == "ok") & mine["method_label"].isin(labels)]
    return ok[ok["target_sparsity"] == target]


def _layer_plots(mine, sub, folder, title) -> list[tuple[float, list[Path]]]:
    sparse = sub[~sub["is_dense"].astype(bool)]
    out = []
    for target in sorted(set(sparse["target_sparsity"])):
        results: dict[str, list[list[dict]]] = {}
        at = _ok_runs(mine, set(sparse["method_label"]), target)
        for label, path in sorted(zip(at["method_label"], at["path"], strict=True)):
            layers = (store.read_result(Path(path)) or {}).get("layers") or []
            if layers:
                results.setdefault(label, []).append(layers)
        if results:
            out.append((target, plot_layers(results, target, folder / f"layers-s{target * 100:g}",
                                            title)))
    return out


def _curve_plots(mine, sub, folder, title, style) -> list[tuple[float, list[Path]]]:
    """Per target sparsity: the sparse methods' curves with the dense reference's beside
    them, from each successful run's metrics.jsonl."""
    dense = sub[sub["is_dense"].astype(bool)]
    sparse = sub[~sub["is_dense"].astype(bool)]
    dense_runs = mine[(mine["status"] == "ok") & mine["method_label"].isin(
        set(dense["method_label"]))]
    out = []
    for target in sorted(set(sparse["target_sparsity"])):
        at = pd.concat([dense_runs, _ok_runs(mine, set(sparse["method_label"]), target)])
        histories: dict[str, list[list[dict]]] = {}
        for label, path in sorted(zip(at["method_label"], at["path"], strict=True)):
            records = read_metrics(Path(path))
            if records:
                histories.setdefault(label, []).append(records)
        if histories:
            paths = plot_curves(histories, target, folder / f"curves-s{target * 100:g}", title,
                                style)
            if paths:
                out.append((target, paths))
    return out


def read_metrics(folder: Path) -> list[dict]:
    """The per-epoch records of a finished run's metrics.jsonl ([] when absent). One that is
    damaged, another run's, or not the history the run's result recorded
    (``store.inspect_metrics``) draws no curve: it is set aside with a warning naming it
    (only skipped while a process trains the run: that one rewrites it)."""
    from bench import locks

    result = store.read_result(folder)
    history = result.get("history") if result else None
    records, problem = store.inspect_metrics(
        folder, history if isinstance(history, list) else None)
    if problem:
        path = folder / store.METRICS
        # A run in training rewrites it at its next epoch; a root we may only read keeps it.
        if not locks.run_is_training(folder):
            try:
                store.set_aside(path, f"{problem}; its curve is left out")
                return records
            except OSError:
                pass
        store.warn(f"{path} {problem}: its curve is left out")
    return records


def _index(runs: pd.DataFrame, root: str, sections, tmp: Path) -> str:
    n_ok = int((runs["status"] == "ok").sum())
    n_failed = len(runs) - n_ok
    lines = [
        "# sparsebench report",
        "",
        f"Results under `{root}` (the run root, relative to this folder): {len(runs)} runs "
        f"({n_ok} ok, {n_failed} failed), "
        f"{len(sections)} (model, dataset) pair(s).",
        "",
        "Accuracy is top-1 test accuracy in %: mean ± sample std (ddof=1) over the seeds that "
        "finished, n = their number. Failed runs are counted and shown, never averaged in. "
        "Plot points sit at the achieved (not nominal) nonzero params / MACs; the dashed line "
        "and star are the dense model.",
        "",
        "- [index.html](index.html): the whole report as one page (open it in a browser; "
        "sortable tables, figures inline, every cell linked to its runs)",
        "- [leaderboard.md](leaderboard.md): methods ranked by mean top-1 at each target "
        "sparsity, with published numbers marked as such",
        "- [results.csv](results.csv): every aggregated cell, all models and datasets",
        "- [runs.csv](runs.csv): one row per run",
        "",
    ]
    for model, dataset, sub, files, pub, _ in sections:
        rel = [p.relative_to(tmp).as_posix() for p in files]
        names = {Path(r).name: r for r in rel}
        lines += [f"## {model} on {dataset}", ""]
        lines.append("- tables: " + ", ".join(
            _links(stem, ("md", "csv", "tex"), names) for stem in ("accuracy", "summary")
        ))
        plots = [s for s in ("params", "macs", "train_flops") if f"{s}.png" in names]
        if plots:
            lines.append("- plots: " + ", ".join(
                f"accuracy vs {_PLOT_NAMES[s]} " + _files(s, names) for s in plots
            ))
        else:
            lines.append("- plots: none (no successful run)")
        for prefix, what in (("curves-s", "training curves"), ("layers-s", "layer-wise density")):
            stems = sorted({Path(r).stem for r in rel if Path(r).name.startswith(prefix)},
                           key=lambda stem, p=prefix: float(stem.removeprefix(p)))
            if stems:
                lines.append(f"- {what}: " + ", ".join(
                    f"{stem.removeprefix(prefix)}% " + _files(stem, names) for stem in stems
                ))
        lines += ["", to_markdown(accuracy_table(sub, pub), index=True)]
        if "params.png" in names:
            lines += [f"![accuracy vs nonzero params]({names['params.png']})", ""]
    failed = runs[runs["status"] != "ok"]
    if not failed.empty:
        lines += ["## Failed runs", ""]
        table = pd.DataFrame({
            "run": [Path(str(p)).name for p in failed["path"]],
            "model / dataset": [f"{m} / {d}" for m, d in zip(
                failed["model"], failed["dataset"], strict=True
            )],
            "method": failed["method_label"].fillna(failed["method"]),
            "sparsity": [pct(t) if pd.notna(t) else "?" for t in failed["target_sparsity"]],
            "seed": failed["seed"],
            "error": [error_line(e) for e in failed["error"]],
        })
        lines += [to_markdown(table, index=False)]
    notes = mixed_settings(runs)
    for _, _, sub, _, _, _ in sections:
        for _, row in sub[sub["calibration_unconverged"] > 0].iterrows():
            notes.append(f"{row['model']}/{row['dataset']} {row['method_label']} at "
                         f"{pct(row['target_sparsity'])}: the calibration of "
                         f"{int(row['calibration_unconverged'])} seed(s) did not converge "
                         f"(achieved sparsity {row['achieved_sparsity']:.4f})")
    if notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]
    return "\n".join(lines)


_PLOT_NAMES = {"params": "nonzero params", "macs": "MACs",
               "train_flops": "training FLOPs (relative to dense)"}


def _files(stem: str, names: dict[str, str]) -> str:
    """'(png · svg · pdf · 1-column: png · pdf)' for the files of one figure that exist."""
    parts = [f"[{ext}]({names[f'{stem}.{ext}']})" for ext in ("png", "svg", "pdf")
             if f"{stem}.{ext}" in names]
    one = [f"[{ext}]({names[f'{stem}-1col.{ext}']})" for ext in ("png", "pdf")
           if f"{stem}-1col.{ext}" in names]
    return "(" + " · ".join(parts + ([f"1-column: {' · '.join(one)}"] if one else [])) + ")"


def _links(stem: str, exts: tuple[str, ...], names: dict[str, str]) -> str:
    return f"{stem} (" + " · ".join(f"[{ext}]({names[stem + '.' + ext]})" for ext in exts) + ")"
