"""Figures per (model, dataset), sized for a paper: accuracy vs achieved nonzero params,
inference MACs and training FLOPs (relative to dense), with the Pareto front highlighted;
per-layer density as a method x layer heatmap; training curves per epoch.

Every figure is written as PNG, SVG and PDF, at two-column width (6.9 in, ``<stem>.*``) and, for
the accuracy plots, also at one-column width (3.3 in, ``<stem>-1col.*``, no title, legend
below). Colours are the Okabe-Ito colour-blind-safe palette (Okabe & Ito 2008, "Color Universal
Design"), paired with 16 distinct markers and, past 8 methods, a dashed line: up to 16 methods
stay distinguishable in colour, in grey print and for colour-blind readers. Error bars and
"± std" appear only for points with n >= 2 seeds.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas, never pyplot: no display
is needed, and no global figure state leaks between reports or into the caller.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from bench.report.aggregate import pct
from bench.report.published import Published

# Okabe-Ito without black (black is the dense reference), plus a neutral grey.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442",
           "#7F7F7F"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "p", "*", "d", "H", "8", "1"]

WIDTH_2COL, WIDTH_1COL = 6.9, 3.3  # inches: a two-column paper's text width and column width
FORMATS = ("png", "svg", "pdf")

AXES = {
    "params": ("params_nonzero", "nonzero parameters (achieved, log scale)"),
    "macs": ("macs", "inference MACs per example (achieved, log scale)"),
    "train_flops": ("train_flops_rel", "training FLOPs relative to dense (log scale)"),
}

# SVG ids come from a hash salted per process unless pinned; pinning makes reruns byte-stable.
_RC = {"svg.hashsalt": "sparsebench", "font.size": 8, "pdf.fonttype": 42}


@dataclass(frozen=True)
class Style:
    color: str
    marker: str
    linestyle: str


def styles(labels: Sequence[str]) -> dict[str, Style]:
    """A fixed style per method label, in the given order: colour i % 8, marker i % 16, solid
    for the first 8 and dashed for the next 8, so 16 labels get 16 distinct (colour, marker,
    line) triples. Pass the same order to every figure of a section so a method keeps its
    look."""
    return {label: Style(PALETTE[i % len(PALETTE)], MARKERS[i % len(MARKERS)],
                         "-" if (i // len(PALETTE)) % 2 == 0 else "--")
            for i, label in enumerate(dict.fromkeys(labels))}


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, base: Path, formats: tuple[str, ...] = FORMATS) -> list[Path]:
    paths = []
    for fmt in formats:
        path = base.with_name(f"{base.name}.{fmt}")
        # No dates: a rerun of the same results writes the same SVG/PDF bytes.
        meta = {"svg": {"Date": None}, "pdf": {"CreationDate": None, "ModDate": None}}
        fig.savefig(path, format=fmt, dpi=200, metadata=meta.get(fmt, {}))
        # The layout is solved by the first save; the other formats reuse it (a third of
        # the time of a save is the constrained-layout solve).
        fig.set_layout_engine("none")
        paths.append(path)
    return paths


def pareto_front(x: Sequence[float], y: Sequence[float]) -> np.ndarray:
    """Boolean mask of the points no other point dominates, where fewer is better on x
    (params, MACs, FLOPs) and more is better on y (accuracy): point i is off the front iff some
    j has x_j <= x_i and y_j >= y_i with at least one strict. Equal points are both kept."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.ones(len(x), dtype=bool)
    for i in range(len(x)):
        dominated = (x <= x[i]) & (y >= y[i]) & ((x < x[i]) | (y > y[i]))
        keep[i] = not dominated.any()
    return keep


def dense_reference(agg: pd.DataFrame) -> pd.Series | None:
    """The 'dense' group if present, else the first other dense group with successful runs."""
    dense = agg[agg["is_dense"].astype(bool) & (agg["n"] > 0)]
    if dense.empty:
        return None
    named = dense[dense["method_label"] == "dense"]
    return (named if not named.empty else dense).iloc[0]


