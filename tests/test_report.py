"""The report stage: seed aggregation, tables, plots, index, atomic output.

A fake run root is built from result.json files written with the store's own atomic writer, so
every expected number below is computed independently from the inputs with numpy.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import bench.report as report
from bench import store
from bench.errors import UserError
from bench.report.aggregate import aggregate
from bench.report.plots import layer_densities, series
from bench.report.tables import accuracy_cell

MODEL, DATA = "mnist1d_cnn", "mnist1d"
PRUNABLE, OTHER = 10_000, 300  # prunable weights, never-pruned params (biases)
MACS_DENSE = 50_000
LAYERS = [("conv1.weight", 2_000), ("conv2.weight", 6_000), ("fc.weight", 2_000)]

# (method, label, target, seed, status): gmp at 0.9 has one failed seed, set at 0.9 only fails.
RUNS = (
    [("dense", "dense", 0.0, s, "ok") for s in (0, 1, 2)]
    + [("static", "static", t, s, "ok") for t in (0.5, 0.9) for s in (0, 1, 2)]
    + [("static", "static-erk", t, s, "ok") for t in (0.5, 0.9) for s in (0, 1)]
    + [("gmp", "gmp", 0.9, 0, "ok"), ("gmp", "gmp", 0.9, 1, "failed")]
    + [("set", "set-dsr", 0.9, 0, "failed")]
)


def _top1(label: str, target: float, seed: int) -> float:
    rng = np.random.default_rng(zlib.crc32(f"{label}/{target}".encode()) + 17 * seed)
    return float(90.0 - 20.0 * target + rng.normal(0.0, 1.5))


def _nonzero(label: str, target: float, seed: int) -> int:
    """Deliberately off the nominal count, and seed-dependent, so that a plot or table that
    used the nominal target instead of the achieved counts would be caught."""
    nominal = PRUNABLE - int(target * PRUNABLE)
    if label == "dense":
        return PRUNABLE
    return nominal + (37 if label == "static-erk" else 11) * (seed + 1)


def _result(method, label, target, seed, status, model=MODEL, dataset=DATA) -> dict:
    config = {
        "data": {"name": dataset}, "model": {"name": model, "width": 1.0},
        "method": {"name": method, "hparams": {}}, "train": {"epochs": 3},
        "sparsity": {"target": target, "layer_policy": "all", "distribution": "default"},
        "seed": seed,
    }
    rid = f"{label}-{target}-{seed}-{model}-{dataset}"
    body = {
        "schema": 1, "run_id": rid, "status": status, "config": config,
        "method_label": label, "distribution": "erk" if label.endswith("erk") else "uniform",
    }
    if status == "failed":
        return body | {"error": "loss became NaN at epoch 2\nTraceback ..."}
    nonzero = _nonzero(label, target, seed)
    density = nonzero / PRUNABLE
    layers = [
        {"name": name, "shape": [size], "params": size, "nonzero": round(size * density),
         "density": density * (1.2 if name == "fc.weight" and label == "static-erk" else 1.0),
         "macs": 5 * size * density, "macs_dense": 5 * size}
        for name, size in LAYERS
    ]
    macs = 5 * nonzero
    return body | {
        "error": None, "top1": _top1(label, target, seed), "top5": None,
        "test_loss": 0.5 + target + 0.01 * seed,
        "counts": {
            "params_total": PRUNABLE + OTHER, "params_prunable": PRUNABLE,
            "params_nonzero": nonzero + OTHER, "sparsity": 1 - density, "macs": macs,
            "flops": 2 * macs, "macs_dense": MACS_DENSE,
        },
        "layers": layers, "train_flops": 1e9, "history": [], "method_summary": {},
        "wall_time_s": 1.0, "device": "cpu", "versions": {},
    }


def _write(root: Path, body: dict) -> None:
    folder = store.run_dir(root, body["run_id"].replace(".", "p"), "x")
    store.atomic_write_json(folder / store.RESULT, body)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("root")
    for run in RUNS:
        _write(root, _result(*run))
    # A second (model, dataset) pair gets its own section.
    _write(root, _result("static", "static", 0.8, 0, "ok", model="lenet300_100", dataset="syn"))
    out = root / "report"
    paths = report.write_report(root, out)
    return root, out, paths


def _inputs(label: str, target: float) -> list[tuple[int, str]]:
    return [(s, st) for m, lab, t, s, st in RUNS if lab == label and t == target]


def test_summary_csv_matches_numpy_over_seeds(built):
    _, out, _ = built
    table = pd.read_csv(out / f"{MODEL}-{DATA}" / "summary.csv")
    groups = {(r.method_label, r.target_sparsity) for r in table.itertuples()}
    assert groups == {(lab, t) for _, lab, t, _, _ in RUNS}
    for row in table.itertuples():
        runs = _inputs(row.method_label, row.target_sparsity)
        ok = [s for s, st in runs if st == "ok"]
        assert row.n == len(ok)
        assert row.n_failed == len(runs) - len(ok)
        top1 = np.array([_top1(row.method_label, row.target_sparsity, s) for s in ok])
        nonzero = np.array([_nonzero(row.method_label, row.target_sparsity, s) for s in ok])
        if not ok:  # failed-only cell: no metrics, never a zero averaged in
            assert np.isnan(row.top1_mean) and np.isnan(row.params_nonzero)
            continue
        assert row.top1_mean == pytest.approx(top1.mean(), rel=1e-12)
        if len(ok) > 1:
            assert row.top1_std == pytest.approx(top1.std(ddof=1), rel=1e-12)
        else:
            assert np.isnan(row.top1_std)
        assert row.params_nonzero == pytest.approx(nonzero.mean() + OTHER, rel=1e-12)
        assert row.macs == pytest.approx(5 * nonzero.mean(), rel=1e-12)
        assert row.achieved_sparsity == pytest.approx(1 - nonzero.mean() / PRUNABLE, rel=1e-12)
        assert row.seeds == " ".join(map(str, ok))
    # top-5 is null everywhere (10 classes), so the column is left out rather than all NaN.
    assert "top5_mean" not in table.columns


def _md_table(text: str) -> list[list[str]]:
    rows = [line for line in text.splitlines() if line.startswith("|")]
    return [[c.strip() for c in r.strip("|").split(" | ")] for r in rows if ":---" not in r]


def test_accuracy_md_rows_cols_and_failed_cells(built):
    _, out, _ = built
    folder = out / f"{MODEL}-{DATA}"
    rows = _md_table((folder / "accuracy.md").read_text())
    assert rows[0] == ["method", "0%", "50%", "90%"]
    assert [r[0] for r in rows[1:]] == ["dense", "gmp", "set-dsr", "static", "static-erk"]
    cells = {r[0]: dict(zip(rows[0][1:], r[1:], strict=True)) for r in rows[1:]}
    dense = np.array([_top1("dense", 0.0, s) for s in (0, 1, 2)])
    assert cells["dense"]["0%"] == f"{dense.mean():.2f} ± {dense.std(ddof=1):.2f} (n=3)"
    assert cells["dense"]["50%"] == "—"
    assert cells["set-dsr"]["90%"] == "failed (n=1)"
    assert cells["gmp"]["90%"] == f"{_top1('gmp', 0.9, 0):.2f} (n=1, 1 failed)"
    assert cells["static-erk"]["50%"].endswith("(n=2)")
    assert cells["static"]["90%"].endswith("(n=3)")
    # The CSV holds the same cells as numbers; the LaTeX table has one line per method.
    csv = pd.read_csv(folder / "accuracy.csv").set_index(["method", "target_sparsity"])
    assert (csv.loc[("set-dsr", 0.9), "n"], csv.loc[("set-dsr", 0.9), "n_failed"]) == (0, 1)
    assert np.isnan(csv.loc[("set-dsr", 0.9), "top1_mean"])
    assert csv.loc[("dense", 0.0), "top1_mean"] == pytest.approx(dense.mean(), rel=1e-12)
    assert csv.loc[("dense", 0.0), "top1_std"] == pytest.approx(dense.std(ddof=1), rel=1e-12)
    assert csv.loc[("dense", 0.0), "top1_max"] == dense.max()
    tex = (folder / "accuracy.tex").read_text()
    body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
    assert len(body) == 5 and body[0].startswith("dense & ") and r"$\pm$" in body[0]
    assert r"failed (n=1)" in body[2] and r"0\%" in tex


def test_accuracy_cell_formats():
    base = {"top1_mean": 71.234, "top1_std": 0.5, "n": 1, "n_failed": 0}
    assert accuracy_cell(pd.Series(base)) == "71.23"
    assert accuracy_cell(pd.Series(base | {"n": 0, "n_failed": 2})) == "failed (n=2)"
    two = pd.Series(base | {"n": 2, "n_failed": 1})
    assert accuracy_cell(two) == "71.23 ± 0.50 (n=2, 1 failed)"


def test_plot_files_are_valid_png_and_svg(built):
    _, out, paths = built
    folder = out / f"{MODEL}-{DATA}"
    for stem in ("params", "macs"):
        assert (folder / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        svg = ET.parse(folder / f"{stem}.svg").getroot()
        assert svg.tag.endswith("svg")
        # Text is drawn as paths; matplotlib keeps each string as a comment next to it.
        raw = (folder / f"{stem}.svg").read_text()
        assert all(f"<!-- {name} -->" in raw for name in ("static-erk", "gmp", "static"))
        assert "set-dsr" not in raw  # its only run failed: nothing to plot
    layer_pngs = sorted(p.name for p in folder.glob("layers-*.png"))
    assert layer_pngs == ["layers-s50.png", "layers-s90.png"]
    for p in layer_pngs:
        assert (folder / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(paths) == sorted(p for p in out.rglob("*") if p.is_file())


def test_plotted_x_values_are_achieved_not_nominal(built):
    root, _, _ = built
    agg = aggregate(store.load(root))
    agg = agg[agg["model"] == MODEL]
    for xcol, scale in (("params_nonzero", 1), ("macs", 5)):
        lines = series(agg, xcol)
        assert set(lines) == {"static", "static-erk", "gmp"}  # dense is the line, set failed
        for label, pts in lines.items():
            assert list(pts["x"]) == sorted(pts["x"])
            for p in pts.itertuples():
                ok = [s for s, st in _inputs(label, p.target_sparsity) if st == "ok"]
                achieved = np.mean([_nonzero(label, p.target_sparsity, s) for s in ok])
                nominal = PRUNABLE - int(p.target_sparsity * PRUNABLE)
                expect = scale * achieved + (OTHER if xcol == "params_nonzero" else 0)
                assert p.x == pytest.approx(expect, rel=1e-12)
                assert p.x != pytest.approx(
                    scale * nominal + (OTHER if xcol == "params_nonzero" else 0)
                )
                top1 = [_top1(label, p.target_sparsity, s) for s in ok]
                assert p.yerr == pytest.approx(np.std(top1, ddof=1) if len(ok) > 1 else 0.0)


def test_layer_densities_average_over_seeds():
    a = [{"name": "l1", "density": 0.2}, {"name": "l2", "density": 0.4}]
    b = [{"name": "l1", "density": 0.3}, {"name": "l2", "density": 0.6}]
    names, dens = layer_densities({"x": [a, b], "y": [[{"name": "l2", "density": 1.0}]]})
    assert names == ["l1", "l2"]
    np.testing.assert_allclose(dens["x"], [0.25, 0.5])
    assert np.isnan(dens["y"][0]) and dens["y"][1] == 1.0


def test_index_links_everything_and_lists_failures(built):
    _, out, paths = built
    text = (out / "README.md").read_text()
    links = set(re.findall(r"\]\(([^)]+)\)", text))
    assert all((out / link).is_file() for link in links)
    assert {out / link for link in links} | {out / "README.md"} == set(paths)
    assert "## mnist1d_cnn on mnist1d" in text and "## lenet300_100 on syn" in text
    assert "## Failed runs" in text and "loss became NaN at epoch 2" in text
    assert "Traceback" not in text  # one line per failure
    assert "17 runs (15 ok, 2 failed)" in text


def test_dense_filed_at_zero_whatever_the_target(tmp_path):
    _write(tmp_path, _result("dense", "dense", 0.9, 0, "ok"))
    _write(tmp_path, _result("dense", "dense", 0.0, 1, "ok"))
    agg = aggregate(store.load(tmp_path))
    assert list(agg["target_sparsity"]) == [0.0] and list(agg["n"]) == [2]
    assert bool(agg["is_dense"].iloc[0])


def test_failure_leaves_previous_report_untouched(built, tmp_path, monkeypatch):
    root, _, _ = built
    out = tmp_path / "out"
    report.write_report(root, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(report, "plot_layers", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        report.write_report(root, out)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    with pytest.raises(RuntimeError):
        report.write_report(root, tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp folders left


def test_rerun_replaces_report_and_empty_root_is_a_user_error(built, tmp_path):
    root, _, _ = built
    out = tmp_path / "out"
    (out / "stale").mkdir(parents=True)
    report.write_report(root, out)
    assert not (out / "stale").exists() and (out / "README.md").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(UserError, match="no results"):
        report.write_report(tmp_path / "empty", tmp_path / "r")
