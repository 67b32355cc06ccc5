"""``sparsebench run GRID --preflight`` on CPU with synthetic data and a tiny step count:
every run built and counted, one timing per recipe, the estimate's arithmetic, errors reported
per run, nothing written."""

from __future__ import annotations

import math
import textwrap

import pytest

from bench.cli import main
from bench.config import run_id
from bench.grid import load_grid, parse_only, select
from bench.models import build_model
from bench.preflight import build, data_shape, format_report, measure, preflight, recipe_key

GRID = textwrap.dedent("""\
    name = "pf"
    [axes]
    models = ["resnet8"]
    datasets = ["cifar10"]
    methods = ["dense", "static", "eigendamage"]
    sparsities = [0.5, 0.9]
    seeds = [0, 1]
    [train]
    epochs = 4
    batch_size = 8
    optimizer = "sgd"
    lr = 0.1
    [method.eigendamage]
    finetune_epochs = 2
    """)


def test_preflight_builds_every_run_and_times_each_recipe_once(tmp_path, capsys):
    path = tmp_path / "pf.toml"
    path.write_text(GRID)
    grid = load_grid(str(path))
    assert len(grid.runs) == 2 + 2 * 2 * 2
    # Four recipes: dense, static (both targets: same network and recipe), eigendamage at
    # each target (it prunes to a smaller network).
    assert len({recipe_key(build(r)) for r in grid.runs}) == 4
    empty = tmp_path / "no-data"          # CIFAR-10 absent: synthetic data of its shape
    # In this process (measure_in_subprocess runs the same function in a fresh interpreter,
    # tested through the CLI below): faster on a loaded machine.
    result = preflight(grid.runs, steps=1, batch_cap=None, data_root=empty, measure=measure)
    assert result.timed == 4 and result.trials == []
    dense_params = sum(p.numel() for p in build_model("resnet8", 10, (3, 32, 32)).parameters())
    by_entry = {}
    for e in result.runs:
        assert e.error is None, e.error
        by_entry.setdefault(e.built.run.entry, []).append(e)
        t = e.timing
        assert (t["data"], t["train_size"], t["test_size"], t["batch"]) == \
            ("synthetic", 50_000, 10_000, 8)
        assert e.built.params_total == dense_params
        # the estimate: epochs x examples x step time per example, plus evaluation and setup
        epochs = sum(n for _, n in e.phases)
        per = t["step_s"] / 8
        setup = t["setup_s"]
        if e.built.run.entry == "eigendamage":  # the K-FAC pass read all 8 x 3 examples
            assert t["pass_examples"] == 24 and 0 < t["pass_s"] <= t["setup_s"]
            # one K-FAC pass scaled to 50,000 examples, one BatchNorm refresh (a forward)
            setup = t["setup_s"] - t["pass_s"] + t["pass_s"] / 24 * 50_000 + 50_000 * per / 3
        else:
            assert t["pass_examples"] == 0
        assert e.seconds == pytest.approx(epochs * 50_000 * per + epochs * 10_000 * per / 3
                                          + setup)
    assert by_entry["dense"][0].phases == [("train", 4)]
    assert by_entry["eigendamage"][0].phases == [("prune+finetune", 2)]
    # static at 90%: 90% of the prunable weights are zero
    static90 = next(e for e in by_entry["static"] if e.built.run.config.sparsity.target == 0.9)
    assert static90.built.nominal_nonzero == dense_params - round(0.9 * static90.built
                                                                  .params_prunable)
    # runs of one recipe share one measurement
    assert by_entry["static"][0].timing is by_entry["static"][-1].timing
    lines = format_report(result, "pf")
    assert lines[1].startswith(f"{run_id(grid.runs[0].config)}  resnet8")
    total = sum(e.seconds for e in result.runs) / 3600
    assert lines[len(result.runs) + 4] == (
        f"grid pf: 10 runs, 0 failed preflight; estimated {total:.2f} device-hours on cpu")


# --- the estimate's arithmetic, with a fake timer --------------------------------------------

