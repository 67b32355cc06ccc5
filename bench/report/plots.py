"""Plots per (model, dataset): accuracy vs achieved nonzero params / MACs, and per-layer density.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas, never pyplot: no display
is needed, and no global figure state leaks between reports or into the caller.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bench.report.aggregate import pct
from bench.report.published import Published

MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "p", "*"]

AXES = {
    "params": ("params_nonzero", "nonzero parameters (achieved, log scale)"),
    "macs": ("macs", "inference MACs per example (achieved, log scale)"),
}

# SVG ids come from a hash salted per process unless pinned; pinning makes reruns byte-stable.
_RC = {"svg.hashsalt": "sparsebench", "font.size": 9}


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, base: Path, formats: tuple[str, ...]) -> list[Path]:
    paths = []
    for fmt in formats:
        path = base.with_suffix(f".{fmt}")
        meta = {"Date": None} if fmt == "svg" else {}
        fig.savefig(path, format=fmt, dpi=150, metadata=meta)
        paths.append(path)
    return paths


def _colors(n: int) -> list:
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


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


def published_points(published: Sequence[Published], axis: str) -> list[tuple[Published, float]]:
    """(entry, x) for the published entries that give this axis' count. An entry without a
    parameter (or MAC) count has no honest x position, so it is left off that plot (it is
    still in the tables and the leaderboard)."""
    field = PUBLISHED_X[axis]
    return [(p, getattr(p, field)) for p in published if getattr(p, field) is not None]


def plot_accuracy(agg: pd.DataFrame, axis: str, base: Path, title: str,
                  published: Sequence[Published] = ()) -> list[Path]:
    """Accuracy vs achieved params or MACs; writes base.png and base.svg. Nothing to plot ->
    no files (the index says so). Published points (hollow markers, legend entry
    'published', each annotated with its method) are drawn where the source gives the count."""
    xcol, xlabel = AXES[axis]
    unit = "params" if axis == "params" else "MACs"
    lines = series(agg, xcol)
    ref = dense_reference(agg)
    ref_ok = ref is not None and math.isfinite(ref[xcol]) and ref[xcol] > 0
    if not lines and not ref_ok:
        return []
    with matplotlib.rc_context(_RC):
        fig = _figure(8.0, 4.4)
        ax = fig.add_subplot()
        colors = _colors(len(lines))
        for i, (label, pts) in enumerate(lines.items()):
            ax.errorbar(
                pts["x"], pts["y"], yerr=pts["yerr"], label=label, color=colors[i],
                marker=MARKERS[i % len(MARKERS)],
                markersize=5, capsize=3, linewidth=1.3,
            )
        if ref_ok:
            mean, std = ref["top1_mean"], ref["top1_std"]
            ax.axhline(mean, color="black", linestyle="--", linewidth=1.0,
                       label=f"dense: {_short(ref[xcol])} {unit}, {mean:.2f}%")
            if math.isfinite(std) and std > 0:
                ax.axhspan(mean - std, mean + std, color="black", alpha=0.08, linewidth=0)
            ax.plot([ref[xcol]], [mean], marker="*", markersize=11, color="black",
                    linestyle="none")
        _draw_published(ax, published_points(published, axis),
                        dict(zip(lines, colors, strict=True)))
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("top-1 test accuracy (%)")
        what = "nonzero parameters" if axis == "params" else "MACs"
        ax.set_title(f"{title}: accuracy vs {what}\n(mean ± std over seeds)")
        ax.grid(True, which="major", alpha=0.35)
        ax.grid(True, which="minor", alpha=0.12)
        # Outside the axes: with many methods an inside legend hides points.
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        return _save(fig, base, ("png", "svg"))


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


def plot_layers(results: dict[str, list[dict]], target: float, path: Path, title: str) -> Path:
    """Grouped bars: one group per layer, one bar per method; dashed line at 1 - target."""
    names, dens = layer_densities(results)
    labels = list(dens)
    with matplotlib.rc_context(_RC):
        fig = _figure(min(5.5 + 0.45 * len(names) * max(1, len(labels)) ** 0.5, 28.0), 4.2)
        ax = fig.add_subplot()
        width = 0.8 / max(1, len(labels))
        pos = np.arange(len(names))
        for i, (label, color) in enumerate(zip(labels, _colors(len(labels)), strict=True)):
            ax.bar(pos + (i - (len(labels) - 1) / 2) * width, np.nan_to_num(dens[label]),
                   width=width, label=label, color=color)
        ax.axhline(1.0 - target, color="black", linestyle="--", linewidth=1.0,
                   label=f"uniform density {1.0 - target:.3g}")
        ax.set_xticks(pos, names, rotation=60, ha="right", fontsize=7)
        # At high sparsity every bar is short; zoom to the data, but never past density 1.
        top = max([1.0 - target] + [float(np.nanmax(d)) for d in dens.values() if
                                    np.isfinite(d).any()])
        ax.set_ylim(0.0, min(1.05, 1.25 * top))
        ax.set_ylabel("density (fraction of weights kept)")
        ax.set_title(f"{title}:\nper-layer density at {pct(target)} target sparsity")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        return _save(fig, path, ("png",))[0]
