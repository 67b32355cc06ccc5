"""`sparsebench report`: aggregate every result.json under a root over seeds and write, per
(model, dataset), tables (Markdown, CSV, LaTeX), accuracy plots (PNG, SVG), layer-density plots,
and an index ``<out>/README.md``.

Layout (names are fixed so links and scripts can rely on them)::

    <out>/README.md, results.csv (all aggregated cells), runs.csv (one row per run)
    <out>/leaderboard.md                            methods ranked per target sparsity
    <out>/<model>-<dataset>/accuracy.{md,csv,tex}   method x target sparsity, mean ± std (n)
    <out>/<model>-<dataset>/summary.{md,csv,tex}    long form: achieved sparsity, params, MACs
    <out>/<model>-<dataset>/params.{png,svg}        accuracy vs achieved nonzero params
    <out>/<model>-<dataset>/macs.{png,svg}          accuracy vs achieved MACs
    <out>/<model>-<dataset>/layers-s<pct>.png       per-layer density, one per target sparsity

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
from pathlib import Path

import pandas as pd

from bench import store
from bench.errors import UserError
from bench.report import published as published_numbers
from bench.report.aggregate import aggregate, mixed_settings, normalise, pct, section_dir
from bench.report.leaderboard import leaderboard
from bench.report.plots import plot_accuracy, plot_layers
from bench.report.tables import accuracy_table, to_markdown, write_accuracy, write_summary

__all__ = ["write_report", "aggregate"]


def write_report(root: Path, out: Path, published: Path | None = None) -> list[Path]:
    """Write the report for every result under `root` into `out`; returns the files written.
    `published`: the published-numbers file (None = the repository's baselines/published.toml,
    and none at all when that file is absent)."""
    root, out = Path(root), Path(out)
    runs = store.load(root)
    if runs.empty:
        raise UserError(f"no results under {store.runs_dir(root)}: run a grid first")
    entries = published_numbers.load(published)
    if out.exists() and not out.is_dir():
        raise UserError(f"report output {out} exists and is not a folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    except OSError as exc:
        raise UserError(f"cannot write the report to {out}: {exc.strerror or exc}") from exc
    try:
        written = _build(runs, tmp, root, entries)
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


def _build(runs: pd.DataFrame, tmp: Path, root: Path, entries) -> list[Path]:
    agg = aggregate(runs)
    written = [tmp / "results.csv", tmp / "runs.csv", tmp / "leaderboard.md"]
    agg.to_csv(written[0], index=False, float_format="%.17g")
    runs.to_csv(written[1], index=False)
    sections = []
    for (model, dataset), sub in agg.groupby(["model", "dataset"], sort=True):
        folder = tmp / section_dir(model, dataset)
        folder.mkdir()
        title = f"{model} on {dataset}"
        pub = published_numbers.for_section(entries, model, dataset)
        files = write_accuracy(sub, folder, title, pub) + write_summary(sub, folder, title)
        files += plot_accuracy(sub, "params", folder / "params", title, pub)
        files += plot_accuracy(sub, "macs", folder / "macs", title, pub)
        files += _layer_plots(runs, sub, model, dataset, folder, title)
        written += files
        sections.append((model, dataset, sub, files, pub))
    written[2].write_text(leaderboard([(f"{m} on {d}", s, p) for m, d, s, _, p in sections]))
    readme = tmp / "README.md"
    readme.write_text(_index(runs, root, sections, tmp))
    return [readme, *written]


def _layer_plots(runs, sub, model, dataset, folder, title) -> list[Path]:
    df = normalise(runs)
    mine = df[(df["model"] == model) & (df["dataset"] == dataset) & (df["status"] == "ok")]
    sparse_labels = set(sub.loc[~sub["is_dense"].astype(bool), "method_label"])
    paths = []
    for target in sorted(set(sub.loc[~sub["is_dense"].astype(bool), "target_sparsity"])):
        at = mine[(mine["target_sparsity"] == target) & mine["method_label"].isin(sparse_labels)]
        results: dict[str, list[list[dict]]] = {}
        for label, path in sorted(zip(at["method_label"], at["path"], strict=True)):
            layers = (store.read_result(Path(path)) or {}).get("layers") or []
            if layers:
                results.setdefault(label, []).append(layers)
        if results:
            name = f"layers-s{target * 100:g}"
            paths.append(plot_layers(results, target, folder / name, title))
    return paths


def _index(runs: pd.DataFrame, root: Path, sections, tmp: Path) -> str:
    n_ok = int((runs["status"] == "ok").sum())
    n_failed = len(runs) - n_ok
    lines = [
        "# sparsebench report",
        "",
        f"Results under `{root}`: {len(runs)} runs ({n_ok} ok, {n_failed} failed), "
        f"{len(sections)} (model, dataset) pair(s).",
        "",
        "Accuracy is top-1 test accuracy in %: mean ± sample std (ddof=1) over the seeds that "
        "finished, n = their number. Failed runs are counted and shown, never averaged in. "
        "Plot points sit at the achieved (not nominal) nonzero params / MACs; the dashed line "
        "and star are the dense model.",
        "",
        "- [leaderboard.md](leaderboard.md): methods ranked by mean top-1 at each target "
        "sparsity, with published numbers marked as such",
        "- [results.csv](results.csv): every aggregated cell, all models and datasets",
        "- [runs.csv](runs.csv): one row per run",
        "",
    ]
    for model, dataset, sub, files, pub in sections:
        rel = [p.relative_to(tmp).as_posix() for p in files]
        names = {Path(r).name: r for r in rel}
        lines += [f"## {model} on {dataset}", ""]
        lines.append("- tables: " + ", ".join(
            _links(stem, ("md", "csv", "tex"), names) for stem in ("accuracy", "summary")
        ))
        plots = [s for s in ("params", "macs") if f"{s}.png" in names]
        if plots:
            lines.append("- plots: " + ", ".join(
                "accuracy vs " + _links(s, ("png", "svg"), names) for s in plots
            ))
        else:
            lines.append("- plots: none (no successful run)")
        layer = sorted((r for r in rel if Path(r).name.startswith("layers-")), key=_layer_key)
        if layer:
            lines.append("- layer-wise density: " + ", ".join(
                f"[{Path(r).stem.removeprefix('layers-s')}%]({r})" for r in layer
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
            "error": [_first_line(e) for e in failed["error"]],
        })
        lines += [to_markdown(table, index=False)]
    notes = mixed_settings(runs)
    if notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]
    return "\n".join(lines)


def _links(stem: str, exts: tuple[str, ...], names: dict[str, str]) -> str:
    return f"{stem} (" + " · ".join(f"[{ext}]({names[stem + '.' + ext]})" for ext in exts) + ")"


def _layer_key(rel: str) -> float:
    return float(Path(rel).stem.removeprefix("layers-s"))


def _first_line(error: object, limit: int = 160) -> str:
    if error is None or (isinstance(error, float) and error != error) or not str(error).strip():
        return "(no reason)"
    text = str(error).strip().splitlines()[0]
    return text if len(text) <= limit else text[: limit - 1] + "…"