FAKE_GRID = textwrap.dedent("""\
    name = "fake"
    [axes]
    models = ["mnist1d_cnn"]
    datasets = ["mnist1d"]
    methods = ["dense", "static", "static-long", "thin_dense", "eigendamage", "ed-iter", "str"]
    sparsities = [0.5, 0.9]
    seeds = [0, 1]
    [train]
    epochs = 4
    batch_size = 100
    optimizer = "sgd"
    lr = 0.1
    [method.static-long]
    method = "static"
    train = { epochs = 8, lr = 0.05 }
    [method.eigendamage]
    finetune_epochs = 2
    [method.ed-iter]
    method = "eigendamage"
    mode = "iterative"
    rounds = 3
    finetune_epochs = 1
    [method.str]
    calibration_max_runs = 4
    """)

# step seconds at batch 100 per method; EigenDamage's setup: 3 s, 2 of them reading 400 examples
STEP = {"dense": 0.2, "static": 0.3, "thin_dense": 0.1, "eigendamage": 0.05, "str": 0.4}


def fake_measure(calls):
    def measure(config, steps, batch_cap, data_root):
        calls.append((config.method.name, config.sparsity.target, config.seed))
        ed = config.method.name == "eigendamage"
        return {"step_s": STEP[config.method.name], "batch": 100, "setup_s": 3.0 if ed else 0.0,
                "pass_s": 2.0 if ed else 0.0, "pass_examples": 400 if ed else 0,
                "peak_bytes": 2**20, "memory": "rss", "device": "cpu", "data": "synthetic",
                "train_size": 4000, "test_size": 1000, "notes": []}
    return measure


def fake_grid(tmp_path):
    path = tmp_path / "fake.toml"
    path.write_text(FAKE_GRID)
    return load_grid(str(path))


def test_the_estimate_is_steps_times_the_timed_step_time_by_hand(tmp_path):
    grid = fake_grid(tmp_path)
    calls = []
    result = preflight(grid.runs, steps=2, batch_cap=None, data_root=None,
                       measure=fake_measure(calls))
    assert len(result.runs) == 2 + 6 * 2 * 2 == 26
    # Timed once each: dense; static and static-long (other epochs and lr only); thin dense at
    # each target (its width); EigenDamage one-pass and iterative at each target (the pruned
    # network); STR (targets and seeds share it)
    assert result.timed == len(calls) == 1 + 1 + 2 + 2 + 2 + 1
    assert sorted(c[0] for c in calls) == ["dense", "eigendamage", "eigendamage",
                                           "eigendamage", "eigendamage", "static", "str",
                                           "thin_dense", "thin_dense"]
    # per run, by hand: 40 steps an epoch (4000 / 100); evaluation a third of a step per example
    def plain(step, epochs):
        return epochs * 40 * step + epochs * 10 * step / 3

    # EigenDamage per round: 1 s fixed + the 2 s pass over 400 examples scaled to 4000 (20 s);
    # mnist1d_cnn has no BatchNorm, so no refresh passes
    expected = {"dense": plain(0.2, 4), "static": plain(0.3, 4), "static-long": plain(0.3, 8),
                "thin_dense": plain(0.1, 4), "eigendamage": plain(0.05, 2) + 1 + 20,
                "ed-iter": plain(0.05, 3 * 1) + 3 * (1 + 20), "str": plain(0.4, 4)}
    assert not any(e.built.has_batchnorm for e in result.runs)
    for e in result.runs:
        assert e.seconds == pytest.approx(expected[e.built.run.entry]), e.built.run.entry
    # STR calibrates: one cell (seeds and targets share trials), 2 targets, at most 4 trials
    # each with the first shared: 1 + 2 x 3 = 7 full-recipe trials
    (trial,) = result.trials
    assert (trial.targets, trial.trials) == (2, 7)
    assert trial.seconds == pytest.approx(7 * plain(0.4, 4))
    runs_s = sum(expected[r.entry] for r in grid.runs)
    assert result.seconds == pytest.approx(runs_s + 7 * plain(0.4, 4))
    lines = format_report(result, "fake")
    assert f"  static-long: 4 runs, {4 * plain(0.3, 8) / 3600:.2f} device-hours" in lines
    assert (f"  str weight-decay calibration (mnist1d_cnn mnist1d, targets calibrating: 2): 1 "
            f"to 7 trials "
            f"of {plain(0.4, 4) / 3600:.2f} h each, counted at 7: "
            f"{7 * plain(0.4, 4) / 3600:.2f} device-hours") in lines
    assert (f"grid fake: 26 runs, 0 failed preflight; estimated {result.seconds / 3600:.2f} "
            "device-hours on cpu") in lines
    assert any(line.startswith("timed: 9 distinct recipes, 2 steps each") for line in lines)