def series(agg: pd.DataFrame, xcol: str) -> dict[str, pd.DataFrame]:
    """Per sparse method label: the points to plot, sorted by x. x is the mean ACHIEVED value
    over successful seeds (never the nominal target); yerr is the std over seeds (0 when n=1).
    Groups where every seed failed have no point."""
    out = {}
    sparse = agg[~agg["is_dense"].astype(bool) & (agg["n"] > 0)]
    for label, group in sparse.groupby("method_label", sort=False):
        pts = pd.DataFrame({
            "target_sparsity": group["target_sparsity"].to_numpy(),
            "x": group[xcol].to_numpy(dtype=float),
            "y": group["top1_mean"].to_numpy(dtype=float),
            "yerr": np.nan_to_num(group["top1_std"].to_numpy(dtype=float)),
            "n": group["n"].to_numpy(),
        })
        pts = pts[np.isfinite(pts["x"]) & (pts["x"] > 0) & np.isfinite(pts["y"])]
        if not pts.empty:
            out[str(label)] = pts.sort_values("x").reset_index(drop=True)
    return out


def _short(value: float) -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= div:
            return f"{value / div:.3g}{suffix}"
    return f"{value:.3g}"


PUBLISHED_X = {"params": "params", "macs": "macs"}  # Published field giving the x value
# (no published source gives training FLOPs, so the FLOPs plot has no published points)


def published_points(published: Sequence[Published], axis: str) -> list[tuple[Published, float]]:
    """(entry, x) for the published entries that give this axis' count. An entry without a
    parameter (or MAC) count has no honest x position, so it is left off that plot (it is
    still in the tables and the leaderboard)."""
    field = PUBLISHED_X[axis]
    return [(p, getattr(p, field)) for p in published if getattr(p, field) is not None]


def with_relative_train_flops(agg: pd.DataFrame, ref: pd.Series | None = None) -> pd.DataFrame:
    """`agg` plus ``train_flops_rel``: each cell's mean training FLOPs divided by those of the
    dense reference `ref` (None: the one of the same frame, one section); NaN without a
    dense reference."""
    out = agg.copy()
    ref = dense_reference(agg) if ref is None else ref
    dense = float(ref["train_flops"]) if ref is not None else math.nan
    out["train_flops_rel"] = (pd.to_numeric(out["train_flops"], errors="coerce") / dense
                              if math.isfinite(dense) and dense > 0 else math.nan)
    return out


def _spread_note(lines: dict[str, pd.DataFrame], ref) -> str:
    """What the points and bars are, true to the seeds behind them."""
    ns = [int(n) for pts in lines.values() for n in pts["n"]]
    if ref is not None:
        ns.append(int(ref["n"]))
    if not ns or max(ns) < 2:
        return "one seed per point, no error bars"
    if min(ns) >= 2:
        return f"mean ± std over seeds (n = {min(ns)}–{max(ns)})" if min(ns) != max(ns) \
            else f"mean ± std over {min(ns)} seeds"
    return "mean ± std where n ≥ 2; single-seed points have no bar"


