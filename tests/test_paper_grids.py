"""The built-in paper grids (bench/grids): run counts, the recipe each run resolves to, dry runs,
``list grids``, and the published numbers they are shown beside."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import catalog
from bench.cli import main
from bench.config import run_id
from bench.grid import builtin_grids, load_grid
from bench.report import published
from methods import get_method

# name -> run count, by hand: dense once per (model, dataset, seed), every other entry once per
# (model, dataset, sparsity, seed).
COUNTS = {
    "dsr_wrn28_2": 3 + 6 * 5 * 3,           # 7 methods, 5 sparsities, 3 seeds
    "dsr_resnet50": 1 + 6 * 2,              # 7 methods, 2 sparsities, 1 seed
    "str_resnet50": 1 + 3 * 6,              # dense, STR, GMP, DSR at STR's 6 sparsities
    "str_mobilenet_v1": 1 + 2 * 2,
    "snip_lenet300_100": 3 + 2 * 3,
    "snip_lenet5_caffe": 3 + 2 * 3,
    "grasp_vgg19": 2 * 3 + 3 * 2 * 3 * 3,   # 2 datasets, 3 sparsities, 3 seeds
    "grasp_resnet32": 2 * 3 + 3 * 2 * 3 * 3,
    "grasp_tinyimagenet": 2 * 3 + 3 * 2 * 3 * 3,  # 2 models
    "eigendamage_vgg19": 2 * 3 + 2 * 2 * 2 * 3,   # one-pass and iterative, 2 sparsities
    "eigendamage_resnet32": 2 * 3 + 2 * 2 * 2 * 3,
}


def test_every_paper_grid_is_built_in_with_its_run_count():
    assert set(builtin_grids()) == set(COUNTS) | {"smoke"}
    for name, n in COUNTS.items():
        grid = load_grid(name)
        assert len(grid.runs) == n, name
        assert len({r.run_id for r in grid.runs}) == n, name


def placeholder_data(root: Path) -> Path:
    """Stand-ins for every dataset the paper grids use, enough for the checks made before
    anything trains (files present, class folders): a dry run checks the data as run does."""
    from bench.data.cifar import CIFAR10, CIFAR100
    from bench.data.mnist import FILES, raw_folder

    for variant in (CIFAR10, CIFAR100):
        (root / variant.folder).mkdir(parents=True)
        for name in (*variant.train_files, variant.test_file):
            (root / variant.folder / name).write_bytes(b"x")
    for folder in ("imagenet/train/n01440764", "imagenet/val/n01440764",
                   "tiny-imagenet-200/train/n01443537", "tiny-imagenet-200/val/images"):
        (root / folder).mkdir(parents=True)
    (root / "tiny-imagenet-200" / "val" / "val_annotations.txt").write_text("")
    raw_folder(root).mkdir(parents=True)
    for name in FILES.values():
        (raw_folder(root) / name).write_bytes(b"x")
    return root


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_dry_run_lists_each_paper_grid(name, tmp_path, capsys):
    data = placeholder_data(tmp_path / "data")
    assert main(["run", name, "--dry-run", "--root", str(tmp_path / "none"), "--data-root",
                 str(data)]) == 0
    from bench.launch import plan

    lines = capsys.readouterr().out.splitlines()
    # Every run that would train: the grid's, plus any run they reuse that it left out.
    todo = plan(load_grid(name).runs, tmp_path / "none")
    assert lines[-1].startswith(f"{COUNTS[name]} runs in grid {name}")
    assert lines[-1].endswith(f": 0 already done, {len(todo.order)} to train")
    assert {line.split()[0] for line in lines[:-1]} == {r.run_id for r in todo.order}
    assert {r.run_id for r in todo.order} >= {r.run_id for r in load_grid(name).runs}
    assert not (tmp_path / "none").exists()


def test_list_grids_shows_run_counts(capsys):
    assert main(["list", "grids"]) == 0
    lines = capsys.readouterr().out.splitlines()
    counts = {line.split()[0]: int(line.split()[1]) for line in lines}
    assert counts == {**COUNTS, "smoke": 49}  # 12 methods x 4 targets + dense once
    width = max(map(len, counts))
    assert lines[0] == f"{'dsr_resnet50':{width}s}   13 runs  DSR ICML 2019 Tab. 2: ResNet-50 / " \
        "ImageNet, 80/90%: dense, thin dense, static, DeepR, SET, DSR, GMP from dense  " \
        "(1 models x 1 datasets x 7 methods x 2 sparsities x 1 seeds)"
    # list reads the grids statically (bench.catalog); its count is the expansion's
    for name in counts:
        assert catalog.grid_runs(name) == len(load_grid(name).runs), name


def runs_of(name, entry, **where):
    out = [r.config for r in load_grid(name).runs if r.entry == entry
           and all(getattr(r.config.sparsity if k == "target" else
                           r.config.data if k == "dataset" else r.config.model, "target" if k
                           == "target" else "name") == v for k, v in where.items())]
    assert out, (name, entry, where)
    return out


def test_dsr_trains_thin_dense_and_static_twice_as_long():
    for name, base, long in (("dsr_wrn28_2", (200, (60, 120, 160), 0.2),
                              (400, (120, 220, 350), 0.2)),
                             ("dsr_resnet50", (100, (30, 60, 90), 0.1),
                              (200, (60, 120, 180), 0.1))):
        for entry, want in (("dense", base), ("dsr", base), ("set", base), ("gmp", base),
                            ("thin_dense", long), ("static", long)):
            for c in runs_of(name, entry):
                assert (c.train.epochs, c.train.milestones, c.train.gamma) == want, entry
                assert c.train.nesterov and c.train.optimizer == "sgd"
    assert {c.train.weight_decay for c in runs_of("dsr_wrn28_2", "deepr")} == {0.0}
    assert {c.train.weight_decay for c in runs_of("dsr_wrn28_2", "dsr")} == {5e-4}
    assert {c.sparsity.layer_policy for c in runs_of("dsr_wrn28_2", "dsr")} == \
        {"dense_first_last"}
    assert {c.method.hparams.variant for c in runs_of("dsr_resnet50", "set")} == {"dsr"}


def test_dsr_compressed_sparse_prunes_the_grids_dense_run_on_dsrs_schedule():
    from methods.schedules import PruningSchedule

    # Steps per epoch: CIFAR-10 50,000 / 100; ImageNet ceil(1,281,167 / 256).
    # WRN's prune jobs pass --cubic-prune-schedule, ResNet-50's do not (constant fraction).
    for name, spe, lr, gamma, decay in (("dsr_wrn28_2", 500, 0.02, 0.2, "polynomial"),
                                        ("dsr_resnet50", 5005, 0.01, 0.1, "geometric")):
        grid = load_grid(name)
        dense = {r.run_id for r in grid.runs if r.entry == "dense"}
        for c in runs_of(name, "gmp"):
            method = get_method("gmp")(c, c.method.hparams)
            (dep,) = method.dependencies()
            assert run_id(dep) in dense, name
            (phase,) = method.phases()
            t = phase.train
            assert (phase.name, t.epochs, t.lr, t.lr_schedule, t.milestones, t.gamma) == \
                ("prune+finetune", 49, lr, "step", (26, 36), gamma), name
            assert (t.weight_decay, t.nesterov, t.batch_size) == \
                (c.train.weight_decay, True, c.train.batch_size)
            hp = c.method.hparams
            schedule = PruningSchedule.scaled(hp.begin_fraction, hp.end_fraction,
                                              hp.frequency_fraction, 49 * spe)
            # 20 prunes, after epochs 2, 4, ..., 40, from 0 to the target.
            assert schedule.points() == [2 * k * spe for k in range(1, 21)], name
            assert (hp.initial_sparsity, hp.exponent, hp.decay) == (0.0, 3, decay), name


def test_str_takes_lambda_and_s_init_per_target_and_calibrates_the_others():
    (at90,) = runs_of("str_resnet50", "str", target=0.9023)
    assert (at90.method.hparams.weight_decay, at90.method.hparams.s_init) == \
        (2.251757813e-5, -3200.0)
    (at81,) = runs_of("str_resnet50", "str", target=0.8127)
    assert at81.method.hparams.weight_decay is None            # calibrated
    t = at81.train
    assert (t.lr, t.momentum, t.batch_size, t.lr_schedule, t.warmup_epochs, t.label_smoothing,
            t.epochs) == (0.256, 0.875, 256, "cosine", 5, 0.1, 100)
    (mb89,) = runs_of("str_mobilenet_v1", "str", target=0.8901)
    assert (mb89.method.hparams.weight_decay, mb89.method.hparams.s_init) == \
        (3.751757813e-5, -12800.0)


def test_grasp_recipes_per_model_and_dataset():
    for c in runs_of("grasp_resnet32", "grasp", dataset="cifar100"):
        assert (c.method.hparams.samples_per_class, c.method.hparams.num_iters) == (5, 2)
    for c in runs_of("grasp_resnet32", "grasp", dataset="cifar10"):
        assert (c.method.hparams.samples_per_class, c.method.hparams.num_iters) == (10, 1)
    assert {c.train.weight_decay for c in runs_of("grasp_tinyimagenet", "snip",
                                                   model="resnet32_grasp")} == {1e-4}
    assert {c.train.weight_decay for c in runs_of("grasp_tinyimagenet", "snip",
                                                   model="vgg19_grasp")} == {5e-4}
    assert {(c.train.epochs, c.train.milestones) for c in runs_of("grasp_vgg19", "static")} \
        == {(160, (80, 120))}


def test_eigendamage_prunes_a_dense_run_of_its_own_grid():
    for name in ("eigendamage_vgg19", "eigendamage_resnet32"):
        grid = load_grid(name)
        ids = {r.run_id for r in grid.runs}
        for r in grid.runs:
            if r.config.method.name != "eigendamage":
                continue
            method = get_method("eigendamage")(r.config, r.config.method.hparams)
            (dense,) = method.dependencies()
            assert run_id(dense) in ids, (name, r.entry)
            assert r.config.method.hparams.mode == ("iterative" if r.entry.endswith("iterative")
                                                    else "one_pass")


def test_published_numbers_validate_and_sit_beside_a_paper_grid():
    entries = published.load()
    cells = {(c.model.name, c.data.name, r.config.method.name)
             for name in COUNTS for r in load_grid(name).runs for c in [r.config]}
    for e in entries:
        assert (e.model, e.dataset, e.method) in cells, e
    mobilenet = [e for e in entries if e.model == "mobilenet_v1" and e.method == "str"]
    assert [(e.sparsity, e.top1, e.row.split(",")[1].strip()) for e in mobilenet] == \
        [(0.7528, 68.35, "No. 1: 1.04M params"), (0.8901, 62.10, "No. 2: 0.46M params")]


def test_a_published_row_must_be_a_string(tmp_path):
    from bench.errors import UserError

    lines = published.DEFAULT_PATH.read_text().splitlines()
    (last,) = [i for i, line in enumerate(lines)
               if line.startswith('row = "MobileNetV1 table, No. 2')]
    lines[last] = "row = 7"
    path = tmp_path / "p.toml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=rf"^{path}:{last + 1}: published entry "
                       r"\d+: row must be a string$"):
        published.load(path)
