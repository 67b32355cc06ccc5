"""The test cluster itself works: batch jobs run, arrays run, `scontrol requeue` of a running
job runs it again, and the array size limit is the configured one."""

from __future__ import annotations

import time

import pytest

from tests.slurm_cluster import slurm_cluster_fixture

pytestmark = pytest.mark.slurm

MAX_ARRAY_SIZE = 8
slurm_cluster = slurm_cluster_fixture(max_array_size=MAX_ARRAY_SIZE)


def test_node_is_named_after_host_and_idle(slurm_cluster):
    out = slurm_cluster.cmd("sinfo", "-h", "-N", "-o", "%N %c %T %P").split()
    assert out == [slurm_cluster.host, str(slurm_cluster.cpus), "idle", "debug*"]


def test_batch_job_completes_with_its_output(slurm_cluster, tmp_path):
    out = tmp_path / "hello.out"
    job = slurm_cluster.sbatch(
        f"--output={out}", "--wrap", 'echo "hello $SLURM_JOB_ID"; hostname -s'
    )
    assert slurm_cluster.wait_state(job, {"COMPLETED", "FAILED", "CANCELLED"}) == "COMPLETED"
    assert out.read_text() == f"hello {job}\n{slurm_cluster.host}\n"


def test_array_runs_every_task_and_respects_max_array_size(slurm_cluster, tmp_path):
    job = slurm_cluster.sbatch(
        f"--array=0-{MAX_ARRAY_SIZE - 1}", f"--output={tmp_path}/%a.out",
        "--wrap", "echo $((SLURM_ARRAY_TASK_ID * 10))",
    )
    for task in range(MAX_ARRAY_SIZE):
        state = slurm_cluster.wait_state(f"{job}_{task}", {"COMPLETED", "FAILED"})
        assert state == "COMPLETED"
    outputs = {p.name: p.read_text() for p in tmp_path.glob("*.out")}
    assert outputs == {f"{t}.out": f"{t * 10}\n" for t in range(MAX_ARRAY_SIZE)}
    with pytest.raises(RuntimeError, match="Invalid job array specification"):
        slurm_cluster.sbatch(f"--array=0-{MAX_ARRAY_SIZE}", "--wrap", "true")


def test_scontrol_requeue_runs_a_running_job_again(slurm_cluster, tmp_path):
    trace = tmp_path / "trace.txt"
    script = tmp_path / "job.sh"
    # First start: record it and wait to be requeued; second start: record it and finish.
    script.write_text(
        "#!/bin/bash\n"
        f'echo "start ${{SLURM_RESTART_COUNT:-0}}" >> {trace}\n'
        'if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then exec sleep 300; fi\n'
    )
    job = slurm_cluster.sbatch(f"--output={tmp_path}/job.out", str(script))
    slurm_cluster.wait_state(job, {"RUNNING"})
    deadline = time.monotonic() + 60
    while not trace.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    slurm_cluster.cmd("scontrol", "requeue", job)
    assert slurm_cluster.wait_state(job, {"COMPLETED", "FAILED"}, timeout=90) == "COMPLETED"
    assert trace.read_text().splitlines() == ["start 0", "start 1"]
    assert slurm_cluster.job_info(job)["Restarts"] == "1"