def plot_accuracy(agg: pd.DataFrame, axis: str, base: Path, title: str,
                  published: Sequence[Published] = (),
                  style: dict[str, Style] | None = None) -> list[Path]:
    """Accuracy vs achieved params, MACs or relative training FLOPs (`axis` in ``AXES``):
    writes ``base.{png,svg,pdf}`` (6.9 in, titled) and ``base-1col.{png,svg,pdf}`` (3.3 in).
    Nothing to plot -> no files. The Pareto front of our points (dense included) is the thick
    grey line behind them; published points (hollow markers, legend entry 'published', each
    annotated with its method) are drawn where the source gives the count, never on the
    front (different recipes)."""
    if axis == "train_flops" and "train_flops_rel" not in agg:
        agg = with_relative_train_flops(agg)
    xcol, xlabel = AXES[axis]
    lines = series(agg, xcol)
    ref = dense_reference(agg)
    ref_ok = ref is not None and math.isfinite(ref[xcol]) and ref[xcol] > 0
    if not lines and not ref_ok:
        return []
    style = style or styles(list(lines))
    pub = published_points(published, axis) if axis in PUBLISHED_X else []
    paths = []
    for width, suffix in ((WIDTH_2COL, ""), (WIDTH_1COL, "-1col")):
        with matplotlib.rc_context(_RC):
            one = suffix == "-1col"
            fig = _figure(width, 2.9 if one else 3.4)
            ax = fig.add_subplot()
            _draw_accuracy(ax, lines, ref if ref_ok else None, xcol, axis, style, pub)
            chance = agg["chance_top1"].dropna() if "chance_top1" in agg else ()
            if len(chance):  # so a collapsed run is not read as a result (issue 11)
                ax.axhline(float(chance.max()), color="grey", linestyle=":", linewidth=0.9,
                           zorder=2, label=f"chance: {float(chance.max()):.3g}%")
            ax.set_xscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("top-1 test accuracy (%)")
            what = {"params": "nonzero parameters", "macs": "inference MACs",
                    "train_flops": "training FLOPs"}[axis]
            if not one:
                ax.set_title(f"{title}: accuracy vs {what}\n"
                             f"({_spread_note(lines, ref if ref_ok else None)})")
            ax.grid(True, which="major", alpha=0.35)
            ax.grid(True, which="minor", alpha=0.12)
            if one:  # below the axes: a 3.3 in column has no room beside them
                fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center",
                           ncol=3, fontsize=6, frameon=False)
            else:  # outside the axes: with many methods an inside legend hides points
                ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                          borderaxespad=0.0)
            # The one-column size is for the paper (PDF) and a quick look (PNG); the page
            # shows the two-column SVG.
            paths += _save(fig, base.with_name(base.name + suffix),
                           ("png", "pdf") if one else FORMATS)
    return paths


def _draw_accuracy(ax, lines, ref, xcol, axis, style, pub) -> None:
    unit = {"params": "params", "macs": "MACs", "train_flops": "× training FLOPs"}[axis]
    xs, ys = [], []
    for label, pts in lines.items():
        st = style.get(label) or Style("black", "o", "-")
        ax.plot(pts["x"], pts["y"], label=label, color=st.color, marker=st.marker,
                linestyle=st.linestyle, markersize=4.5, linewidth=1.2, zorder=3)
        bars = pts[pts["n"] >= 2]
        if not bars.empty:  # a bar from one seed would claim a spread nobody measured
            ax.errorbar(bars["x"], bars["y"], yerr=bars["yerr"], color=st.color,
                        linestyle="none", capsize=2.5, linewidth=1.0, zorder=3)
        xs += list(pts["x"])
        ys += list(pts["y"])
    if ref is not None:
        mean, std = ref["top1_mean"], ref["top1_std"]
        ax.axhline(mean, color="black", linestyle="--", linewidth=0.9, zorder=2,
                   label=f"dense: {_short(ref[xcol])} {unit}, {mean:.2f}%")
        if int(ref["n"]) >= 2 and math.isfinite(std) and std > 0:
            ax.axhspan(mean - std, mean + std, color="black", alpha=0.08, linewidth=0)
        ax.plot([ref[xcol]], [mean], marker="*", markersize=10, color="black",
                linestyle="none", zorder=4)
        xs.append(float(ref[xcol]))
        ys.append(float(mean))
    if len(xs) > 1:
        front = pareto_front(xs, ys)
        fx, fy = np.asarray(xs)[front], np.asarray(ys)[front]
        order = np.argsort(fx, kind="stable")
        ax.plot(fx[order], fy[order], color="#BBBBBB", linewidth=6, alpha=0.6,
                solid_capstyle="round", drawstyle="steps-post", zorder=1, label="Pareto front")
    _draw_published(ax, pub, {k: v.color for k, v in style.items()})