def test_preflight_counts_the_dense_run_eigendamage_reuses_when_the_selection_leaves_it_out(
        tmp_path):
    grid = fake_grid(tmp_path)
    calls = []
    runs = select(grid, parse_only("method=eigendamage"))
    result = preflight(runs, steps=1, batch_cap=None, data_root=None,
                       measure=fake_measure(calls))
    added = [e for e in result.runs if e.added]
    assert [(e.built.run.entry, e.built.run.config.seed) for e in added] == [("dense", 0),
                                                                            ("dense", 1)]
    assert {e.built.run.run_id for e in added} == \
        {r.run_id for r in grid.runs if r.entry == "dense"}
    # --only method=eigendamage keeps both entries of the method (one-pass and iterative)
    assert sorted({e.built.run.entry for e in result.runs if not e.added}) == \
        ["ed-iter", "eigendamage"]
    assert result.seconds == pytest.approx(
        4 * (2 * 40 * 0.05 + 2 * 10 * 0.05 / 3 + 21) + 4 * (3 * 40 * 0.05 + 3 * 10 * 0.05 / 3
                                                            + 3 * 21)
        + 2 * (4 * 40 * 0.2 + 4 * 10 * 0.2 / 3))
    lines = format_report(result, "fake")
    reused = [line for line in lines[1:len(result.runs) + 1] if "dense (reused)" in line]
    assert [line.split()[0] for line in reused] == [e.built.run.run_id for e in added]
    assert "  dense (reused): 2 runs, " + f"{2 * (4 * 40 * 0.2 + 4 * 10 * 0.2 / 3) / 3600:.2f}" \
        " device-hours" in lines
    assert any(line.startswith("grid fake: 8 runs + 2 they reuse, 0 failed") for line in lines)


SCORING_GRID = textwrap.dedent("""\
    name = "scoring"
    [axes]
    models = ["mnist1d_cnn"]
    datasets = ["mnist1d"]
    methods = ["grasp", "grasp-more", "snip", "snip-4", "static"]
    sparsities = [0.9]
    seeds = [0]
    [train]
    epochs = 2
    batch_size = 100
    optimizer = "sgd"
    lr = 0.1
    [method.grasp]
    samples_per_class = 2
    num_iters = 3
    [method.grasp-more]
    method = "grasp"
    samples_per_class = 5
    num_iters = 2
    [method.snip-4]
    method = "snip"
    num_batches = 4
    """)


def test_snip_and_grasp_scoring_is_timed_at_one_repeat_and_multiplied_per_run(tmp_path):
    path = tmp_path / "scoring.toml"
    path.write_text(SCORING_GRID)
    calls = []

    def measure(config, steps, batch_cap, data_root):
        hp = config.method.hparams
        calls.append((config.method.name, {k: getattr(hp, k) for k in
                                           ("samples_per_class", "num_iters", "num_batches",
                                            "batch_size") if hasattr(hp, k)}))
        return {"step_s": 0.2, "batch": 100, "peak_bytes": 2**20, "memory": "rss",
                "device": "cpu", "data": "synthetic", "train_size": 4000, "test_size": 1000,
                "setup_s": {"grasp": 7.0, "snip": 2.0, "static": 0.5}[config.method.name],
                "pass_s": 0.0, "pass_examples": 0, "notes": []}

    result = preflight(load_grid(str(path)).runs, steps=1, batch_cap=None, data_root=None,
                       measure=measure)
    # GraSP's entries with the same examples per class share one timing at num_iters = 1
    # (samples_per_class is kept: whether the data has that many of every class must be
    # found out); SNIP's two at num_batches = 1 (its batch size is the scoring batch: kept)
    assert sorted(calls, key=str) == [
        ("grasp", {"samples_per_class": 2, "num_iters": 1}),
        ("grasp", {"samples_per_class": 5, "num_iters": 1}),
        ("snip", {"batch_size": 100, "num_batches": 1}), ("static", {})]
    plain = 2 * 40 * 0.2 + 2 * 10 * 0.2 / 3
    setup = {"grasp": 7.0 * 3, "grasp-more": 7.0 * 2, "snip": 2.0, "snip-4": 2.0 * 4,
             "static": 0.5}
    for e in result.runs:
        assert e.parts()["setup"] == pytest.approx(setup[e.built.run.entry])
        assert e.seconds == pytest.approx(plain + setup[e.built.run.entry])
    lines = format_report(result, "scoring")
    assert ("note: SNIP/GraSP scoring timed with num_batches=1, num_iters=1 and multiplied "
            "by each run's count (grasp x2, grasp x3, snip x4): an upper bound") in lines


