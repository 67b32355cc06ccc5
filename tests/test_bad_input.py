"""Bad input through the command line: each case prints exactly one line on stderr, naming what
is wrong (and where, for a grid: file:line of the offending key) and what is valid, exits 2,
and writes nothing (the whole temporary folder, root included, is unchanged).

Most cases call ``bench.cli.main`` in this process (a fresh interpreter costs seconds of torch
import); a few run the real ``python -m bench.cli`` to cover the process boundary.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bench.cli import main
from bench.grid import builtin_grids, load_grid
from bench.launch import SLURM_KEYS

GRID = textwrap.dedent("""\
    name = "bad"
    [axes]
    models = ["mnist1d_mlp"]
    datasets = ["mnist1d"]
    methods = ["dense", "static", "gmp", "snip", "grasp", "deepr", "str"]
    sparsities = [0.5, 0.9]
    seeds = [0]

    [train]
    epochs = 1
    lr = 0.1
    optimizer = "sgd"

    [data]
    train_subset = 300
    """)
# Line of `epochs = 1`; keys appended to [train] land on the lines after it.
TRAIN_LINE = 10
END = len(GRID.splitlines())  # a table appended to GRID starts on line END + 1


def train(key_value: str) -> str:
    return GRID.replace("epochs = 1\n", f"epochs = 1\n{key_value}\n")


def table(text: str) -> str:
    return GRID + text


# (id, grid text or None, extra args, expected line on stderr after "sparsebench: error: ";
#  "{grid}" stands for the grid's path).
GRID_CASES = [
    ("epochs-bool", GRID.replace("epochs = 1", "epochs = true"), [],
     "{grid}:10: train.epochs = true: expected an integer >= 1"),
    ("epochs-float", GRID.replace("epochs = 1", "epochs = 2.5"), [],
     "{grid}:10: train.epochs = 2.5: expected an integer >= 1"),
    ("weight-decay-string", train('weight_decay = "lots"'), [],
     '{grid}:11: train.weight_decay = "lots": expected a number >= 0'),
    ("lr-negative", GRID.replace("lr = 0.1", "lr = -0.1"), [],
     "{grid}:11: train.lr = -0.1: expected a number > 0"),
    ("lr-zero", GRID.replace("lr = 0.1", "lr = 0"), [],
     "{grid}:11: train.lr = 0: expected a number > 0"),
    ("gamma-negative", train("gamma = -1"), [],
     "{grid}:11: train.gamma = -1: expected a number > 0"),
    ("milestones-strings", train('milestones = ["a"]'), [],
     '{grid}:11: train.milestones = ["a"]: expected a list of integers >= 0'),
    ("momentum-above-one", train("momentum = 1.5"), [],
     "{grid}:11: train.momentum = 1.5: expected a number in [0, 1)"),
    ("optimizer-unknown", GRID.replace('optimizer = "sgd"', 'optimizer = "adamw"'), [],
     '{grid}:12: train.optimizer = "adamw": expected one of "sgd", "adam"'),
    ("schedule-unknown", train('lr_schedule = "linear"'), [],
     '{grid}:11: train.lr_schedule = "linear": expected one of "constant", "step", "cosine"'),
    ("cpu-threads-zero", train("cpu_threads = 0"), [],
     "{grid}:11: train.cpu_threads = 0: expected an integer >= 1"),
    ("device-malformed", train('device = "gpu"'), [],
     '{grid}:11: train.device = "gpu": expected a device: "auto", "cpu", "cuda", "cuda:N" '
     'or "mps"'),
    ("num-samples-too-small", GRID.replace("train_subset = 300", "num_samples = 5"), [],
     "{grid}:15: data.num_samples = 5: expected an integer >= 10"),
    ("layer-policy-unknown", table('[sparsity]\nlayer_policy = "some"\n'), [],
     f'{{grid}}:{END + 2}: sparsity.layer_policy = "some": expected one of "all", '
     '"dense_first", "dense_last", "dense_first_last"'),
    ("gmp-end-fraction", table("[method.gmp]\nend_fraction = 7.5\n"), [],
     f"{{grid}}:{END + 2}: method.gmp.end_fraction = 7.5: expected a number in [0, 1]"),
    ("gmp-begin-after-end", table("[method.gmp]\nbegin_fraction = 0.8\nend_fraction = 0.5\n"),
     [], f"{{grid}}:{END + 3}: method.gmp.end_fraction = 0.5: expected a value above "
     "begin_fraction (0.8)"),
    ("snip-batch-size", table("[method.snip]\nbatch_size = 0\n"), [],
     f"{{grid}}:{END + 2}: method.snip.batch_size = 0: expected an integer >= 1"),
    ("grasp-samples-per-class", table("[method.grasp]\nsamples_per_class = 0\n"), [],
     f"{{grid}}:{END + 2}: method.grasp.samples_per_class = 0: expected an integer >= 1"),
    ("deepr-variant", table('[method.deepr]\nvariant = "fast"\n'), [],
     f'{{grid}}:{END + 2}: method.deepr.variant = "fast": expected one of "paper", "dsr"'),
    ("deepr-variant-vs-distribution",
     table('[method.deepr]\nvariant = "dsr"\nsparsity = { distribution = "learned" }\n'), [],
     f"{{grid}}:{END + 1}: DeepR variant 'dsr' keeps per-layer counts; distribution 'learned' "
     "(the global constraint) needs variant 'paper'"),
    ("str-calibration-bracket", table("[method.str]\ncalibration_high = 1e-7\n"), [],
     f"{{grid}}:{END + 2}: method.str.calibration_high = 1e-07: expected a value above "
     "calibration_low (1e-06, its default)"),
    ("method-override-lr", table("[method.gmp.train]\nlr = 0\n"), [],
     f"{{grid}}:{END + 2}: method.gmp.train.lr = 0: expected a number > 0"),
    ("sparsity-percent", GRID.replace("[0.5, 0.9]", "[90]"), [],
     "{grid}:6: sparsity 90 is outside [0, 1): use e.g. 0.9 for 90% zeros"),
    ("method-table-not-a-table", GRID.replace("[axes]", "method = { gmp = 5 }\n[axes]"), [],
     "{grid}:2: method.gmp = 5: expected a table of gmp's settings ([method.gmp] with its "
     "hyperparameters and train/data/sparsity/model overrides)"),
    ("dotted-variant-name",
     GRID.replace('"str"]', '"str", "gmp-lr0.05"]')
     + '[method.gmp-lr0.05]\nmethod = "gmp"\ntrain = { lr = 0.05 }\n', [],
     f"{{grid}}:{END + 1}: [method.gmp-lr0.05] is read by TOML as table '05' inside "
     "[method.gmp-lr0] (a dot nests tables), so 'gmp-lr0.05' of axes.methods has no table; "
     'quote the name: [method."gmp-lr0.05"]'),
    ("table-for-no-method", table("[method.snipp]\nbatch_size = 10\n"), [],
     f"{{grid}}:{END + 1}: [method.snipp] configures no entry of axes.methods (dense, static, "
     "gmp, snip, grasp, deepr, str): add 'snipp' there or remove the table"),
    # Found by a fresh-user pass: each was accepted (or silently ignored) before.
    ("lr-inf", GRID.replace("lr = 0.1", "lr = inf"), [],
     "{grid}:11: train.lr = inf: expected a finite number > 0"),
    ("weight-decay-nan", train("weight_decay = nan"), [],
     "{grid}:11: train.weight_decay = nan: expected a finite number >= 0"),
    ("gmp-end-fraction-minus-inf", table("[method.gmp]\nend_fraction = -inf\n"), [],
     f"{{grid}}:{END + 2}: method.gmp.end_fraction = -inf: expected a finite number in [0, 1]"),
    ("seeds-repeated", GRID.replace("seeds = [0]", "seeds = [0, 1, 0]"), [],
     "{grid}:7: axes.seeds lists 0 twice; give each value once"),
    ("methods-repeated", GRID.replace('"str"]', '"str", "gmp"]'), [],
     '{grid}:5: axes.methods lists "gmp" twice; give each value once'),
    ("sparsities-repeated", GRID.replace("[0.5, 0.9]", "[0.5, 0.9, 0.50]"), [],
     "{grid}:6: axes.sparsities lists 0.5 twice; give each value once"),
    ("name-not-a-string", GRID.replace('name = "bad"', "name = 5"), [],
     "{grid}:1: name = 5: expected a non-empty string"),
    ("description-not-a-string", GRID.replace('name = "bad"', 'name = "bad"\ndescription = 5'),
     [], "{grid}:2: description = 5: expected a string"),
    ("data-name", GRID.replace("train_subset = 300", 'name = "cifar10"'), [],
     '{grid}:15: data.name = "cifar10": the dataset of every run comes from axes.datasets; '
     "remove the key (settings for one dataset go in [by_dataset.NAME])"),
    ("method-model-name", table('[method.gmp.model]\nname = "resnet8"\n'), [],
     f'{{grid}}:{END + 2}: method.gmp.model.name = "resnet8": the model of every run comes '
     "from axes.models; remove the key (settings for one model go in [by_model.NAME])"),
    ("registered-method-redefined", table('[method.gmp]\nmethod = "static"\n'), [],
     f'{{grid}}:{END + 2}: method.gmp.method = "static": \'gmp\' is a registered method, so '
     "its table cannot make it static; a variant of static needs a name of its own, e.g. "
     '[method.static-gmp] with method = "static"'),
    ("variant-identical-to-its-method",
     GRID.replace('"str"]', '"str", "gmp2"]') + '[method.gmp2]\nmethod = "gmp"\n', [],
     f"{{grid}}:{END + 1}: 'gmp2' of axes.methods resolves to the same runs as 'gmp' (e.g. "
     "mnist1d_mlp mnist1d s=0.5 seed=0): no setting differs; change one or remove it"),
    ("by-sparsity-bare-word", table("[method.gmp.by_sparsity.abc]\nend_fraction = 0.5\n"), [],
     f'{{grid}}:{END + 1}: [method.gmp.by_sparsity."abc"]: not a sparsity of the grid; valid: '
     "0.5, 0.9"),
    ("byte-order-mark", "\ufeff" + GRID, [],
     "{grid}:1: the grid file starts with a byte-order mark (U+FEFF); save it as UTF-8 "
     "without BOM, as TOML requires"),
    ("only-sparsity-nan", GRID, ["--only", "sparsity=nan"],
     "--only sparsity=nan is not a finite number (a fraction of zeros, e.g. 0.9)"),
    ("preflight-and-dry-run", GRID, ["--preflight", "--dry-run"],
     "--preflight and --dry-run are two different checks; give one"),
    ("preflight-steps-without-preflight", GRID, ["--dry-run", "--preflight-steps", "1"],
     "--preflight-steps only applies to --preflight"),
    ("preflight-slurm-flag", GRID, ["--preflight", "--partition", "gpu"],
     "--partition only applies to --executor slurm"),
    ("preflight-executor-slurm", GRID, ["--preflight", "--executor", "slurm"],
     "--executor slurm does not apply to --preflight: it trains no run and times on this "
     "machine"),
    ("preflight-jobs", GRID, ["--preflight", "--jobs", "2"],
     "--jobs does not apply to --preflight: it trains no run and times on this machine"),
    ("preflight-out", GRID, ["--preflight", "--out", "report"],
     "--out does not apply to --preflight: it trains no run and times on this machine"),
    ("seed-beyond-64-bits", GRID.replace("seeds = [0]", "seeds = [18446744073709551616]"), [],
     "{grid}:7: seed 18446744073709551616 must be an integer in [0, 4294967295]"),
    ("slurm-table-typo-locally", table('[slurm]\npartion = "gpu"\n'), [],
     f"{{grid}}:{END + 2}: unknown key 'partion' in [slurm]; valid: "
     f"{', '.join(sorted(SLURM_KEYS))}"),
    ("tensorboard-folder-is-a-file", GRID, ["--tensorboard", "{grid}"],
     "--tensorboard {grid} is a file, not a folder"),
    ("malformed-toml", GRID.replace("[data]", "[data"), [],
     "{grid}:14: malformed grid: Expected ']' at the end of a table declaration "
     "(at line 14, column 6)"),
    ("only-unknown-method", GRID, ["--only", "method=gmpp"],
     "--only method=gmpp matches no run of grid bad; its methods: deepr, dense, gmp, grasp, "
     "snip, static, str"),
    ("only-sparsity-percent", GRID, ["--only", "sparsity=90"],
     "--only sparsity=90 matches no run of grid bad (a fraction of zeros: 0.9 for 90%); its "
     "sparsities: 0, 0.5, 0.9"),
    ("only-repeated-key", GRID, ["--only", "method=gmp,method=snip"],
     "--only names method twice (method=gmp and method=snip); give each key once"),
    ("only-empty-selection", GRID, ["--only", "method=dense,sparsity=0.9"],
     "--only method=dense,sparsity=0.9 selects no run of grid bad: each value occurs, but no "
     "run has them all (methods that ignore the target, such as dense, run at sparsity 0 "
     "only)"),
    ("only-unknown-key", GRID, ["--only", "colour=red"],
     "--only takes key=value pairs separated by commas with keys model, dataset, method, "
     "sparsity, seed; got 'colour=red'"),
    ("jobs-zero", GRID, ["--jobs", "0"], "--jobs 0: expected a number of runs at once >= 1"),
    ("grid-file-missing", None, [], "grid file {grid} does not exist"),
    ("slurm-flag-locally", GRID, ["--partition", "gpu"],
     "--partition only applies to --executor slurm"),
]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def check_one_line(err: str, expected: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0] == f"sparsebench: error: {expected}", lines[0]


@pytest.mark.parametrize(("text", "args", "expected"), [c[1:] for c in GRID_CASES],
                         ids=[c[0] for c in GRID_CASES])
def test_bad_grid_or_flag(tmp_path, capsys, text, args, expected):
    grid = tmp_path / "grid.toml"
    if text is not None:
        grid.write_text(text)
    data = tmp_path / "data"
    data.mkdir()
    before = snapshot(tmp_path)
    code = main(["run", str(grid), "--root", str(tmp_path / "root"), "--data-root", str(data),
                 "--executor", "debug", *[a.format(grid=grid) for a in args]])
    out, err = capsys.readouterr()
    assert code == 2
    check_one_line(err, expected.format(grid=grid))
    assert out == ""
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("executor", ["local", "slurm"])
def test_missing_dataset_is_checked_before_anything_starts(tmp_path, capsys, executor):
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID.replace('["mnist1d"]', '["cifar10"]').replace('"mnist1d_mlp"',
                                                                         '"resnet8"'))
    data = tmp_path / "data"
    data.mkdir()
    before = snapshot(tmp_path)
    # Under SLURM too: the check runs before anything is submitted.
    assert main(["run", str(grid), "--root", str(tmp_path / "root"), "--data-root",
                 str(data), "--executor", executor]) == 2
    out, err = capsys.readouterr()
    check_one_line(err, f"cifar10 not found: looked in {data / 'cifar-10-batches-py'} (no such "
                   f"folder); get it with python -c \"import torchvision; "
                   f"torchvision.datasets.CIFAR10('{data}', download=True)\" (on a machine with "
                   f"network, then copy cifar-10-batches-py/ here), or point --data-root / "
                   f"SPARSEBENCH_DATA at a folder that holds cifar-10-batches-py/")
    assert snapshot(tmp_path) == before


def cuda7_message() -> str:
    """What `device = "cuda:7"` is refused with on this machine."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        build = "a CPU-only torch build" if torch.version.cuda is None else "no CUDA device"
        return f'train.device = "cuda:7": this machine has no CUDA device ({build}); use ' \
            'device = "auto" or "cpu"'
    return (f'train.device = "cuda:7": this machine has {count} CUDA '
            f"device{'s' if count > 1 else ''} (cuda:0 to cuda:{count - 1})")


