"""The HTML report, the paper figures and the numeric CSVs (issue 15).

The run root is hand-made (tests/test_published.py's cells and published numbers, plus a
config.json and a metrics.jsonl per run), so every number below is known in advance. The page
is opened in a real headless Chromium (Debian's ``chromium``, driven by playwright without its
own browser downloads); without Chromium the browser test is skipped with the reason, except in
CI (CI=true), where it fails.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import bench.report as report
from bench import store
from bench.report.html import Section, accuracy_html
from bench.report.plots import (
    MARKERS,
    PALETTE,
    _draw_accuracy,
    pareto_front,
    plot_layers,
    styles,
    training_curves,
)
from tests import browser
from tests.test_published import CELLS, CITE, PUBLISHED
from tests.test_report import DATA, MODEL, _result, _write

# Per-epoch test top-1 of each (label, target, seed) that finished: epoch e -> base + 10 e.
EPOCHS = 3


def _history(top1: float, seed: int) -> list[dict]:
    return [{"epoch": e, "phase": "train", "step": 10 * e, "top1": top1 - 10 * (EPOCHS - e),
             "train_loss": 2.0 / e + 0.1 * seed, "test_loss": 1.0, "lr": 0.1, "density": 1.0}
            for e in range(1, EPOCHS + 1)]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("root")
    for label, target, seed, status, top1 in CELLS:
        body = _result(label, label, target, seed, status)
        if status == "ok":
            body["top1"] = top1
            body["train_flops"] = 1e9 * (1.0 - target)
            body["history"] = _history(top1, seed)  # as a real run's: what metrics.jsonl holds
        _write(root, body)
        folder = store.run_dir(root, body["run_id"].replace(".", "p"), "x")
        store.atomic_write_json(folder / store.CONFIG, body["config"])
        if status == "ok":
            store.atomic_write_text(folder / store.METRICS, "".join(
                json.dumps(r) + "\n" for r in _history(top1, seed)))
    pub = root / "published.toml"
    pub.write_text(PUBLISHED)
    out = root / "report"
    paths = report.write_report(root, out, pub)
    return root, out, paths


# --- figures ---------------------------------------------------------------------------------

def test_pareto_front_of_a_hand_made_frame():
    frame = pd.DataFrame({
        "x": [100, 200, 200, 400, 50, 400, 300],
        "y": [70., 80., 75., 85., 60., 85., 79.],
    })
    # (200, 75) loses to (200, 80); (300, 79) to (200, 80); the two (400, 85) tie and stay.
    assert pareto_front(frame["x"], frame["y"]).tolist() == [
        True, True, False, True, True, True, False]
    assert pareto_front([1.0], [5.0]).tolist() == [True]


def test_sixteen_methods_get_distinct_styles_from_the_colour_blind_safe_palette():
    got = styles([f"m{i}" for i in range(16)])
    triples = {(s.color, s.marker, s.linestyle) for s in got.values()}
    assert len(triples) == 16
    assert len({s.marker for s in got.values()}) == 16 == len(MARKERS)
    assert {s.color for s in got.values()} == set(PALETTE)
    assert [got[f"m{i}"].linestyle for i in (0, 7, 8, 15)] == ["-", "-", "--", "--"]


def test_error_bars_only_where_two_or_more_seeds():
    fig = Figure()
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    pts = pd.DataFrame({"target_sparsity": [0.5, 0.9], "x": [10.0, 5.0], "y": [80.0, 70.0],
                        "yerr": [0.0, 1.5], "n": [1, 3]})
    _draw_accuracy(ax, {"gmp": pts.sort_values("x")}, None, "params_nonzero", "params",
                   styles(["gmp"]), [])
    # errorbar draws one LineCollection of vertical segments: one segment, at the n=3 point.
    segments = [seg for c in ax.collections for seg in c.get_segments()]
    assert len(segments) == 1
    assert segments[0].tolist() == [[5.0, 68.5], [5.0, 71.5]]


def _pdf_size_in(path: Path) -> tuple[float, float]:
    box = re.search(rb"/MediaBox \[\s*0 0 ([\d.]+) ([\d.]+)\s*\]", path.read_bytes())
    return float(box.group(1)) / 72, float(box.group(2)) / 72


def test_accuracy_figures_come_as_pdf_png_svg_at_column_widths(built):
    _, out, paths = built
    folder = out / f"{MODEL}-{DATA}"
    for axis in ("params", "macs", "train_flops"):
        for fmt in ("png", "svg", "pdf"):
            assert folder / f"{axis}.{fmt}" in paths
        assert folder / f"{axis}-1col.pdf" in paths and folder / f"{axis}-1col.png" in paths
        assert _pdf_size_in(folder / f"{axis}.pdf") == pytest.approx((6.9, 3.4))
        assert _pdf_size_in(folder / f"{axis}-1col.pdf") == pytest.approx((3.3, 2.9))
    # Training FLOPs are relative to dense: dense sits at 1, a 90% run at 0.1 (1e9 * (1 - t)).
    svg = (folder / "train_flops.svg").read_text()
    assert "<!-- Pareto front -->" in svg and "mean ± std where n ≥ 2" in svg


def test_layer_heatmap_of_resnet50_depth_stays_one_page():
    layers = [{"name": f"layer{i // 10}.{i % 10}.conv.weight", "density": i / 54}
              for i in range(54)]
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        paths = plot_layers({"a": [layers], "b": [layers]}, 0.9, Path(tmp) / "layers-s90",
                            "resnet50 on imagenet")
        assert [p.suffix for p in paths] == [".png", ".svg", ".pdf"]
        assert _pdf_size_in(paths[2]) == pytest.approx((6.9, 1.6 + 0.15 * 54))
        svg = paths[1].read_text()
        assert all(f"<!-- layer{i // 10}.{i % 10}.conv.weight -->" in svg for i in range(54))


def test_training_curves_average_seeds_per_epoch():
    a = [{"epoch": 1, "top1": 50.0, "train_loss": 2.0}, {"epoch": 2, "top1": 60.0,
                                                         "train_loss": 1.0}]
    b = [{"epoch": 1, "top1": 54.0, "train_loss": 3.0}]  # a seed that stopped after epoch 1
    curve = training_curves({"gmp": [a, b]})["gmp"]
    assert curve["epoch"].tolist() == [1, 2]
    assert curve["top1_mean"].tolist() == [52.0, 60.0]
    assert curve["train_loss_mean"].tolist() == [2.5, 1.0]
    assert curve["n"].tolist() == [2, 1]
    assert curve["top1_std"].iloc[0] == pytest.approx(np.std([50, 54], ddof=1))
    assert np.isnan(curve["top1_std"].iloc[1])  # one seed: no band


def test_curve_figures_per_target(built):
    _, out, paths = built
    folder = out / f"{MODEL}-{DATA}"
    assert sorted(p.name for p in folder.glob("curves-*.svg")) == ["curves-s50.svg",
                                                                   "curves-s90.svg"]
    svg = (folder / "curves-s90.svg").read_text()
    # dense is drawn beside the sparse methods; snip (failed) has no curve.
    assert "<!-- dense -->" in svg and "<!-- gmp -->" in svg and "<!-- snip -->" not in svg


# --- numbers ---------------------------------------------------------------------------------

def test_accuracy_csv_is_numeric(built):
    _, out, _ = built
    table = pd.read_csv(out / f"{MODEL}-{DATA}" / "accuracy.csv")
    assert table.columns.tolist() == ["method", "target_sparsity", "source", "n", "n_failed",
                                      "top1_mean", "top1_std", "top1_min", "top1_max",
                                      "achieved_sparsity", "missed_target", "at_chance",
                                      "calibration_unconverged", "recipe_split"]
    for col in ("target_sparsity", "n", "n_failed", "top1_mean", "top1_std", "top1_min",
                "top1_max", "achieved_sparsity", "calibration_unconverged"):
        assert pd.api.types.is_numeric_dtype(table[col]), col
    rows = {(r.method, r.target_sparsity, r.source): r for r in table.itertuples()}
    s = rows[("set", 0.9, "ours")]
    assert (s.n, s.n_failed, s.top1_mean, s.top1_min, s.top1_max) == (2, 0, 81.0, 80.0, 82.0)
    assert s.top1_std == pytest.approx(np.std([80.0, 82.0], ddof=1))
    g = rows[("gmp", 0.9, "ours")]
    assert (g.n, g.n_failed, g.top1_mean) == (1, 1, 85.0) and np.isnan(g.top1_std)
    snip = rows[("snip", 0.9, "ours")]
    assert (snip.n, snip.n_failed) == (0, 1) and np.isnan(snip.top1_mean)
    p = rows[("dsr", 0.9, f"published: {CITE}")]
    # the source's number, its runs unlisted: no n or range of ours
    assert p.top1_mean == 71.6 and np.isnan([p.n, p.n_failed, p.top1_min, p.top1_max]).all()


def test_results_csv_has_min_and_max(built):
    _, out, _ = built
    table = pd.read_csv(out / "results.csv")
    row = table[(table["method_label"] == "dense")].iloc[0]
    assert (row["top1_mean"], row["top1_min"], row["top1_max"], row["n"]) == (91.0, 90.0,
                                                                             92.0, 2)


def test_load_has_one_row_per_run_and_flat_hyperparameter_columns(built):
    root, _, _ = built
    runs = store.load(root)
    assert len(runs) == len(CELLS)
    assert runs.columns[:len(store.COLUMNS)].tolist() == store.COLUMNS
    flat = runs.columns[len(store.COLUMNS):].tolist()
    assert flat == sorted(flat)
    assert {"train.epochs", "sparsity.target", "model.width", "method.name"} <= set(flat)
    assert runs["train.epochs"].tolist() == [3] * len(CELLS)
    # One line answers a question: mean top-1 per method at 90%.
    mean = runs[runs["sparsity.target"] == 0.9].groupby("method.name")["top1"].mean()
    assert np.isnan(mean["snip"])  # its only run failed
    assert mean.drop("snip").to_dict() == {"dsr": 70.0, "gmp": 85.0, "set": 81.0,
                                           "static": 81.004}


def test_config_columns_flatten_hparams_without_their_level():
    flat = store.config_columns({
        "method": {"name": "set", "hparams": {"drop_fraction": 0.3, "zeta": None}},
        "train": {"lr": 0.1, "milestones": [30, 60]}, "seed": 2,
    })
    assert flat == {"method.name": "set", "method.drop_fraction": 0.3, "method.zeta": None,
                    "train.lr": 0.1, "train.milestones": (30, 60), "seed": 2}


# --- the page --------------------------------------------------------------------------------

def test_index_html_links_every_cell_to_its_runs(built):
    root, out, paths = built
    page = (out / "index.html").read_text()
    assert out / "index.html" in paths
    links = re.findall(r'href="([^"]+/(?:config|result)\.json)"', page)
    # ok and failed runs alike, each its config and result, plus failed runs' result again in
    # the failed-runs table.
    n_failed = sum(st != "ok" for *_, st, _ in CELLS)
    assert len(links) == 2 * len(CELLS) + n_failed
    for link in links:
        assert (out / link).resolve().is_file(), link
    assert "http://" not in page and "https://" not in page  # nothing from the network
    imgs = re.findall(r'<img src="([^"]+)"', page)
    assert imgs and all((out / s).is_file() and s.endswith(".svg") for s in imgs)


def test_failed_published_and_marker_cells_are_marked(built):
    _, out, _ = built
    page = (out / "index.html").read_text()
    snip = re.search(r'<td data-sort="snip">snip</td>(.*?)</tr>', page).group(1)
    assert '<td class="failed" data-sort="">failed (n=1)<span class="badge failed">' in snip
    gmp = re.search(r'<td data-sort="gmp">gmp</td>(.*?)</tr>', page).group(1)
    assert 'class="partial" data-sort="85"' in gmp  # one of two seeds failed
    assert page.count('<tr class="published">') == 3
    # A marker column of the aggregated frame (added by the honest checks) becomes a badge.
    agg = pd.DataFrame([{"method_label": "gmp", "target_sparsity": 0.9, "top1_mean": 50.0,
                         "top1_std": np.nan, "n": 1, "n_failed": 0, "missed_target": True,
                         "at_chance": False}])
    runs = pd.DataFrame(columns=["method_label", "target_sparsity", "seed", "status", "path"])
    cell = accuracy_html(Section("m", "d", agg, runs), out)
    assert 'class="missed"' in cell and ">missed target</span>" in cell
    assert "at chance" not in cell


def _chromium_or_skip() -> None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        reason = "playwright is not installed (pip install -e '.[test]')"
    else:
        if browser.chromium():
            return
        reason = "no Chromium at /usr/bin/chromium (apt-get install chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI needs the browser test: {reason}")
    pytest.skip(reason)


def test_page_in_headless_chromium(built):
    _chromium_or_skip()
    _, out, _ = built
    artifacts = Path(os.environ.get("SPARSEBENCH_ARTIFACTS", "test-artifacts"))
    shot = artifacts / "report-index.png"
    orders = {}

    def sort(page) -> None:
        col = 4  # the 90% column: method, 0%, 50%, 75%, 90%
        orders["before"] = browser.column(page, "table.accuracy", 0)
        page.click(f"table.accuracy thead th:nth-child({col + 1})")
        orders["asc"] = browser.column(page, "table.accuracy", 0)
        orders["asc90"] = browser.column(page, "table.accuracy", col)
        page.click(f"table.accuracy thead th:nth-child({col + 1})")
        orders["desc"] = browser.column(page, "table.accuracy", 0)

    check = browser.open_page(out / "index.html", shot, sort)
    assert check.console_errors == []
    assert check.requests_outside == []
    n_img = (out / "index.html").read_text().count("<img ")
    assert check.images == n_img >= 5 and check.broken_images == []
    pub = f" (published: {CITE})"
    assert orders["before"] == ["dense", "dsr", "gmp", "set", "snip", "static",
                                "dense" + pub, "dsr" + pub, "static" + pub]
    # Ascending by top-1 at 90%; cells without a number keep their order, last.
    assert orders["asc"] == ["dsr", "dsr" + pub, "set", "static", "gmp",
                             "dense", "snip", "dense" + pub, "static" + pub]
    assert orders["asc90"][:5] == ["70", "71.6", "81", "81.004", "85"]
    assert orders["desc"] == ["gmp", "static", "set", "dsr" + pub, "dsr",
                              "dense", "snip", "dense" + pub, "static" + pub]
    assert check.title == "sparsebench report"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
