"""kill -9 at every write point of a run, then resume: every one ends bit-identical to the run
that was never interrupted and leaves no temp file, checkpoint or progress file behind (issue
12's 27-kill experiment, kept as a test). tests/kill_driver.py does the killing.

The full sweep (30 points, 60 forked runs: 5 min on the loaded 2-core development machine) is
marked ``kill_sweep``: it runs in CI (``CI`` set) or when asked (``-m kill_sweep``); elsewhere the
suite runs five points, one of each kind of moment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import store
from bench.run import run_folder
from tests.helpers import assert_identical, final_weights
from tests.kill_driver import CONFIG

REPO = Path(__file__).resolve().parents[1]
# One point of each kind, by its number in the reference run (the full sweep below pins the
# whole list): config.json's temp file written, epoch 1's checkpoint temp file written (not yet
# replaced), epoch 2's metrics replaced before its checkpoint, model.pt replaced without a
# result, result.json replaced before the checkpoint is removed.
QUICK = {2: ["temp written", "config.json"], 14: ["temp written", "checkpoint.pt"],
         18: ["replaced", "metrics.jsonl"], 27: ["replaced", "model.pt"],
         30: ["replaced", "result.json"]}


def sweep(tmp_path: Path, data: Path, points: list[int]) -> tuple[list, dict]:
    out = tmp_path / "sweep"
    out.mkdir()
    proc = subprocess.run([sys.executable, "-m", "tests.kill_driver", str(out), str(data),
                           *map(str, points)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = json.loads((out / "points.json").read_text())
    return reference, json.loads((out / "sweep.json").read_text())


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def check(out: Path, reference: list, results: dict) -> None:
    ref_root = out / "reference"
    ref_folder = run_folder(ref_root, CONFIG)
    expected = json.loads((ref_folder / store.RESULT).read_text())
    for key, outcome in results.items():
        where = reference[int(key) - 1]
        assert outcome["killed"] == -9 and outcome["resumed"] == 0, (where, outcome)
        root = out / f"k{key}"
        folder = run_folder(root, CONFIG)
        assert_identical(final_weights(root, CONFIG), final_weights(ref_root, CONFIG))
        result = json.loads((folder / store.RESULT).read_text())
        assert {k: v for k, v in result.items() if k != "wall_time_s"} == \
            {k: v for k, v in expected.items() if k != "wall_time_s"}, where
        for name in (store.CONFIG, store.METRICS, "model.pt"):
            assert (folder / name).read_bytes() == (ref_folder / name).read_bytes(), where
        # No temp file, checkpoint, progress file or set-aside file left anywhere in the root.
        assert files(root) == files(ref_root), where


def test_kill_9_at_one_point_of_each_kind_resumes_bit_identically(tmp_path, data_root):
    reference, results = sweep(tmp_path, data_root, list(QUICK))
    assert {k: reference[k - 1][1:] for k in QUICK} == QUICK
    assert sorted(map(int, results)) == sorted(QUICK)
    check(tmp_path / "sweep", reference, results)


@pytest.mark.kill_sweep
def test_kill_9_at_every_write_point_resumes_bit_identically(tmp_path, data_root):
    reference, results = sweep(tmp_path, data_root, [])
    # 10 atomic writes (config, 3 progress, 2 metrics, 2 checkpoints, model, result) x 3
    # moments each.
    assert len(reference) == len(results) == 30
    assert [name for _, stage, name in reference if stage == "replaced"] == [
        "config.json", "progress.json", "metrics.jsonl", "progress.json", "checkpoint.pt",
        "metrics.jsonl", "progress.json", "checkpoint.pt", "model.pt", "result.json"]
    check(tmp_path / "sweep", reference, results)