CIFAR_GRID = GRID.replace('["mnist1d"]', '["cifar10"]').replace('"mnist1d_mlp"', '"resnet8"')
# (id, grid text, extra args, expected line; "{data}"/"{root}" stand for the data root/root).
DRY_RUN_CASES = [
    ("missing-dataset", CIFAR_GRID, [],
     "cifar10 not found: looked in {data}/cifar-10-batches-py (no such folder); get it with "
     "python -c \"import torchvision; torchvision.datasets.CIFAR10('{data}', download=True)\" "
     "(on a machine with network, then copy cifar-10-batches-py/ here), or point --data-root / "
     "SPARSEBENCH_DATA at a folder that holds cifar-10-batches-py/"),
    ("missing-dataset-slurm", CIFAR_GRID, ["--executor", "slurm"],
     "cifar10 not found: looked in {data}/cifar-10-batches-py (no such folder); get it with "
     "python -c \"import torchvision; torchvision.datasets.CIFAR10('{data}', download=True)\" "
     "(on a machine with network, then copy cifar-10-batches-py/ here), or point --data-root / "
     "SPARSEBENCH_DATA at a folder that holds cifar-10-batches-py/"),
    ("num-samples-mnist1d", GRID.replace("train_subset = 300", "num_samples = 12\n"
                                         "train_split = 0.05"), [],
     "mnist1d: num_samples = 12 with train_split = 0.05 leaves an empty train or test set"),
    ("train-subset-beyond-the-set", GRID.replace("train_subset = 300", "train_subset = 4001"),
     [], "data.train_subset = 4001: mnist1d has 4000 training examples; use at most 4000 (0, "
     "the default, means all of them)"),
    ("slurm-table-unknown-key", GRID + "[slurm]\npartion = \"gpu\"\n",
     ["--executor", "slurm"],
     f"{{grid}}:{END + 2}: unknown key 'partion' in [slurm]; valid: "
     f"{', '.join(sorted(SLURM_KEYS))}"),
    ("slurm-signal-delay", GRID + "[slurm]\ntime = 1\nsignal_delay_s = 90\n",
     ["--executor", "slurm"],
     "[slurm] signal_delay_s = 90 must be shorter than the time limit (1 min)"),
    ("root-is-a-file", GRID, ["--root", "{grid}"],
     "output root {grid} is a file, not a folder; pass --root DIR or set SPARSEBENCH_ROOT"),
]
if not torch.cuda.is_available() or torch.cuda.device_count() < 8:
    DRY_RUN_CASES.append(("device-cuda7", train('device = "cuda:7"'), [], cuda7_message()))