def test_preflight_reports_a_run_that_cannot_train_and_exits_1(tmp_path, capsys):
    # GraSP needs 10 examples of every class; 30 MNIST-1D examples cannot give them.
    path = tmp_path / "bad.toml"
    path.write_text(textwrap.dedent("""\
        name = "bad"
        [axes]
        models = ["mnist1d_mlp"]
        datasets = ["mnist1d"]
        methods = ["grasp"]
        sparsities = [0.9]
        seeds = [0]
        [data]
        train_subset = 30
        [train]
        batch_size = 10
        """))
    root = tmp_path / "root"
    assert main(["run", str(path), "--preflight", "--preflight-steps", "1",
                 "--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert "FAILED: ValueError: GraSP needs 10 examples of every class" in out
    assert "grid bad: 1 runs, 1 failed preflight" in out
    assert not root.exists()


def test_the_data_shape_follows_train_subset_as_the_loaders_do():
    from bench.config import DataConfig, RunConfig

    def shape(name, subset):
        return data_shape(RunConfig(data=DataConfig(name=name, train_subset=subset)))

    # the synthetic set is generated at the subset's size (512 without one); files are cut
    assert shape("synthetic", 0).train_size == 512
    assert shape("synthetic", 2000).train_size == 2000
    assert shape("cifar10", 2000).train_size == 2000
    assert shape("cifar10", 0).train_size == 50_000
    assert (shape("tinyimagenet", 10**6).train_size, shape("tinyimagenet", 0).test_size) == \
        (100_000, 10_000)


ONE_RUN = textwrap.dedent("""\
    name = "one"
    [axes]
    models = ["{model}"]
    datasets = ["{dataset}"]
    methods = ["dense"]
    sparsities = [0.9]
    seeds = [0]
    [train]
    batch_size = 4
    device = "{device}"
    """)


@pytest.mark.parametrize("model,dataset,device,expected", [
    ("resnet8", "cifar10", "cuda:7", 'train.device = "cuda:7": '),
    ("mnist1d_cnn", "cifar10", "cpu", "model mnist1d_cnn does not take cifar10's examples"),
])
def test_preflight_makes_the_checks_run_makes_before_timing(model, dataset, device, expected,
                                                            tmp_path, capsys):
    """It timed first and reported a device or a model/data mismatch as a failed run
    (RuntimeError from the depths of torch, exit 1) where run and --dry-run say one line."""
    path = tmp_path / "one.toml"
    path.write_text(ONE_RUN.format(model=model, dataset=dataset, device=device))
    args = ["run", str(path), "--root", str(tmp_path / "root"), "--data-root",
            str(tmp_path / "no-data")]
    assert main([*args, "--preflight", "--preflight-steps", "1"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"sparsebench: error: {expected}")
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "root").exists()
    # run says the same line, from the same check (bench.environment.check_runs), once the
    # data is found; here it is absent, which preflight alone accepts
    assert main(args) == 2
    assert capsys.readouterr().err.startswith("sparsebench: error: cifar10 not found")


def test_preflight_times_absent_data_on_synthetic_and_fails_unreadable_data(tmp_path, capsys):
    """Absent MNIST: synthetic data of its shape. Present but unreadable (files that are not
    IDX): the run fails preflight with the loader's reason; before, any loader error meant
    synthetic data, so a damaged dataset passed preflight."""
    from tests.test_paper_grids import placeholder_data

    path = tmp_path / "one.toml"
    path.write_text(ONE_RUN.format(model="lenet300_100", dataset="mnist", device="cpu"))
    args = ["run", str(path), "--root", str(tmp_path / "root"), "--preflight",
            "--preflight-steps", "1", "--data-root"]
    assert main([*args, str(tmp_path / "no-data")]) == 0
    out = capsys.readouterr().out
    assert "synthetic cpu" in out.splitlines()[1]
    data = placeholder_data(tmp_path / "data")  # every MNIST file one byte long
    assert main([*args, str(data)]) == 1
    out = capsys.readouterr().out
    assert "FAILED: UserError: " in out.splitlines()[1]
    assert "is not a readable IDX file" in out.splitlines()[1] or \
        "is not an IDX file" in out.splitlines()[1]
    assert "grid one: 1 runs, 1 failed preflight; estimated 0.00 device-hours on -" in out
    assert "note: peak MB is" not in out  # no run was timed: no dangling note
    assert not (tmp_path / "root").exists()


def test_quiet_preflight_prints_the_summary_only(tmp_path, capsys):
    path = tmp_path / "one.toml"
    path.write_text(ONE_RUN.format(model="lenet300_100", dataset="mnist", device="cpu"))
    args = ["run", str(path), "--root", str(tmp_path / "root"), "--preflight",
            "--preflight-steps", "1", "--data-root", str(tmp_path / "no-data")]
    assert main(args) == 0
    loud_out, loud_err = capsys.readouterr()
    assert main(["-q", *args]) == 0
    out, err = capsys.readouterr()
    assert loud_err.startswith("timing 1/1: lenet300_100 mnist dense") and err == ""
    assert out.splitlines()[0].startswith("  dense: 1 runs, ")
    # the same summary lines (their hours differ by the timing's noise)
    assert [line.split(":")[0] for line in out.splitlines()] == \
        [line.split(":")[0] for line in loud_out.splitlines()[2:]]
    assert loud_out.splitlines()[0].startswith("run ")


def test_ctrl_c_in_preflight_says_there_is_nothing_to_resume(tmp_path, capsys, monkeypatch):
    from bench import preflight as pf

    def interrupted(*_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(pf, "measure_in_subprocess", interrupted)
    path = tmp_path / "one.toml"
    path.write_text(ONE_RUN.format(model="lenet300_100", dataset="mnist", device="cpu"))
    assert main(["run", str(path), "--root", str(tmp_path / "root"), "--preflight",
                 "--data-root", str(tmp_path / "no-data")]) == 130
    out, err = capsys.readouterr()
    assert err.splitlines()[-1] == ("sparsebench: interrupted; preflight writes nothing, so "
                                    "there is nothing to resume")
    assert out == "" and not (tmp_path / "root").exists()


def test_a_long_timing_cycles_through_a_bounded_synthetic_set(tmp_path, monkeypatch):
    """--preflight-steps 100000 built 100,002 batches of synthetic data at once (31 GB for
    LeNet-300-100) and failed the run on memory; the set is at most 8 batches (or what the
    scoring reads), and the steps are timed across its epochs."""
    from bench import preflight as pf
    from bench.preflight import synthetic_size

    assert synthetic_size(100, 3, 0) == 500 and synthetic_size(100, 100_000, 0) == 800
    assert synthetic_size(2, 1, 2000) == 2000  # GraSP: 10 per class of 200 classes
    sizes = []
    real = pf.synthetic_bundle
    monkeypatch.setattr(pf, "synthetic_bundle", lambda shape, n: sizes.append(n) or real(
        shape, n))
    path = tmp_path / "one.toml"
    path.write_text(ONE_RUN.format(model="lenet300_100", dataset="mnist", device="cpu"))
    (run,) = load_grid(str(path)).runs
    t = measure(run.config, 30, None, tmp_path / "no-data")  # 30 steps of batch 4: 4 epochs
    assert sizes == [32] and t["data"] == "synthetic" and t["step_s"] > 0


def test_bad_preflight_flags_are_user_errors(capsys):
    assert main(["run", "smoke", "--preflight", "--preflight-steps", "0"]) == 2
    assert capsys.readouterr().err.strip() == \
        "sparsebench: error: --preflight-steps 0 must be a positive integer"


# --- every paper grid: a selection of its cheapest runs, timed for real -----------------------

# grid -> (--only selection, its runs, its distinct recipes): the cheapest model of each grid
# family on each of its datasets, one seed, one target, with methods whose setup is cheap
# (SNIP's and GraSP's scoring and EigenDamage's K-FAC pass are timed in the grids above and in
# the SNIP grid here; on the loaded development machine GraSP's took 2 minutes).
PAPER_SELECTIONS = {
    "snip_lenet300_100": ("seed=0", 3, 2),
    "snip_lenet5_caffe": ("seed=0", 3, 2),
    # + the dense run its GMP (DSR's compressed sparse) starts from
    "dsr_wrn28_2": ("seed=0,sparsity=0.9", 6, 7),
    "str_mobilenet_v1": ("sparsity=0.8901,method=str", 1, 1),
    "grasp_resnet32": ("dataset=cifar100,seed=0,sparsity=0.98,method=static", 1, 1),
    "grasp_vgg19": ("dataset=cifar10,seed=0,method=dense", 1, 1),
    "grasp_tinyimagenet": ("model=resnet32_grasp,seed=0,sparsity=0.9,method=static", 1, 1),
    "eigendamage_resnet32": ("dataset=cifar100,seed=0,method=dense", 1, 1),
    "eigendamage_vgg19": ("dataset=cifar100,seed=0,method=dense", 1, 1),
}
# The ResNet-50 / ImageNet grids' methods are timed above on their family's cheapest model
# (WRN-28-2, MobileNetV1): one ResNet-50 took 18 s to build and count and 12 s a step at batch 2
# on the loaded 2-core development machine. README's table comes from running them whole.
SAME_FAMILY = {"dsr_resnet50": "dsr_wrn28_2", "str_resnet50": "str_mobilenet_v1"}


def test_the_selections_cover_every_paper_grid():
    from bench.grid import builtin_grids

    assert set(PAPER_SELECTIONS) | set(SAME_FAMILY) == set(builtin_grids()) - {"smoke"}
    # every method of the ResNet-50 grids is timed in a selection below
    timed = {r.entry for name in ("dsr_wrn28_2", "str_mobilenet_v1")
             for r in select(load_grid(name), parse_only(PAPER_SELECTIONS[name][0]))}
    for big in SAME_FAMILY:
        assert {r.entry for r in load_grid(big).runs} - {"dense"} <= timed, big


@pytest.mark.parametrize("name", sorted(PAPER_SELECTIONS))
def test_preflight_times_each_paper_grid_on_cpu_with_synthetic_data(name, tmp_path):
    only, n_runs, n_recipes = PAPER_SELECTIONS[name]
    runs = select(load_grid(name), parse_only(only))
    assert len(runs) == n_runs
    result = preflight(runs, steps=1, batch_cap=2, data_root=tmp_path / "no-data",
                       measure=measure)
    assert result.timed == n_recipes
    for e in result.runs:
        assert e.error is None, e.error
        t = e.timing
        shape = data_shape(e.built.run.config)
        assert (t["data"], t["batch"], t["train_size"], t["test_size"]) == \
            ("synthetic", 2, shape.train_size, shape.test_size)
        assert t["step_s"] > 0 and math.isfinite(e.seconds)
        assert e.phases and sum(n for _, n in e.phases) >= 1
    lines = format_report(result, name)
    assert f"grid {name}: {len(runs)} runs" in lines[len(result.runs) + len(
        {e.built.run.entry + (' (reused)' if e.added else '') for e in result.runs}) + 1]
