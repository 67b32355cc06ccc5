"""`sparsebench run --executor slurm` and `sparsebench status` against a real single-node SLURM
cluster (tests/slurm_cluster.py): arrays produce every result, a requeued or preempted run
resumes from its checkpoint to the same weights as an uninterrupted run, failures show as failed
with their log, and submitting again submits nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench.cli import main
from bench.data import load_dataset
from bench.grid import load_grid
from bench.launch import MANIFEST, queue, read_manifest
from bench.run import MODEL_FILE, run_folder, run_one
from bench.store import LOG, read_result
from tests.slurm_cluster import slurm_cluster_fixture

pytestmark = pytest.mark.slurm

slurm_cluster = slurm_cluster_fixture()

# MNIST-1D on 600 training examples: a run takes a second or two, most of a job is start-up.
TINY = """
name = "{name}"
[axes]
models = ["{model}"]
datasets = ["mnist1d"]
methods = {methods}
sparsities = {sparsities}
seeds = {seeds}
[data]
train_subset = {subset}
[train]
epochs = {epochs}
batch_size = 50
[slurm]
cpus = 1
time = 30
{slurm}
"""


def write_grid(folder: Path, name: str, *, model="mnist1d_mlp", methods=("dense", "static"),
               sparsities=(0.5, 0.9), seeds=(0,), subset=600, epochs=2, slurm="") -> Path:
    path = folder / f"{name}.toml"
    path.write_text(TINY.format(
        name=name, model=model, methods=json.dumps(list(methods)),
        sparsities=json.dumps(list(sparsities)), seeds=json.dumps(list(seeds)),
        subset=subset, epochs=epochs, slurm=slurm))
    return path


def wait_for(predicate, what: str, cluster, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}\n{cluster.logs()}")


def wait_jobs_gone(root: Path, cluster, timeout: float = 240) -> None:
    jobs = {e["job_id"] for e in read_manifest(root).values()}
    wait_for(lambda: not jobs & set(queue()), f"jobs {sorted(jobs)} to leave the queue",
             cluster, timeout)


def cli(capsys, *args: str) -> list[str]:
    assert main(list(args)) == 0
    return capsys.readouterr().out.splitlines()


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory) -> Path:
    """Generated once here, so that concurrent jobs only read it."""
    root = tmp_path_factory.mktemp("slurm-data")
    load_dataset(load_grid(str(write_grid(root, "g"))).runs[0].config.data, root)
    return root


@pytest.fixture(scope="module")
def array_grid(slurm_cluster, data_cache, tmp_path_factory):
    """Three runs submitted in arrays of at most two tasks, run to completion."""
    folder = tmp_path_factory.mktemp("array")
    grid = write_grid(folder, "arr", slurm="max_array_size = 2")
    root = folder / "root"
    assert main(["run", str(grid), "--root", str(root), "--data-root", str(data_cache),
                 "--executor", "slurm"]) == 0
    wait_jobs_gone(root, slurm_cluster)
    return grid, root


def test_array_submission_produces_every_result(array_grid, data_cache, capsys, tmp_path):
    grid_path, root = array_grid
    runs = load_grid(str(grid_path)).runs
    assert len(runs) == 3
    results = {r.run_id: read_result(run_folder(root, r.config)) for r in runs}
    assert {rid: res["status"] for rid, res in results.items()} == dict.fromkeys(results, "ok")
    manifest = read_manifest(root)
    assert set(manifest) == set(results)
    arrays = {}
    for entry in manifest.values():
        arrays.setdefault(entry["job_id"].split("_")[0], []).append(entry["job_id"])
    assert sorted(len(tasks) for tasks in arrays.values()) == [1, 2]  # chunked under 2
    for entry in manifest.values():
        assert Path(entry["log"]).exists(), entry
    # A job trains exactly what the same run trains in this process.
    dense = next(r for r in runs if r.config.method.name == "dense")
    local = run_one(dense.config, tmp_path / "local", data_cache)
    assert local["top1"] == results[dense.run_id]["top1"]
    assert_same_weights(run_folder(root, dense.config), run_folder(tmp_path / "local",
                                                                   dense.config))
    lines = cli(capsys, "status", str(grid_path), "--root", str(root))
    # Every result is in: squeue is not asked, so queued/running are not counted.
    assert lines[-1] == "3 done, 0 failed, 0 partial, 0 missing"


def test_submitting_again_submits_nothing(array_grid, data_cache, capsys, slurm_cluster):
    grid_path, root = array_grid
    before = (root / MANIFEST).read_text()
    lines = cli(capsys, "run", str(grid_path), "--root", str(root), "--data-root",
                str(data_cache), "--executor", "slurm")
    assert "3 already done, 0 queued or running, 0 to submit" in lines[0]
    assert lines[1] == "nothing to submit"
    assert (root / MANIFEST).read_text() == before
    assert slurm_cluster.queue() == []


def test_queued_runs_are_not_submitted_twice(slurm_cluster, data_cache, capsys, tmp_path):
    # Held jobs stay queued: the second submission must see them and submit nothing.
    grid = write_grid(tmp_path, "held", methods=("dense",), slurm='extra = { hold = true }')
    root = tmp_path / "root"
    args = ["run", str(grid), "--root", str(root), "--data-root", str(data_cache),
            "--executor", "slurm"]
    first = cli(capsys, *args)
    assert "1 to submit" in first[0]
    (job,) = [e["job_id"] for e in read_manifest(root).values()]
    assert queue() == {job: "PENDING"}
    second = cli(capsys, *args)
    assert "0 already done, 1 queued or running, 0 to submit" in second[0]
    status = cli(capsys, "status", str(grid), "--root", str(root))
    assert status[0].split()[0] == "queued" and f"job {job}" in status[0]
    assert status[-1] == "0 done, 1 queued, 0 running, 0 failed, 0 partial, 0 missing"
    slurm_cluster.cmd("scontrol", "release", job)
    wait_jobs_gone(root, slurm_cluster)
    status = cli(capsys, "status", str(grid), "--root", str(root))
    assert status[-1] == "1 done, 0 failed, 0 partial, 0 missing"


def assert_same_weights(folder_a: Path, folder_b: Path) -> None:
    a = torch.load(folder_a / MODEL_FILE, weights_only=True)
    b = torch.load(folder_b / MODEL_FILE, weights_only=True)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_requeued_and_preempted_runs_resume_to_identical_weights(
        slurm_cluster, data_cache, tmp_path):
    # Two runs long enough (~800 steps) to be caught mid-training: one is requeued by the
    # operator (`scontrol requeue`: SIGTERM, then SLURM requeues it), the other gets SLURM's
    # preemption warning (USR2: submitit's handler requeues it after our checkpoint).
    grid = write_grid(tmp_path, "rq", model="mnist1d_cnn", methods=("static",),
                      sparsities=(0.8,), seeds=(0, 1), subset=1000, epochs=40)
    root = tmp_path / "root"
    assert main(["run", str(grid), "--root", str(root), "--data-root", str(data_cache),
                 "--executor", "slurm"]) == 0
    runs = load_grid(str(grid)).runs
    manifest = read_manifest(root)
    folders = [run_folder(root, r.config) for r in runs]
    jobs = [manifest[r.run_id]["job_id"] for r in runs]

    # Interrupt each once its first epoch checkpoint is on disk (it is then mid-training).
    wait_for(lambda: all((f / "checkpoint.pt").exists() for f in folders),
             "both runs to write a checkpoint", slurm_cluster)
    slurm_cluster.cmd("scontrol", "requeue", jobs[0])
    slurm_cluster.cmd("scancel", "--signal=USR2", jobs[1])
    wait_jobs_gone(root, slurm_cluster)

    for run, folder, job in zip(runs, folders, jobs, strict=True):
        assert read_result(folder)["status"] == "ok", (folder / LOG).read_text()
        log = (folder / LOG).read_text()
        assert log.count("interrupted: stopped") == 1, log
        assert log.count("resuming from phase 0") == 1, log
        assert slurm_cluster.job_info(job)["Restarts"] == "1"
        reference = run_one(run.config, tmp_path / "uninterrupted", data_cache)
        assert reference["status"] == "ok"
        assert_same_weights(folder, run_folder(tmp_path / "uninterrupted", run.config))
    # The preempted job went through submitit's requeue; the other one through SLURM's.
    assert "this job is preempted" in Path(manifest[runs[1].run_id]["log"]).read_text()


def test_failed_jobs_show_as_failed_with_their_log(slurm_cluster, data_cache, capsys,
                                                   tmp_path):
    # One job dies before Python starts (a broken setup line); one run fails inside training
    # (its loss diverges; a missing dataset is refused before submission). Both are "failed",
    # each with the log that says why.
    broken = write_grid(tmp_path, "broken", methods=("dense",),
                        slurm='setup = ["echo setup failed: no such module >&2", "exit 3"]')
    root = tmp_path / "root"
    failing = tmp_path / "diverges.toml"
    failing.write_text(broken.read_text().replace('name = "broken"', 'name = "diverges"')
                       .replace("batch_size = 50", 'batch_size = 50\noptimizer = "sgd"\nlr = 1e30')
                       .replace('setup = ["echo setup failed: no such module >&2", "exit 3"]',
                                ""))
    for grid, data in ((broken, data_cache), (failing, data_cache)):
        cli(capsys, "run", str(grid), "--root", str(root), "--data-root", str(data),
            "--executor", "slurm")
    wait_jobs_gone(root, slurm_cluster)

    (line,) = cli(capsys, "status", str(broken), "--root", str(root))[:-1]
    job = read_manifest(root)[load_grid(str(broken)).runs[0].run_id]["job_id"]
    assert line.split()[0] == "failed"
    assert f"job {job} ended without a result" in line
    log = Path(line.split("(log: ")[1].rstrip(")"))
    assert "setup failed: no such module" in log.read_text()

    lines = cli(capsys, "status", str(failing), "--root", str(root))
    assert lines[-1] == "0 done, 1 failed, 0 partial, 0 missing"
    assert lines[0].split()[0] == "failed"
    log = Path(lines[0].split("(log: ")[1].rstrip(")"))
    assert log.name == LOG and "failed: training" in log.read_text()
    assert "Diverged: loss became NaN/inf" in lines[0]


def test_dependent_run_waits_for_its_dense_run(slurm_cluster, data_cache, capsys, tmp_path):
    # The grid holds only EigenDamage; its dense run is added and submitted first, and the
    # EigenDamage job waits on it through a SLURM dependency instead of training it inline.
    grid = write_grid(tmp_path, "eig", methods=("eigendamage",), sparsities=(0.5,))
    root = tmp_path / "root"
    lines = cli(capsys, "run", str(grid), "--root", str(root), "--data-root", str(data_cache),
                "--executor", "slurm")
    assert "submitted 2 runs as 2 job arrays" in lines[1]
    (eig,) = load_grid(str(grid)).runs
    manifest = read_manifest(root)
    dense_id = next(rid for rid in manifest if rid != eig.run_id)
    dense_job = manifest[dense_id]["job_id"]
    assert manifest[eig.run_id]["dependency"] == f"afterany:{dense_job}"
    info = slurm_cluster.job_info(manifest[eig.run_id]["job_id"])
    assert info["Dependency"].startswith(f"afterany:{dense_job}")
    wait_jobs_gone(root, slurm_cluster)
    assert read_result(run_folder(root, eig.config))["status"] == "ok"
    dense_folder = Path(manifest[dense_id]["folder"])
    assert read_result(dense_folder)["status"] == "ok"
    assert (dense_folder / LOG).read_text().count(f"run {dense_id} on") == 1


def test_controller_down_is_fine_when_no_queue_answer_is_needed(array_grid, data_cache, capsys,
                                                                slurm_cluster):
    """Every run has its result: status and a resubmission need no answer from slurmctld."""
    grid_path, root = array_grid
    ctld = slurm_cluster.procs["slurmctld"]
    ctld.send_signal(signal.SIGSTOP)  # down: squeue/sbatch/scontrol would time out
    try:
        started = time.monotonic()
        status = cli(capsys, "status", str(grid_path), "--root", str(root))
        lines = cli(capsys, "run", str(grid_path), "--root", str(root), "--data-root",
                    str(data_cache), "--executor", "slurm", "--no-report")
        assert time.monotonic() - started < 30
    finally:
        ctld.send_signal(signal.SIGCONT)
    assert status[-1] == "3 done, 0 failed, 0 partial, 0 missing"
    assert "3 already done, 0 queued or running, 0 to submit" in lines[0]
    assert lines[1] == "nothing to submit"


def test_max_array_size_is_capped_at_the_clusters(slurm_cluster, data_cache, capsys,
                                                   tmp_path):
    grid = write_grid(tmp_path, "cap", methods=("dense",), slurm='extra = { hold = true }')
    root = tmp_path / "root"
    lines = cli(capsys, "run", str(grid), "--root", str(root), "--data-root", str(data_cache),
                "--executor", "slurm", "--max-array-size", "5000")
    assert lines[0] == ("--max-array-size 5000 is above the cluster's MaxArraySize (1001): "
                        "arrays of at most 1001 tasks")
    slurm_cluster.cmd("scancel", *[e["job_id"] for e in read_manifest(root).values()])


def test_a_refused_submission_prints_one_line_of_ours(slurm_cluster, data_cache, capsys,
                                                      tmp_path):
    grid = write_grid(tmp_path, "refused", methods=("dense",))
    root = tmp_path / "root"
    code = main(["run", str(grid), "--root", str(root), "--data-root", str(data_cache),
                 "--executor", "slurm", "--partition", "nosuch"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err == ("sparsebench: error: sbatch refused the job array: invalid partition "
                   "specified: nosuch\n")
    assert not (root / MANIFEST).exists()


def test_two_launchers_at_once_submit_each_run_once(slurm_cluster, data_cache, tmp_path):
    grid = write_grid(tmp_path, "race", methods=("dense", "static"),
                      slurm='extra = { hold = true }')
    root = tmp_path / "root"
    repo = Path(__file__).resolve().parents[1]
    env = {**slurm_cluster.env(), "PYTHONPATH": str(repo)}
    cmd = [sys.executable, "-m", "bench.cli", "run", str(grid), "--root", str(root),
           "--data-root", str(data_cache), "--executor", "slurm"]
    procs = [subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    lines = (root / MANIFEST).read_text().splitlines()
    assert len(lines) == 3  # dense + static at 0.5 and 0.9, each once
    ids = {json.loads(line)["job_id"] for line in lines}
    assert len(ids) == 3 and ids <= set(queue())
    # The summary line (a launcher that waited for the other's submission lock prints a note
    # before it).
    firsts = sorted(next(line for line in out.splitlines() if line.startswith("grid race:"))
                    .split(", ", 1)[1] for out in outs)
    assert firsts == sorted([f"0 already done, 0 queued or running, 3 to submit under {root}",
                             f"0 already done, 3 queued or running, 0 to submit under {root}"])
    slurm_cluster.cmd("scancel", *[json.loads(line)["job_id"] for line in lines])


def test_cancelled_dense_job_is_trained_once_by_its_dependents(slurm_cluster, data_cache,
                                                               capsys, tmp_path):
    # Both EigenDamage jobs start when their dense job is cancelled (afterany). Neither trains
    # the dense run inline (methods reach the harness through ctx.harness, which only reads a
    # finished run): each records an environment error naming it, which a plain rerun retries
    # after training the dense run; nothing trains the dense run twice.
    grid = write_grid(tmp_path, "eig2", methods=("eigendamage",), sparsities=(0.5, 0.9),
                      slurm='extra = { hold = true }')
    root = tmp_path / "root"
    cli(capsys, "run", str(grid), "--root", str(root), "--data-root", str(data_cache),
        "--executor", "slurm")
    runs = load_grid(str(grid)).runs
    manifest = read_manifest(root)
    (dense_id,) = set(manifest) - {r.run_id for r in runs}
    slurm_cluster.cmd("scancel", manifest[dense_id]["job_id"])
    for run in runs:
        slurm_cluster.cmd("scontrol", "release", manifest[run.run_id]["job_id"])
    wait_jobs_gone(root, slurm_cluster)
    for run in runs:
        result = read_result(run_folder(root, run.config))
        assert (result["status"], result["error_kind"]) == ("error", "environment")
        assert f"run {dense_id}" in result["error"] and "has no result" in result["error"]
    dense_folder = Path(manifest[dense_id]["folder"])
    assert read_result(dense_folder) is None
    assert not (dense_folder / LOG).exists() or \
        f"run {dense_id} on" not in (dense_folder / LOG).read_text()


def test_a_two_process_run_trains_as_one_job_of_two_tasks(slurm_cluster, data_cache, tmp_path):
    """``train.world_size = 2`` on CPUs: one array element with two tasks (gloo ranks from
    submitit's TorchDistributedEnvironment), the same weights and top-1 as the two processes
    the local launcher spawns; rank 0 alone wrote the job's result."""
    grid = write_grid(tmp_path, "ddp", methods=("set",), sparsities=(0.8,))
    grid.write_text(grid.read_text().replace("batch_size = 50", "batch_size = 50\n"
                                                                "world_size = 2"))
    root = tmp_path / "root"
    assert main(["run", str(grid), "--root", str(root), "--data-root", str(data_cache),
                 "--executor", "slurm"]) == 0
    wait_jobs_gone(root, slurm_cluster)
    (run,) = load_grid(str(grid)).runs
    entry = read_manifest(root)[run.run_id]
    assert slurm_cluster.job_info(entry["job_id"])["NumTasks"] == "2"
    result = read_result(run_folder(root, run.config))
    assert result["status"] == "ok", slurm_cluster.logs()
    local = run_one(run.config, tmp_path / "local", data_cache)
    assert local["top1"] == result["top1"]
    assert_same_weights(run_folder(root, run.config), run_folder(tmp_path / "local", run.config))