@pytest.mark.parametrize(("text", "args", "expected"), [c[1:] for c in DRY_RUN_CASES],
                         ids=[c[0] for c in DRY_RUN_CASES])
def test_dry_run_checks_what_run_checks(tmp_path, capsys, text, args, expected):
    """--dry-run validates everything run would before training (issue 12): the data and
    device of every run, the root, the [slurm] table; one line, exit 2, nothing written."""
    grid = tmp_path / "grid.toml"
    grid.write_text(text)
    data = tmp_path / "data"
    data.mkdir()
    before = snapshot(tmp_path)
    fill = {"grid": grid, "data": data, "root": tmp_path / "root"}
    args = [a.format(**fill) for a in args]
    root = [] if "--root" in args else ["--root", str(tmp_path / "root")]
    code = main(["run", str(grid), *root, "--data-root", str(data), "--dry-run", *args])
    out, err = capsys.readouterr()
    assert code == 2
    check_one_line(err, expected.format(**fill))
    assert out == ""
    assert snapshot(tmp_path) == before


def test_unreadable_mnist1d_cache_folder_is_checked(tmp_path, capsys):
    # The data root is a file: the MNIST-1D cache cannot be written under it.
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID)
    data = tmp_path / "data"
    data.write_text("not a folder")
    before = snapshot(tmp_path)
    assert main(["run", str(grid), "--root", str(tmp_path / "root"), "--data-root",
                 str(data)]) == 2
    check_one_line(capsys.readouterr().err,
                   f"cannot write the MNIST-1D cache under {data}: {data} is not a writable "
                   "folder; point --data-root / SPARSEBENCH_DATA at one")
    assert snapshot(tmp_path) == before