def label_heights(points: list[tuple[Published, float]], gap: float) -> list[float]:
    """Label y per point: its own top-1, pushed down so labels of points at the same x (a
    paper's methods at one sparsity share one parameter count) stay `gap` apart."""
    heights = [p.top1 for p, _ in points]
    by_x: dict[float, list[int]] = {}
    for i, (_, x) in enumerate(points):
        by_x.setdefault(x, []).append(i)
    for members in by_x.values():
        previous = None
        for i in sorted(members, key=lambda i: -points[i][0].top1):
            if previous is not None:
                heights[i] = min(heights[i], previous - gap)
            previous = heights[i]
    return heights


def _draw_published(ax, points: list[tuple[Published, float]], colors: dict) -> None:
    """Hollow markers in the colour of our line of the same method name (black otherwise);
    one legend entry for all of them."""
    for p, x in points:
        ax.plot([x], [p.top1], marker="o", markersize=7, markerfacecolor="none",
                markeredgecolor=colors.get(p.method, "black"), markeredgewidth=1.3,
                linestyle="none")
    if points:
        low, high = ax.get_ylim()  # autoscaled to everything drawn so far
        for (p, x), y in zip(points, label_heights(points, 0.045 * (high - low)), strict=True):
            color = colors.get(p.method, "black")
            moved = y != p.top1  # a label pushed off its point gets a leader line to it
            ax.annotate(p.method, (x, p.top1), xytext=(x * (1.25 if moved else 1.06), y),
                        textcoords="data", fontsize=7, va="center", color=color,
                        arrowprops={"arrowstyle": "-", "color": color, "linewidth": 0.5,
                                    "shrinkA": 1, "shrinkB": 4} if moved else None)
        ax.plot([], [], marker="o", markerfacecolor="none", markeredgecolor="black",
                linestyle="none", label="published")


def layer_densities(results: dict[str, list[dict]]) -> tuple[list[str], dict[str, np.ndarray]]:
    """Mean density per layer across seeds, per method label. Layer order is that of the first
    result; a layer a method lacks is NaN (no bar)."""
    names: list[str] = []
    for layers_list in results.values():
        for layers in layers_list:
            for layer in layers:
                if layer["name"] not in names:
                    names.append(layer["name"])
    out = {}
    for label, layers_list in results.items():
        acc = np.full((len(layers_list), len(names)), np.nan)
        for i, layers in enumerate(layers_list):
            for layer in layers:
                acc[i, names.index(layer["name"])] = float(layer["density"])
        with np.errstate(all="ignore"):
            out[label] = np.array([
                np.nan if np.isnan(col).all() else np.nanmean(col) for col in acc.T
            ])
    return names, out


def plot_layers(results: dict[str, list[dict]], target: float, path: Path, title: str
                ) -> list[Path]:
    """Heatmap of mean density: one row per layer (in network order, names readable at any
    depth: ResNet-50's 54 prunable layers make a 6.9 x 9.7 in figure), one column per method,
    the value printed in each cell while there are at most 400 cells. Writes
    ``path.{png,svg,pdf}``."""
    names, dens = layer_densities(results)
    labels = list(dens)
    grid = np.array([dens[label] for label in labels]).T  # layers x methods
    many = grid.size > 400
    with matplotlib.rc_context(_RC):
        fig = _figure(WIDTH_2COL, 1.6 + 0.15 * len(names))
        ax = fig.add_subplot()
        image = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap="viridis",
                          vmin=0.0, vmax=max(1e-9, float(np.nanmax(grid)) if
                                             np.isfinite(grid).any() else 1.0),
                          interpolation="nearest")
        ax.set_xticks(np.arange(len(labels)), labels, rotation=45, ha="right",
                      fontsize=6 if len(labels) > 10 else 7)
        ax.set_yticks(np.arange(len(names)), names, fontsize=5 if len(names) > 30 else 7)
        ax.tick_params(length=0)
        if not many:
            for (i, j), value in np.ndenumerate(grid):
                if np.isfinite(value):
                    light = value < 0.6 * image.norm.vmax  # viridis is dark at the low end
                    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=5.5,
                            color="white" if light else "black")
        bar = fig.colorbar(image, ax=ax, shrink=0.8 if len(names) > 8 else 1.0)
        bar.set_label("density (fraction of weights kept)")
        ax.set_title(f"{title}: per-layer density at {pct(target)} target sparsity\n"
                     f"(uniform would be {1.0 - target:.3g} everywhere; mean over seeds)")
        return _save(fig, path)


