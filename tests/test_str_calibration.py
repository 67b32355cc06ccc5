"""STR's calibrated result is a function of its config (issue 12): the same runs give
bit-identical results in either order and when two processes run them at once, and a stop
request during the calibration's trial trainings is acted on and resumed exactly."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from bench import checkpoint, store
from bench.config import MethodConfig, to_dict
from bench.run import run_folder, run_one
from bench.train import Interrupted
from bench.trial import TRIALS
from methods.str_method import STRHparams
from tests.helpers import assert_identical, final_weights, tiny_config

# Searches that converge in a few one-epoch trials on the tiny config (6 and 7 evaluations,
# sharing the bracket's two ends).
HP = STRHparams(s_init=-5.0, calibration_low=1e-2, calibration_high=0.1,
                calibration_max_runs=8, calibration_rel_tol=0.25)
TARGETS = (0.5, 0.8)


def str_config(target: float):
    config = tiny_config("str", target, epochs=1, optimizer="sgd", lr=0.1)
    return replace(config, method=MethodConfig("str", HP))


def comparable(result: dict) -> dict:
    """The result without what measures the machine rather than the run."""
    return {k: v for k, v in result.items() if k not in ("wall_time_s",)}


def trial_results(root: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text())
            for p in sorted((root / TRIALS).glob("*/result.json"))}


@pytest.fixture(scope="module")
def in_order(tmp_path_factory):
    """Both targets, the lower first, in one root; the higher first in another."""
    data_root = tmp_path_factory.getbasetemp() / "data"
    out = {}
    for name, order in (("up", TARGETS), ("down", TARGETS[::-1])):
        root = tmp_path_factory.mktemp(name)
        out[name] = (root, {t: run_one(str_config(t), root, data_root) for t in order})
    return data_root, out


def test_either_order_gives_bit_identical_runs(in_order):
    _, runs = in_order
    (up_root, up), (down_root, down) = runs["up"], runs["down"]
    for target in TARGETS:
        assert up[target]["status"] == "ok", up[target].get("error")
        assert comparable(up[target]) == comparable(down[target])
        config = str_config(target)
        assert_identical(final_weights(up_root, config), final_weights(down_root, config))
    # The two targets really searched differently, and converged, sharing the trials where
    # their paths met (the bracket's ends, `calibration_high` and `calibration_low`).
    cal = {t: up[t]["method_summary"]["calibration"] for t in TARGETS}
    assert all(c["converged"] for c in cal.values())
    assert cal[0.5]["weight_decay"] < cal[0.8]["weight_decay"]
    shared = {w for w, _ in cal[0.5]["evaluations"]} & {w for w, _ in cal[0.8]["evaluations"]}
    assert {HP.calibration_low, HP.calibration_high} <= shared
    # Each distinct evaluation was trained once, whatever the order: the same trials on disk.
    distinct = {w for t in TARGETS for w, _ in cal[t]["evaluations"]}
    assert len(trial_results(up_root)) == len(distinct)
    assert trial_results(up_root) == trial_results(down_root)


def test_two_processes_at_once_give_the_same_runs(in_order, tmp_path):
    data_root, runs = in_order
    up_root, up = runs["up"]
    root = tmp_path / "concurrent"
    procs = []
    for target in TARGETS:
        script = (
            "import json, torch; torch.set_num_threads(1)\n"
            "from pathlib import Path\n"
            "from bench.config import from_dict\n"
            "from bench.run import run_one\n"
            "from methods.str_method import STRHparams\n"
            f"cfg = from_dict(json.loads({json.dumps(json.dumps(to_dict(str_config(target))))}),"
            " STRHparams)\n"
            f"run_one(cfg, Path({str(root)!r}), Path({str(data_root)!r}))\n"
        )
        procs.append(subprocess.Popen([sys.executable, "-c", script],
                                      cwd=Path(__file__).parents[1]))
    assert [p.wait(timeout=600) for p in procs] == [0, 0]
    for target in TARGETS:
        config = str_config(target)
        result = store.read_result(run_folder(root, config))
        assert comparable(result) == comparable(up[target])
        assert_identical(final_weights(root, config), final_weights(up_root, config))
    assert trial_results(root) == trial_results(up_root)


def test_a_stop_during_calibration_checkpoints_the_trial_and_resumes_exactly(in_order,
                                                                            tmp_path):
    data_root, runs = in_order
    up_root, up = runs["up"]
    config = str_config(0.8)
    calls = iter(range(10_000))
    with pytest.raises(Interrupted, match="stopped at step 5"):
        run_one(config, tmp_path, data_root, should_stop=lambda: next(calls) == 4)
    # The stop reached the first trial (the bracket's upper end) at its fifth step: it
    # checkpointed there; the run itself had not started training.
    (trial,) = (tmp_path / TRIALS).iterdir()
    state = checkpoint.load(trial / store.CHECKPOINT)
    assert (state["step"], state["epoch"], state["batch"]) == (5, 0, 5)
    assert not (trial / store.RESULT).exists()
    folder = run_folder(tmp_path, config)
    assert not (folder / store.CHECKPOINT).exists() and not (folder / store.RESULT).exists()
    result = run_one(config, tmp_path, data_root)
    assert comparable(result) == comparable(up[0.8])
    assert_identical(final_weights(tmp_path, config), final_weights(up_root, config))
