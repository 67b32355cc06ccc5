"""Published numbers: the baselines file, its validation, and where the report shows them
(accuracy tables, plots, leaderboard).

A results root is built from result.json files (tests/test_report.py's writers) with top-1
values chosen so the leaderboard order is known by hand, including a tie at the shown 2 decimals,
a cell with one failed seed and a cell where every seed failed.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

import bench.report as report
from bench.cli import main
from bench.errors import UserError
from bench.report import published
from bench.report.leaderboard import display_key, rank
from bench.report.plots import label_heights, published_points
from tests.test_report import DATA, MODEL, OTHER, _nonzero, _result, _write

CITE = "Doe 2020, Tab. 9"

SOURCE = f"""
[source.doe]
citation = "{CITE}"
paper = "J. Doe. A paper. 2020."
table = "Table 9"
verified = "read in the PDF"
protocol = "twice the epochs"
"""


def _entry(method: str, sparsity: float, top1: float, model: str = MODEL,
           dataset: str = DATA, **extra) -> str:
    lines = ["[[published]]", 'source = "doe"', f'model = "{model}"', f'dataset = "{dataset}"',
             f'method = "{method}"', f"sparsity = {sparsity}", f"top1 = {top1}"]
    for key, value in extra.items():
        lines.append(f"{key} = {value!r}" if not isinstance(value, str) else f'{key} = "{value}"')
    return "\n".join(lines) + "\n"


PUBLISHED = SOURCE + "\n".join([
    _entry("dense", 0.0, 88.5, params=10300),
    _entry("dsr", 0.9, 71.6, params=5000, protocol="kernel granularity"),
    _entry("static", 0.75, 77.5),  # no params: left off the plots, in the tables
    _entry("dsr", 0.9, 73.3, model="resnet50", dataset="imagenet", params=5.1e6),
])

# (label, target, seed, status, top1). At 90%: gmp 85 with one failed seed ranks first; set
# (80, 82 -> 81.00) and static (81.004 -> shown 81.00) tie for 2nd, listed alphabetically even
# though static's unrounded mean is higher; dsr 4th; snip failed everywhere, unranked, last.
CELLS = [
    ("dense", 0.0, 0, "ok", 90.0), ("dense", 0.0, 1, "ok", 92.0),
    ("gmp", 0.9, 0, "ok", 85.0), ("gmp", 0.9, 1, "failed", None),
    ("set", 0.9, 0, "ok", 80.0), ("set", 0.9, 1, "ok", 82.0),
    ("static", 0.9, 0, "ok", 81.004),
    ("dsr", 0.9, 0, "ok", 70.0),
    ("snip", 0.9, 0, "failed", None),
    ("set", 0.5, 0, "ok", 60.0), ("static", 0.5, 0, "ok", 61.0),
]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("root")
    for label, target, seed, status, top1 in CELLS:
        body = _result(label, label, target, seed, status)
        if status == "ok":
            body["top1"] = top1
        _write(root, body)
    pub = root / "published.toml"
    pub.write_text(PUBLISHED)
    out = root / "report"
    paths = report.write_report(root, out, pub)
    return root, out, paths


def _md_rows(text: str) -> list[list[str]]:
    rows = [line for line in text.splitlines() if line.startswith("|")]
    return [[c.strip() for c in r.strip("|").split(" | ")] for r in rows if ":---" not in r]


def _subsection(text: str, heading: str) -> str:
    return text.split(f"### {heading}\n", 1)[1].split("\n### ", 1)[0]


def test_accuracy_tables_get_labelled_published_rows(built):
    _, out, _ = built
    folder = out / f"{MODEL}-{DATA}"
    rows = _md_rows((folder / "accuracy.md").read_text())
    assert rows[0] == ["method", "0%", "50%", "75%", "90%"]  # 75% exists only in the file
    labels = [r[0] for r in rows[1:]]
    assert labels == ["dense", "dsr", "gmp", "set", "snip", "static",
                      f"dense (published: {CITE})", f"dsr (published: {CITE})",
                      f"static (published: {CITE})"]
    cells = {r[0]: dict(zip(rows[0][1:], r[1:], strict=True)) for r in rows[1:]}
    assert cells[f"dense (published: {CITE})"] == {"0%": "88.5", "50%": "—", "75%": "—",
                                                   "90%": "—"}
    assert cells[f"dsr (published: {CITE})"]["90%"] == "71.6"
    assert cells[f"static (published: {CITE})"]["75%"] == "77.5"
    assert cells["static"]["75%"] == "—" and cells["set"]["90%"] == "81.00 ± 1.41 (n=2)"
    text = (folder / "accuracy.md").read_text()
    assert "not our runs" in text.splitlines()[0]
    assert "73.3" not in text  # resnet50/imagenet has no results here
    csv = pd.read_csv(folder / "accuracy.csv")
    published_rows = csv[csv["source"] == f"published: {CITE}"]
    assert published_rows[["method", "target_sparsity", "top1_mean"]].values.tolist() == [
        ["dense", 0.0, 88.5], ["dsr", 0.9, 71.6], ["static", 0.75, 77.5]]
    # a published number is the source's (its runs unlisted): no n, spread or range of ours
    assert published_rows[["n", "n_failed", "top1_std", "top1_min", "top1_max"]].isna() \
        .all().all()
    assert csv.loc[csv["source"] == "ours", "n"].tolist() == \
        csv.loc[csv["source"] == "ours", "n"].astype(int).tolist()
    tex = (folder / "accuracy.tex").read_text()
    assert "dsr (published: Doe 2020, Tab. 9) & -- & -- & -- & 71.6" in tex


def test_published_absent_section_shows_nowhere(built):
    _, out, paths = built
    assert not (out / "resnet50-imagenet").exists()
    for path in paths:
        if path.suffix in (".md", ".csv", ".tex"):
            text = path.read_text()
            assert "73.3" not in text and "resnet50" not in text, path


def test_leaderboard_order_ties_and_failed_cells(built):
    _, out, _ = built
    text = (out / "leaderboard.md").read_text()
    assert "ranked by mean top-1 test accuracy" in text and "never ranked" in text
    section = text.split("## mnist1d_cnn on mnist1d\n", 1)[1]
    assert "Dense reference: `dense`, top-1 91.00." in section
    rows = _md_rows(_subsection(section, "90% target sparsity"))
    assert rows[0] == ["rank", "method", "top-1 (%)", "Δ dense", "achieved sparsity",
                       "nonzero params", "epochs", "train FLOPs"]
    assert [(r[0], r[1]) for r in rows[1:]] == [
        ("1", "gmp"), ("2", "set"), ("2", "static"), ("4", "dsr"), ("—", "snip"),
        ("published", f"dsr (published: {CITE})"),
    ]
    by = {r[1]: dict(zip(rows[0], r, strict=True)) for r in rows[1:]}
    assert by["gmp"]["top-1 (%)"] == "85.00 (n=1, 1 failed)"
    assert by["gmp"]["Δ dense"] == "-6.00"
    assert by["static"]["top-1 (%)"] == "81.00" and by["static"]["Δ dense"] == "-10.00"
    assert by["snip"]["top-1 (%)"] == "failed (n=1)" and by["snip"]["nonzero params"] == "—"
    set_nonzero = np.mean([_nonzero("set", 0.9, s) for s in (0, 1)])
    assert by["set"]["nonzero params"] == f"{round(set_nonzero + OTHER):,}"
    assert by["set"]["achieved sparsity"] == f"{1 - set_nonzero / 10_000:.4f}"
    pub = by[f"dsr (published: {CITE})"]
    assert (pub["top-1 (%)"], pub["Δ dense"], pub["achieved sparsity"],
            pub["nonzero params"]) == ("71.6", "—", "0.9", "5k")
    rows = _md_rows(_subsection(section, "50% target sparsity"))
    assert [(r[0], r[1], r[2]) for r in rows[1:]] == [("1", "static", "61.00"),
                                                     ("2", "set", "60.00")]
    dense = _md_rows(_subsection(section, "Dense"))
    assert [(r[0], r[1], r[2]) for r in dense[1:]] == [
        ("dense", "dense", "91.00 ± 1.41 (n=2)"), ("published", f"dense (published: {CITE})",
                                                   "88.5"),
    ]
    assert "### 75% target sparsity" not in section
    only = _md_rows(_subsection(section, "Published at sparsities without runs of ours"))
    assert [(r[0], r[1], r[2], r[4]) for r in only[1:]] == [
        ("published", f"static (published: {CITE})", "77.5", "0.75")]
    sources = _subsection(section, "Published sources")
    assert f"**{CITE}**" in sources and "Recipe: twice the epochs." in sources
    assert "dsr at 90%: kernel granularity" in sources
    assert "resnet50" not in text and "73.3" not in text


def test_rank_ties_are_on_the_shown_value():
    cells = pd.DataFrame({
        "method_label": ["b", "a", "c", "d", "e"],
        "n": [1, 1, 1, 0, 2],
        "top1_mean": [70.004, 69.996, 71.0, np.nan, 70.006],
    })
    ranked = rank(cells)
    assert list(ranked["method_label"]) == ["c", "e", "a", "b", "d"]
    assert list(ranked["rank"]) == [1, 2, 3, 3, None]  # 70.006 shows 70.01; the others 70.00
    assert display_key(69.996) == display_key(70.004) == 70.0


def test_index_links_leaderboard(built):
    _, out, paths = built
    readme = (out / "README.md").read_text()
    assert "[leaderboard.md](leaderboard.md)" in readme
    assert out / "leaderboard.md" in paths
    assert f"dsr (published: {CITE})" in readme  # the index repeats the accuracy table


def test_plots_mark_published_points_only_where_a_count_exists(built):
    root, out, _ = built
    entries = published.for_section(published.load(root / "published.toml"), MODEL, DATA)
    assert [(p.method, p.sparsity) for p in entries] == [("dense", 0.0), ("dsr", 0.9),
                                                        ("static", 0.75)]
    assert [(p.method, x) for p, x in published_points(entries, "params")] == [
        ("dense", 10300.0), ("dsr", 5000.0)]
    assert published_points(entries, "macs") == []
    folder = out / f"{MODEL}-{DATA}"
    # matplotlib keeps every drawn string as an SVG comment: the legend entry is there only
    # when a published point was drawn.
    assert "<!-- published -->" in (folder / "params.svg").read_text()
    assert "<!-- published -->" not in (folder / "macs.svg").read_text()


def test_labels_at_one_x_are_pushed_apart_in_accuracy_order():
    src = published.Source("k", "c", "p", "t", "v")

    def point(top1: float, x: float):
        return published.Published(src, MODEL, DATA, "dsr", 0.5, top1), x

    points = [point(69.99, 1.0), point(60.0, 1.0), point(70.0, 1.0), point(69.98, 2.0)]
    assert label_heights(points, 1.0) == [69.0, 60.0, 70.0, 69.98]
    assert label_heights(points, 20.0) == [50.0, 30.0, 70.0, 69.98]


def test_dsr_entries_cite_their_row_and_column_of_table_2():
    """Each DSR number names the row label and column header of the table on the authors'
    ICML slide 7 (shared/seeds/000_*.txt), verbatim."""
    labels = {"dense": "Full dense", "thin_dense": "Thin dense", "static": "Static sparse",
              "deepr": "DeepR (Bellec et al., 2017)", "set": "SET (Mocanu et al., 2018)",
              "dsr": "Dynamic sparse (Ours)", "gmp": "Compressed sparse (Zhu & Gupta, 2017)"}
    columns = {0.0: "0.0 (25.6M)", 0.8: "0.8 (7.3M)", 0.9: "0.9 (5.1M)"}
    dsr = [e for e in published.load(published.DEFAULT_PATH) if e.source.key == "dsr-icml2019"]
    assert len(dsr) == 13
    for e in dsr:
        assert e.row == f"{labels[e.method]}, column {columns[e.sparsity]}", e


def test_real_baselines_file_validates_and_holds_only_verified_numbers():
    entries = published.load()  # the repository's baselines/published.toml
    assert published.DEFAULT_PATH.name == "published.toml"
    assert published.DEFAULT_PATH.parent.name == "baselines"
    assert {(e.model, e.dataset) for e in entries} == {("resnet50", "imagenet"),
                                                       ("mobilenet_v1", "imagenet")}
    dsr = {(e.method, e.sparsity): (e.top1, e.top5, e.params) for e in entries
           if e.source.key == "dsr-icml2019"}
    # methods.md §5, ICML-2019 Table 2 (verified against the slides), params from its header.
    assert dsr == {
        ("dense", 0.0): (74.9, 92.4, 25.6e6),
        ("thin_dense", 0.8): (72.4, 90.9, 7.3e6), ("thin_dense", 0.9): (70.7, 89.9, 5.1e6),
        ("static", 0.8): (71.6, 90.4, 7.3e6), ("static", 0.9): (67.8, 88.4, 5.1e6),
        ("deepr", 0.8): (71.7, 90.6, 7.3e6), ("deepr", 0.9): (70.2, 90.0, 5.1e6),
        ("set", 0.8): (72.6, 91.2, 7.3e6), ("set", 0.9): (70.4, 90.1, 5.1e6),
        ("dsr", 0.8): (73.3, 92.4, 7.3e6), ("dsr", 0.9): (71.6, 90.5, 5.1e6),
        ("gmp", 0.8): (73.2, 91.5, 7.3e6), ("gmp", 0.9): (70.3, 90.0, 5.1e6),
    }
    strs = {(e.method, e.sparsity): (e.top1, e.params, e.macs) for e in entries
            if e.source.key == "str-readme" and e.model == "resnet50"}
    assert strs == {  # methods.md §6, RAIVNLab/STR README; 81.27%'s params look like a typo
        ("dense", 0.0): (77.01, 25.6e6, 4.09e9), ("str", 0.8127): (76.12, None, 705e6),
        ("str", 0.9023): (74.31, 2.49e6, 343e6), ("str", 0.9515): (70.23, 1.24e6, 162e6),
        ("str", 0.9611): (67.78, 0.99e6, 127e6), ("str", 0.9805): (61.46, 0.50e6, 73e6),
        ("str", 0.9898): (51.82, 0.26e6, 47e6),
    }
    mobilenet = {(e.method, e.sparsity): (e.top1, e.params, e.macs) for e in entries
                 if e.model == "mobilenet_v1"}
    assert mobilenet == {  # RAIVNLab/STR README MobileNetV1 table (cc74d38 and 2656d79 agree)
        ("str", 0.7528): (68.35, 1.04e6, 101e6), ("str", 0.8901): (62.10, 0.46e6, 42e6),
        # Fully Dense Models row at cc74d38 (70.60 before f218120 released the dense model)
        ("dense", 0.0): (71.95, 4.21e6, 569e6),
    }
    assert len(entries) == len(dsr) + len(strs) + len(mobilenet)
    assert all(e.source.verified and e.source.table and e.source.paper for e in entries)
    protocols = {e.method: e.protocol for e in entries if e.source.key == "dsr-icml2019"}
    assert "2x the epochs" in protocols["thin_dense"] and "2x the epochs" in protocols["static"]
    # DSR's ResNet-50 compressed-sparse jobs prune a constant fraction, not on the cubic.
    assert "do not pass --cubic-prune-schedule" in protocols["gmp"]
    assert "cubic-schedule" not in protocols["gmp"]


def test_missing_default_file_means_none_but_a_named_file_must_exist(tmp_path, monkeypatch):
    monkeypatch.setattr(published, "DEFAULT_PATH", tmp_path / "nothing.toml")
    assert published.load() == []
    with pytest.raises(UserError, match=r"cannot read published numbers .*nothing\.toml"):
        published.load(tmp_path / "nothing.toml")


BAD = [
    # (the entry's replacement text, expected line within the file, message fragment)
    ('method = "snfs"', 'unknown method \'snfs\'; valid: deepr, dense, dsr'),
    ('model = "wrn40_4"', "unknown model 'wrn40_4'"),
    ('dataset = "imagenet21k"', "unknown dataset 'imagenet21k'"),
    ("sparsity = 1.0", "sparsity must be a number in [0, 1), got 1.0"),
    ('sparsity = "0.9"', "sparsity must be a number in [0, 1), got '0.9'"),
    ("top1 = 101.5", "top1 must be a percentage in [0, 100], got 101.5"),
    ("top1 = true", "top1 must be a percentage in [0, 100], got True"),
    ('source = "nope"', "unknown source 'nope'; defined: doe"),
]


@pytest.mark.parametrize("replacement, fragment", BAD)
def test_bad_entry_is_one_line_at_the_right_line(tmp_path, replacement, fragment):
    good = _entry("dsr", 0.9, 71.6, params=5000)
    key = replacement.split(" = ")[0]
    bad = "\n".join(replacement if line.startswith(f"{key} = ") else line
                    for line in good.splitlines())
    text = SOURCE + "\n" + good + "\n" + bad + "\n"
    path = tmp_path / "p.toml"
    path.write_text(text)
    lines = text.splitlines()
    line = lines.index(replacement) + 1
    second = [i for i, t in enumerate(lines, 1) if t == "[[published]]"][1]
    assert line > second  # in the second entry, not the first one with the same key
    with pytest.raises(UserError) as info:
        published.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: published entry 2: ")
    assert fragment in message and "\n" not in message


def test_structural_errors_point_at_their_line(tmp_path):
    path = tmp_path / "p.toml"
    cases = [
        # missing top1: the entry's header line
        (SOURCE + "\n" + _entry("dsr", 0.9, 1).replace("top1 = 1\n", ""),
         "[[published]]", "published entry 1: missing 'top1'"),
        (SOURCE + "\n" + _entry("dsr", 0.9, 1) + "colour = 'red'\n",
         "colour = 'red'", "unknown key 'colour'"),
        (SOURCE + "\n" + _entry("dsr", 0.9, 1) + _entry("dsr", 0.9, 2),
         None, "published entry 2: duplicates entry 1"),
        (SOURCE + "\n" + _entry("dense", 0.5, 1), "sparsity = 0.5", "a dense entry has "
         "sparsity 0"),
        (SOURCE + "\n" + _entry("dsr", 0.9, 1, params=-3), "params = -3", "params must be a "
         "positive number"),
        (SOURCE.replace('verified = "read in the PDF"\n', ""), "[source.doe]",
         "source 'doe': missing 'verified'"),
        (SOURCE + "\n[[published]]\nsource = \"doe\"\nmodel = \n", "model = ",
         "malformed published numbers file"),
        ("title = 'x'\n" + SOURCE, "title = 'x'", "unknown top-level key 'title'"),
    ]
    for text, marker, fragment in cases:
        path.write_text(text)
        lines = text.splitlines()
        if marker is None:  # the duplicate: the second entry's sparsity line
            line = [i for i, t in enumerate(lines, 1) if t.startswith("sparsity")][1]
        else:
            line = lines.index(marker) + 1
        with pytest.raises(UserError) as info:
            published.load(path)
        message = str(info.value)
        assert re.match(rf"{re.escape(str(path))}:{line}: ", message), (message, line)
        assert fragment in message and "\n" not in message, message


def test_cli_report_takes_a_published_file(built, tmp_path, capsys):
    root, _, _ = built
    good = tmp_path / "good.toml"
    good.write_text(SOURCE + _entry("dsr", 0.9, 42.25))
    out = tmp_path / "r"
    assert main(["report", "--root", str(root), "--out", str(out),
                 "--published", str(good)]) == 0
    text = (out / f"{MODEL}-{DATA}" / "accuracy.md").read_text()
    assert f"| dsr (published: {CITE}) | — | — | 42.25 |" in " ".join(text.split())
    bad = tmp_path / "bad.toml"
    bad.write_text(SOURCE + _entry("dsr", 1.5, 1))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["report", "--root", str(root), "--out", str(out),
                 "--published", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"sparsebench: error: {bad}:") and "\n" not in err
    assert "sparsity must be a number in [0, 1)" in err
    # A bad published file fails before anything is written: the old report stays.
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_default_report_uses_the_repository_file(tmp_path):
    """resnet50/imagenet results pick up the real file's DSR and STR rows."""
    root = tmp_path / "root"
    _write(root, _result("dsr", "dsr", 0.9, 0, "ok", model="resnet50", dataset="imagenet"))
    _write(root, _result("dense", "dense", 0.0, 0, "ok", model="resnet50", dataset="imagenet"))
    out = tmp_path / "out"
    report.write_report(root, out)
    rows = _md_rows((out / "resnet50-imagenet" / "accuracy.md").read_text())
    cells = {r[0]: dict(zip(rows[0][1:], r[1:], strict=True)) for r in rows[1:]}
    assert cells["dsr (published: Mostafa & Wang 2019, Tab. 2)"]["90%"] == "71.6"
    assert cells["dsr (published: Mostafa & Wang 2019, Tab. 2)"]["80%"] == "73.3"
    assert cells["dense (published: Kusupati et al. 2020, STR README)"]["0%"] == "77.01"
    assert cells["str (published: Kusupati et al. 2020, STR README)"]["90.23%"] == "74.31"
    board = (out / "leaderboard.md").read_text()
    at90 = _md_rows(_subsection(board, "90% target sparsity"))
    assert ["published", "gmp (published: Mostafa & Wang 2019, Tab. 2)", "70.3", "90.0", "—",
            "0.9", "5.1M", "—", "—"] in at90
    others = _md_rows(_subsection(board, "Published at sparsities without runs of ours"))
    assert [r[5] for r in others[1:]] == ["0.8"] * 6 + ["0.8127", "0.9023", "0.9515", "0.9611",
                                                       "0.9805", "0.9898"]
    assert ["published", "str (published: Kusupati et al. 2020, STR README)", "61.46", "—",
            "—", "0.9805", "0.5M", "—", "—"] in others
    assert "thin_dense at 80%: trained for 2x the epochs" in board
    assert "<!-- published -->" in (out / "resnet50-imagenet" / "macs.svg").read_text()


def test_report_says_when_the_default_file_is_absent(built, tmp_path, capsys, monkeypatch):
    """After `pip install .` (not -e) the repository's file is not next to the package: the
    report has no published rows and says why, instead of dropping them silently."""
    root, _, _ = built
    missing = tmp_path / "baselines" / "published.toml"
    monkeypatch.setattr(published, "DEFAULT_PATH", missing)
    assert main(["report", "--root", str(root), "--out", str(tmp_path / "rep"), "-q"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == (f"note: no published numbers shown: {missing} is absent (an install "
                         "that is not editable); pass --published FILE")
    assert "(published:" not in (tmp_path / "rep" / "leaderboard.md").read_text()