def test_root_that_is_a_file(tmp_path, capsys):
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID)
    root = tmp_path / "root"
    root.write_text("oops")
    before = snapshot(tmp_path)
    assert main(["run", str(grid), "--root", str(root)]) == 2
    check_one_line(capsys.readouterr().err, f"output root {root} is a file, not a folder; pass "
                   "--root DIR or set SPARSEBENCH_ROOT")
    assert snapshot(tmp_path) == before


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(Path(__file__).parents[1]), "PATH": os.environ.get("PATH", "")}
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120, env=env)


def test_subprocess_cases(tmp_path):
    """Through a real interpreter: a directory as grid, a grid that is not UTF-8, ROOT/runs a
    regular file, a CUDA device this machine lacks, and an argparse error."""
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID)
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(GRID.replace('name = "bad"', 'name = "caf\u00e9"').encode("latin-1"))
    cuda7 = tmp_path / "cuda7.toml"
    cuda7.write_text(train('device = "cuda:7"'))
    root_with_file = tmp_path / "filled"
    root_with_file.mkdir()
    (root_with_file / "runs").write_text("a file where the run folders go")
    root = str(tmp_path / "root")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cuda_message = ('train.device = "cuda:7": this machine has no CUDA device ('
                    + ("a CPU-only torch build" if torch.version.cuda is None
                       else "no CUDA device") + '); use device = "auto" or "cpu"'
                    if count == 0 else
                    f'train.device = "cuda:7": this machine has {count} CUDA '
                    f"device{'s' if count > 1 else ''} (cuda:0 to cuda:{count - 1})")
    cases = [
        (["run", str(tmp_path), "--root", root],
         f"grid {tmp_path} is a directory; pass a grid TOML file or the name of a built-in "
         f"grid ({', '.join(sorted(builtin_grids()))})"),
        (["run", str(latin1), "--root", root],
         f"{latin1}:1: the grid file is not UTF-8 text (byte 0xe9); save it as UTF-8, as TOML "
         "requires"),
        (["run", str(grid), "--root", str(root_with_file)],
         f"{root_with_file / 'runs'} is a file, but {root_with_file} keeps its runs there in a "
         "folder: move the file away"),
    ]
    if count < 8:
        cases.append((["run", str(cuda7), "--root", root], cuda_message))
    before = snapshot(tmp_path)
    for args, expected in cases:
        proc = run_cli(*args, cwd=tmp_path)
        assert proc.returncode == 2, (args, proc.stderr)
        check_one_line(proc.stderr, expected)
        assert proc.stdout == ""
        assert snapshot(tmp_path) == before, args
    proc = run_cli("run", str(grid), "--jobs", "x", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["sparsebench run: error: argument --jobs: invalid int "
                                        "value: 'x' (see sparsebench run --help)"]


# `check --only` that selects no cell names the key and lists the values the baseline and the
# root have, as `run --only` does for a grid (synthetic results of tests/test_check.py: dense,
# gmp, static, set, str; sparsities 0, 0.5, 0.9; seeds 0-2).
CHECK_ONLY_CASES = [
    ("check-only-unknown-method", "method=gmpp",
     "--only method=gmpp matches no cell of {file} or {root}; their methods: dense, gmp, set, "
     "static, str"),
    ("check-only-sparsity-percent", "sparsity=90",
     "--only sparsity=90 matches no cell of {file} or {root} (a fraction of zeros: 0.9 for "
     "90%); their sparsities: 0, 0.5, 0.9"),
    ("check-only-seed", "seed=7",
     "--only seed=7 matches no cell of {file} or {root}; their seeds: 0, 1, 2"),
    ("check-only-no-cell-has-all", "method=set,sparsity=0.9",
     "--only method=set,sparsity=0.9 matches no cell of {file} or {root}: each value occurs, "
     "but no cell has them all"),
]


@pytest.mark.parametrize(("spec", "expected"), [c[1:] for c in CHECK_ONLY_CASES],
                         ids=[c[0] for c in CHECK_ONLY_CASES])
def test_check_only_that_selects_nothing(tmp_path, capsys, spec, expected):
    from tests.test_check import BASE, _root

    root = _root(tmp_path / "root", list(BASE))
    file = tmp_path / "b.json"
    assert main(["check", "--baseline", str(file), "--root", str(root), "--pin"]) == 0
    capsys.readouterr()
    before = snapshot(tmp_path)
    assert main(["check", "--baseline", str(file), "--root", str(root), "--only", spec]) == 2
    out, err = capsys.readouterr()
    check_one_line(err, expected.format(file=file, root=root))
    assert out == ""
    assert snapshot(tmp_path) == before


# report and check with a root that holds results (tests/test_check.py's synthetic runs):
# a bad flag or file is one line, exit 2, and nothing is written, not even the report folder.
REPORT_CHECK_CASES = [
    ("report-published-missing", ["report", "--root", "{root}", "--out", "{tmp}/rep",
                                  "--published", "{tmp}/nope.toml"],
     "cannot read published numbers file {tmp}/nope.toml: No such file or directory"),
    ("report-grid-without-results", ["report", "snip_lenet300_100", "--root", "{root}",
                                     "--out", "{tmp}/rep"],
     "no results for grid snip_lenet300_100 under {root}/runs: run a grid first"),
    ("check-sigmas-nan", ["check", "--baseline", "{tmp}/b.json", "--root", "{root}",
                          "--sigmas", "nan"],
     "--sigmas must be a finite number > 0 and --floor a finite number >= 0, got nan and 0.5"),
    ("check-floor-inf", ["check", "--baseline", "{tmp}/b.json", "--root", "{root}",
                         "--floor", "inf"],
     "--sigmas must be a finite number > 0 and --floor a finite number >= 0, got 3 and inf"),
    ("check-default-std-inf", ["check", "--baseline", "{tmp}/b2.json", "--root", "{root}",
                               "--pin", "--default-std", "inf"],
     "--default-std applies to --pin only and must be a finite number >= 0"),
    ("check-baseline-is-a-folder", ["check", "--baseline", "{root}", "--root", "{root}"],
     "cannot read baseline {root}: Is a directory"),
]


@pytest.mark.parametrize(("args", "expected"), [c[1:] for c in REPORT_CHECK_CASES],
                         ids=[c[0] for c in REPORT_CHECK_CASES])
def test_report_and_check_bad_input_write_nothing(tmp_path, capsys, args, expected):
    from tests.test_check import BASE, _root

    root = _root(tmp_path / "root", list(BASE))
    assert main(["check", "--baseline", str(tmp_path / "b.json"), "--root", str(root),
                 "--pin"]) == 0
    capsys.readouterr()
    before = snapshot(tmp_path)
    fill = {"root": root, "tmp": tmp_path}
    assert main([a.format(**fill) for a in args]) == 2
    out, err = capsys.readouterr()
    check_one_line(err, expected.format(**fill))
    assert out == ""
    assert snapshot(tmp_path) == before


def test_unreachable_slurm_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    """scontrol that cannot find its controller prints several lines and exits 1 (as on a
    machine with SLURM's client but no cluster): one line (its last, the reason), exit 2, and
    neither the root nor its slurm/ folder or submit lock is created."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("scontrol", "squeue", "sbatch"):
        script = bin_dir / tool
        script.write_text("#!/bin/sh\n"
                          f"echo '{tool}: error: resolve_ctls_from_dns_srv: res_nsearch error: "
                          "Unknown host' >&2\n"
                          f"echo '{tool}: fatal: Could not establish a configuration source' >&2\n"
                          "exit 1\n")
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID)
    before = snapshot(tmp_path)
    assert main(["run", str(grid), "--root", str(tmp_path / "root"), "--executor", "slurm"]) == 2
    out, err = capsys.readouterr()
    check_one_line(err, "SLURM is not reachable: scontrol show failed: scontrol: fatal: Could "
                   "not establish a configuration source")
    assert out == ""
    assert snapshot(tmp_path) == before


def test_status_of_a_root_that_is_a_file(tmp_path, capsys):
    """It listed every run as missing, as if the root were empty."""
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID)
    root = tmp_path / "root"
    root.write_text("oops")
    before = snapshot(tmp_path)
    assert main(["status", str(grid), "--root", str(root)]) == 2
    out, err = capsys.readouterr()
    check_one_line(err, f"output root {root} is a file, not a folder; pass --root DIR or set "
                   "SPARSEBENCH_ROOT")
    assert out == ""
    assert snapshot(tmp_path) == before


def test_builtin_grid_named_with_toml_suffix(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "smoke.toml", "--dry-run"]) == 2
    out, err = capsys.readouterr()
    check_one_line(err, "grid file smoke.toml does not exist; the built-in grid is named smoke, "
                   "without .toml")
    assert out == "" and list(tmp_path.iterdir()) == []


def test_show_method_without_a_name(tmp_path, capsys, monkeypatch):
    """It was read as a grid named 'method' and refused as an unknown grid."""
    monkeypatch.chdir(tmp_path)
    assert main(["show", "method"]) == 2
    out, err = capsys.readouterr()
    check_one_line(err, "show method needs a method's name: show method NAME, with NAME one of "
                   "deepr, dense, dsr, eigendamage, gmp, grasp, rigl, set, snip, static, str, "
                   "thin_dense")
    assert out == ""


@pytest.mark.parametrize(("model", "expected"), [
    ("resnet8", "model resnet8 does not take mnist1d's examples (shape (40,)): "),
    ("tv:resnet18", "model tv:resnet18 takes images (channels, height, width); the dataset "
                    "gives examples of shape (40,)"),
])
def test_a_model_that_cannot_take_the_data_is_refused_before_training(tmp_path, capsys, model,
                                                                       expected):
    """Each run used to start and fail on its first batch: resnet8 as a training failure
    (kept until --retry-failed), tv:resnet18 as an error of the environment."""
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID.replace('"mnist1d_mlp"', f'"{model}"'))
    data = tmp_path / "data"
    data.mkdir()
    before = snapshot(tmp_path)
    for extra in (["--dry-run"], []):
        assert main(["run", str(grid), "--root", str(tmp_path / "root"), "--data-root",
                     str(data), *extra]) == 2
        out, err = capsys.readouterr()
        assert out == "" and len(err.splitlines()) == 1
        # After the prefix, torch's own words for the mismatch.
        assert err.startswith(f"sparsebench: error: {expected}"), err
        assert snapshot(tmp_path) == before


def test_every_built_in_grid_passes_the_model_data_check():
    """No false alarm: each (model, dataset) of the paper grids and smoke builds and takes a
    batch on the meta device."""
    from bench.fit import check_model_fits

    pairs = {}
    for name in builtin_grids():
        for run in load_grid(name).runs:
            pairs.setdefault((run.config.model, run.config.data.name), run.config)
    assert {model.name for model, _ in pairs} == {
        "lenet300_100", "lenet5_caffe", "mnist1d_cnn", "mobilenet_v1", "resnet32_eigendamage",
        "resnet32_grasp", "resnet50", "vgg19_grasp", "wrn28_2"}
    for config in pairs.values():
        check_model_fits(config)
