"""The report as one static page, ``<out>/index.html``: opens from disk (file://), needs no
server and no network (no CDN, no fonts, no external script; the sorting script and the style
sheet are inline), and shows per (model, dataset) the accuracy table, the figures, the
leaderboard with its ranking rules, the training curves and the layer-density heatmaps.

Built from the aggregated frame (``bench.report.aggregate``) and the run rows: every accuracy
cell links to the ``config.json`` / ``result.json`` of each of its runs (relative links from the
report folder, so they work wherever root and report sit on the same disk), failed cells and
any marker column the aggregated frame carries (``MARKERS``) are shown as badges and coloured,
and published rows are set apart. Tables with class ``sortable`` reorder on a click on a header
(numeric where the cell's ``data-sort`` is a number, text otherwise, empty cells last).
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import markdown
import pandas as pd

from bench import store
from bench.report.aggregate import pct
from bench.report.published import Published, fmt_number
from bench.report.tables import accuracy_cell, accuracy_grid, error_line, unranked_flags

# Boolean columns of the aggregated frame shown as a badge on a cell when true: column ->
# (badge text, CSS class). Columns that are absent are simply not shown.
MARKERS = {
    "missed_target": ("missed target", "missed"),
    "at_chance": ("at chance", "chance"),
    "recipe_split": ("recipe split", "split"),
}

FIGURE_CAPTIONS = {
    "params": "accuracy vs nonzero parameters",
    "macs": "accuracy vs inference MACs",
    "train_flops": "accuracy vs training FLOPs (relative to dense)",
}


@dataclass
class Section:
    """One (model, dataset): its aggregated rows, published entries, run rows (with
    ``path``), and figure files relative to the report folder by kind (``params``, ``macs``,
    ``train_flops``: one SVG each; ``curves`` and ``layers``: (target, SVG) pairs)."""

    model: str
    dataset: str
    agg: pd.DataFrame
    runs: pd.DataFrame
    published: Sequence[Published] = ()
    figures: dict[str, str] = field(default_factory=dict)
    curves: list[tuple[float, str]] = field(default_factory=list)
    layers: list[tuple[float, str]] = field(default_factory=list)
    leaderboard_md: str = ""
    files: list[str] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return f"{self.model}-{self.dataset}"


_E = html.escape

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5em auto;
max-width:1200px;padding:0 1em;color:#222;line-height:1.4}
h1{margin-bottom:.2em}h2{border-bottom:2px solid #0072B2;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.88em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right;vertical-align:top}
th:first-child,td:first-child{text-align:left}
table.sortable th{cursor:pointer;background:#f0f4f8;user-select:none}
table.sortable th[aria-sort=ascending]::after{content:" \\25B2"}
table.sortable th[aria-sort=descending]::after{content:" \\25BC"}
td.failed{background:#fde2e1}td.partial{background:#fff4d6}td.missed{background:#ffe9cc}
td.chance{background:#eee;color:#777}tr.published td{background:#eef3fb;font-style:italic}
.badge{display:inline-block;font-size:.75em;padding:0 .4em;border-radius:.6em;margin-left:.3em;
background:#555;color:#fff;font-style:normal}
.badge.failed{background:#b3261e}.badge.missed{background:#b86e00}.badge.chance{background:#666}
.badge.split{background:#6a3d9a}.badge.published{background:#0072B2}
.runs{display:block;font-size:.75em;color:#555}.runs a{color:#0060a0}
figure{display:inline-block;margin:.4em .6em .8em 0;vertical-align:top}
figure img{max-width:100%;border:1px solid #ddd}figcaption{font-size:.8em;color:#444}
.figs img{width:560px}.summary{color:#444}.legend span{margin-right:1em}
nav ul{columns:2}details{margin:.5em 0}
"""

SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("thead th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0];
      var asc = th.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("thead th").forEach(function (o) { o.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", asc ? "ascending" : "descending");
      var key = function (row) {
        var cell = row.cells[col];
        if (!cell) { return null; }
        var v = cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort")
                                               : cell.textContent.trim();
        if (v === "" || v === "\\u2014") { return null; }
        var n = Number(v);
        return isNaN(n) ? v.toLowerCase() : n;
      };
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === null || y === null) { return (x === null) - (y === null); }
        if (typeof x !== typeof y) { return typeof x === "number" ? -1 : 1; }
        return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


def _rel(path: str | os.PathLike, out: Path) -> str:
    """A link from the report folder to `path`, relative so the page works from disk."""
    return Path(os.path.relpath(Path(path).resolve(), out.resolve())).as_posix()


def _sort_value(value: float) -> str:
    return "" if value is None or not math.isfinite(float(value)) else f"{float(value):.6g}"


def _markers(row: pd.Series) -> list[tuple[str, str]]:
    """(badge text, CSS class) per marker column that is true; a reason the cell is not
    ranked carries its detail ('missed target (achieved 0.392)'), said once, as a badge."""
    detail = dict(unranked_flags(row))
    out = []
    for col, (text, css) in MARKERS.items():
        value = row.get(col)
        if value is not None and not (isinstance(value, float) and math.isnan(value)) \
                and bool(value):
            out.append((detail.get(col, text), css))
    return out


def _run_links(cell_runs: pd.DataFrame, out: Path) -> str:
    links = []
    for run in cell_runs.sort_values("seed").itertuples():
        folder = Path(run.path)
        seed = "?" if pd.isna(run.seed) else int(run.seed)
        bad = "" if run.status == "ok" else " (failed)"
        links.append(
            f"seed {seed}{bad}: <a href=\"{_E(_rel(folder / store.CONFIG, out))}\">config</a>"
            f" · <a href=\"{_E(_rel(folder / store.RESULT, out))}\">result</a>"
        )
    return f"<span class=\"runs\">{'<br>'.join(links)}</span>" if links else ""


def accuracy_html(section: Section, out: Path) -> str:
    """Method x target sparsity, mean ± std (n) per cell with its run links and badges;
    published rows after ours."""
    runs = section.runs
    targets, ours = accuracy_grid(section.agg, section.published)
    head = "".join(f"<th>{_E(pct(t))}</th>" for t in targets)
    lines = [f"<table class=\"sortable accuracy\"><thead><tr><th>method</th>{head}</tr></thead>"
             "<tbody>"]
    for label, by_target in ours:
        cells = [f"<td data-sort=\"{_E(str(label))}\">{_E(str(label))}</td>"]
        for target in targets:
            row = by_target.get(target)
            if row is None:
                cells.append("<td data-sort=\"\">—</td>")
                continue
            badges = _markers(row)
            css = [c for _, c in badges]
            if int(row["n"]) == 0:
                css.insert(0, "failed")
                badges.insert(0, ("failed", "failed"))
            elif int(row["n_failed"]):
                css.insert(0, "partial")
            cell_runs = runs[(runs["method_label"] == label)
                             & (runs["target_sparsity"] == target)]
            badge_html = "".join(f"<span class=\"badge {c}\">{_E(t)}</span>" for t, c in badges)
            # The reasons a cell is not ranked are its badges, not repeated in its text.
            text = accuracy_cell(row, reasons=False)
            cells.append(
                f"<td class=\"{' '.join(css)}\" data-sort=\"{_sort_value(row['top1_mean'])}\">"
                f"{_E(text)}{badge_html}{_run_links(cell_runs, out)}</td>"
            )
        lines.append("<tr>" + "".join(cells) + "</tr>")
    for p in section.published:
        cells = [f"<td data-sort=\"{_E(p.label)}\">{_E(p.method)}"
                 f"<span class=\"badge published\">published</span>"
                 f"<span class=\"runs\">{_E(p.source.citation)}</span></td>"]
        for target in targets:
            if target == p.sparsity:
                cells.append(f"<td data-sort=\"{_sort_value(p.top1)}\">{_E(fmt_number(p.top1))}"
                             "</td>")
            else:
                cells.append("<td data-sort=\"\">—</td>")
        lines.append("<tr class=\"published\">" + "".join(cells) + "</tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


def _figure(src: str, caption: str) -> str:
    return (f"<figure><a href=\"{_E(src)}\"><img src=\"{_E(src)}\" alt=\"{_E(caption)}\"></a>"
            f"<figcaption>{_E(caption)} (<a href=\"{_E(src)}\">SVG</a>, "
            f"<a href=\"{_E(src[:-4] + '.pdf')}\">PDF</a>, "
            f"<a href=\"{_E(src[:-4] + '.png')}\">PNG</a>)</figcaption></figure>")


def leaderboard_html(text: str) -> str:
    """The leaderboard's Markdown (bench.report.leaderboard) as HTML, its tables sortable; its
    section heading is dropped (the page has its own) and sub-headings move one level down."""
    lines = [line for line in text.splitlines() if not line.startswith("## ")]
    body = markdown.markdown("\n".join(lines), extensions=["tables"])
    return (body.replace("<table>", "<table class=\"sortable leaderboard\">")
            .replace("<h3>", "<h4>").replace("</h3>", "</h4>"))


def section_html(section: Section, out: Path) -> str:
    sub = section.agg
    n_runs = len(section.runs)
    n_failed = int((section.runs["status"] != "ok").sum())
    parts = [
        f"<section id=\"{_E(section.anchor)}\">",
        f"<h2>{_E(section.model)} on {_E(section.dataset)}</h2>",
        f"<p class=\"summary\">{n_runs} runs ({n_runs - n_failed} ok, {n_failed} failed) in "
        f"{len(sub)} cells. Files: "
        + ", ".join(f"<a href=\"{_E(f)}\">{_E(Path(f).name)}</a>" for f in section.files)
        + "</p>",
        "<h3>Top-1 test accuracy (%)</h3>",
        "<p class=\"summary\">Mean ± sample std over the seeds that finished (n); click a "
        "header to sort. Each cell links to its runs' config and result.</p>",
        accuracy_html(section, out),
    ]
    figs = [_figure(section.figures[k], FIGURE_CAPTIONS[k]) for k in FIGURE_CAPTIONS
            if k in section.figures]
    if figs:
        parts += ["<h3>Accuracy vs cost</h3>",
                  "<p class=\"summary\">Grey band: the Pareto front of our points (fewer "
                  "params / MACs / FLOPs and higher accuracy); dashed line and star: dense; "
                  "hollow circles: published numbers.</p>",
                  "<div class=\"figs\">" + "".join(figs) + "</div>"]
    if section.leaderboard_md:
        parts += ["<h3>Leaderboard</h3>", leaderboard_html(section.leaderboard_md)]
    if section.curves:
        parts += ["<h3>Training curves</h3>"] + [
            _figure(src, f"test top-1 and train loss per epoch at {pct(t)}")
            for t, src in section.curves]
    if section.layers:
        parts += ["<h3>Per-layer density</h3>"] + [
            _figure(src, f"density per layer and method at {pct(t)}")
            for t, src in section.layers]
    failed = section.runs[section.runs["status"] != "ok"]
    if not failed.empty:
        rows = "".join(
            f"<tr><td>{_E(str(r.method_label))}</td>"
            f"<td data-sort=\"{_sort_value(r.target_sparsity)}\">{_E(pct(r.target_sparsity))}</td>"
            f"<td>{_E(str(r.seed))}</td>"
            f"<td>{_E(error_line(r.error, 200))}</td>"
            f"<td><a href=\"{_E(_rel(Path(r.path) / store.RESULT, out))}\">result</a> · "
            f"<a href=\"{_E(_rel(Path(r.path) / store.LOG, out))}\">log</a></td></tr>"
            for r in failed.itertuples()
        )
        parts += ["<h3>Failed runs</h3>",
                  "<table class=\"sortable failed-runs\"><thead><tr><th>method</th>"
                  "<th>sparsity</th><th>seed</th><th>error</th><th>files</th></tr></thead>"
                  f"<tbody>{rows}</tbody></table>"]
    parts.append("</section>")
    return "\n".join(parts)


_LEGEND = {
    "failed": "every seed of the cell failed (its runs' results say why)",
    "missed": "the achieved sparsity missed the target",
    "chance": "accuracy no better than guessing",
    "split": "the cell's seeds ran different recipes",
    "published": "a number copied from the cited paper, not our run",
}


def _legend(sections: list[Section]) -> str:
    """The badges that occur on this page, each with what it means."""
    shown = []
    if any((s.agg["n"] == 0).any() for s in sections):
        shown.append(("failed", "failed"))
    for col, (text, css) in MARKERS.items():
        if any(col in s.agg and s.agg[col].fillna(False).astype(bool).any() for s in sections):
            shown.append((text, css))
    if any(s.published for s in sections):
        shown.append(("published", "published"))
    items = "".join(f"<span><span class=\"badge {css}\">{_E(text)}</span> {_E(_LEGEND[css])}"
                    "</span>" for text, css in shown)
    return f"<p class=\"legend\">{items}</p>" if items else ""


def page(sections: list[Section], out: Path, root: str, ranking: str,
         notes: Sequence[str] = ()) -> str:
    """The whole index.html; `root` is the run root relative to the report folder."""
    n = sum(len(s.runs) for s in sections)
    failed = sum(int((s.runs["status"] != "ok").sum()) for s in sections)
    nav = "".join(f"<li><a href=\"#{_E(s.anchor)}\">{_E(s.model)} on {_E(s.dataset)}</a></li>"
                  for s in sections)
    body = [
        "<!DOCTYPE html>",
        "<html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        "<link rel=\"icon\" href=\"data:,\">",  # no favicon request when opened from disk
        "<title>sparsebench report</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>sparsebench report</h1>",
        f"<p class=\"summary\">{n} runs ({n - failed} ok, {failed} failed) under "
        f"<code>{_E(root)}</code> (the run root, relative to this page), {len(sections)} "
        "(model, dataset) pair(s). Top-1 test "
        "accuracy in %; points and tables use the achieved (not nominal) counts.</p>",
        _legend(sections),
        f"<nav><ul>{nav}</ul></nav>",
        "<details><summary>Ranking rules</summary>"
        + markdown.markdown(ranking) + "</details>",
    ]
    body += [section_html(s, out) for s in sections]
    if notes:
        body += ["<h2>Notes</h2><ul>"] + [f"<li>{_E(note)}</li>" for note in notes] + ["</ul>"]
    body += [f"<script>{SCRIPT}</script>", "</body></html>"]
    return "\n".join(body) + "\n"