def training_curves(histories: dict[str, list[list[dict]]]) -> dict[str, pd.DataFrame]:
    """Per method label, from its seeds' metrics.jsonl records: one row per epoch with
    ``top1_mean``, ``top1_std``, ``train_loss_mean``, ``train_loss_std`` (std NaN below two
    seeds) and ``n`` (seeds that reached that epoch)."""
    out = {}
    for label, runs in histories.items():
        frame = pd.DataFrame([
            {"seed": i, "epoch": r["epoch"], "top1": r.get("top1"),
             "train_loss": r.get("train_loss")}
            for i, records in enumerate(runs) for r in records
        ], columns=["seed", "epoch", "top1", "train_loss"])
        if frame.empty:
            continue
        grouped = frame.groupby("epoch", sort=True)
        curve = pd.DataFrame({
            "top1_mean": grouped["top1"].mean(), "top1_std": grouped["top1"].std(ddof=1),
            "train_loss_mean": grouped["train_loss"].mean(),
            "train_loss_std": grouped["train_loss"].std(ddof=1), "n": grouped["seed"].nunique(),
        }).reset_index()
        curve.loc[curve["n"] < 2, ["top1_std", "train_loss_std"]] = np.nan
        out[label] = curve
    return out


def plot_curves(histories: dict[str, list[list[dict]]], target: float, path: Path, title: str,
                style: dict[str, Style] | None = None) -> list[Path]:
    """Test top-1 and train loss per epoch, one line per method (mean over seeds) with a
    ± std band where n >= 2; writes ``path.{png,svg,pdf}``. Nothing recorded -> no files."""
    curves = training_curves(histories)
    if not curves:
        return []
    style = style or styles(list(curves))
    with matplotlib.rc_context(_RC):
        fig = _figure(WIDTH_2COL, 2.9)
        axes = fig.subplots(1, 2)
        for label, curve in curves.items():
            st = style.get(label) or Style("black", "o", "-")
            color = "black" if label == "dense" else st.color
            for ax, metric in zip(axes, ("top1", "train_loss"), strict=True):
                ax.plot(curve["epoch"], curve[f"{metric}_mean"], color=color,
                        linestyle=st.linestyle, marker=st.marker, markevery=max(1, len(curve) // 8),
                        markersize=3.5, linewidth=1.1, label=label)
                band = curve[curve["n"] >= 2]
                if not band.empty:
                    ax.fill_between(band["epoch"], band[f"{metric}_mean"] - band[f"{metric}_std"],
                                    band[f"{metric}_mean"] + band[f"{metric}_std"],
                                    color=color, alpha=0.15, linewidth=0)
        axes[0].set_ylabel("test top-1 (%)")
        axes[1].set_ylabel("train loss (epoch mean)")
        axes[1].set_yscale("log")
        for ax in axes:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("epoch")
            ax.grid(True, alpha=0.3)
        axes[1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                       borderaxespad=0.0)
        fig.suptitle(f"{title}: training curves at {pct(target)} target sparsity "
                     "(mean over seeds; band ± std where n ≥ 2)", fontsize=8)
        return _save(fig, path)
