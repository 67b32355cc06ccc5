"""Multi-process runs (``train.world_size``, bench/distributed.py, bench/launch/ddp.py), with
real processes on gloo and 2 ranks: identical state on every rank after every step for every
registered method, rank 0 alone writing, sharding of the global batch, a stop on one rank
stopping both at one step and a resume that ends bit-identical, the world size in the run id,
SyncBatchNorm conversion, and bad world sizes refused at grid load."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from bench import distributed
from bench.cli import main
from bench.config import RunConfig, TrainConfig, canonical_json, run_id
from bench.data import load_dataset
from bench.data.base import epoch_generator, iterate_batches
from bench.models import build_model
from bench.run import MODEL_FILE, run_folder
from bench.train import evaluate
from methods import REGISTRY
from methods.masking import Masking
from tests.helpers import assert_identical, tiny_config
from tests.test_bad_input import GRID, check_one_line, snapshot, train

# Methods that rewire or prune during training: their masks must change in the 2-epoch run.
REWIRING = {"gmp", "deepr", "set", "dsr", "rigl"}
STEPS_PER_EPOCH = 12  # tiny_config: 600 examples, batch 50


def rank_env(world: int) -> list[dict[str, str]]:
    port = str(distributed.free_port())
    return [{**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
             "WORLD_SIZE": str(world), "RANK": str(r), "LOCAL_RANK": str(r),
             "PYTHONPATH": os.pathsep.join(sys.path)} for r in range(world)]


def test_every_method_holds_identical_state_on_both_ranks_and_only_rank_0_writes(tmp_path):
    """tests/ddp_worker.py, one pair of processes for all methods (EigenDamage after its dense
    run, trained as a full 2-rank run): models (weights, masks) and method state compared
    exactly across ranks after setup, after every step and at every epoch end."""
    names = sorted(REGISTRY)
    report = tmp_path / "report.json"
    root = tmp_path / "root"
    root.mkdir()
    procs = [subprocess.Popen([sys.executable, "-m", "tests.ddp_worker", str(root), str(report),
                               *names], env=env) for env in rank_env(2)]
    assert [p.wait(timeout=600) for p in procs] == [0, 0]
    out = json.loads(report.read_text())
    # Phase start + 2 epochs x 12 steps + 2 epoch ends, every method.
    assert {n: m["compared"] for n, m in out["methods"].items()} == \
        {n: 1 + 2 * STEPS_PER_EPOCH + 2 for n in names}
    # Every rank counts the global batch (2 x 25 images) at each of the 24 steps: 2 x 600.
    assert {n: m["images"] for n, m in out["methods"].items()} == \
        {n: [2 * 600, 2 * 600] for n in names}
    changed = {n for n, m in out["methods"].items() if m["mask_changes"] > 0}
    assert changed == REWIRING
    assert out["dependency_status"] == ["ok"]
    rank0, rank1 = out["writes"]
    assert rank1 == []
    dense = run_folder(root, replace(tiny_config("dense", epochs=2, world_size=2,
                                                 optimizer="sgd", lr=0.05)))
    written = {Path(p).name for p in rank0 if Path(p).parent == dense.relative_to(root)}
    assert written == {"checkpoint.pt", "config.json", "log.txt", "metrics.jsonl", "model.pt",
                       "progress.json", "result.json"}


def test_shards_are_disjoint_and_cover_the_global_batch():
    """Rank r's part of every batch of an epoch (600 examples, batch 50 -> 25 each; a short
    last batch of 7 -> 4 and 3), concatenated in rank order, is the one-process batch."""
    x = torch.arange(607, dtype=torch.float32)[:, None]
    y = torch.arange(607)
    dataset = torch.utils.data.TensorDataset(x, y)
    ranks = [distributed.Rank(r, 2, r) for r in range(2)]
    sizes = []
    for xb, yb in iterate_batches(dataset, 50, epoch_generator(3, 1)):
        parts = [distributed.shard(xb, yb, rank) for rank in ranks]
        assert torch.equal(torch.cat([p[1] for p in parts]), yb)
        assert torch.equal(torch.cat([p[0] for p in parts]), xb)
        assert not set(parts[0][1].tolist()) & set(parts[1][1].tolist())
        sizes.append(tuple(len(p[1]) for p in parts))
    assert sizes == [(25, 25)] * 12 + [(4, 3)]
    weights = [distributed.shard_weight(n, 7, rank)
               for n, rank in zip(sizes[-1], ranks, strict=True)]
    assert weights == [8 / 7, 6 / 7]  # the mean of 4/7-weighted and 3/7-weighted shard means
    with pytest.raises(RuntimeError, match="cannot be split over 2 ranks"):
        distributed.shard(x[:1], y[:1], ranks[1])


class Recorded(torch.utils.data.Dataset):
    """A map-style (file-like) dataset that records which examples were loaded."""

    def __init__(self, n: int) -> None:
        self.n, self.loaded = n, []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        self.loaded.append(index)
        return torch.tensor([float(index)]), index


@pytest.mark.parametrize("start", [0, 3])
def test_a_file_dataset_rank_loads_only_its_own_examples(start):
    """107 examples, batch 10 (5 per rank; the last batch of 7 -> 4 and 3), from batch
    `start` on: the ranks' batches concatenate to the one-process batches, and each rank
    loaded exactly the examples of its parts."""
    whole = Recorded(107)
    full = list(iterate_batches(whole, 10, epoch_generator(5, 2), start=start, workers=0))
    assert len(full) == 11 - start
    parts, loaded = [], []
    for r in range(2):
        ds = Recorded(107)
        parts.append(list(iterate_batches(ds, 10, epoch_generator(5, 2), start=start,
                                          workers=0, shard=distributed.Rank(r, 2, r))))
        loaded.append(ds.loaded)
    for b, (x, y) in enumerate(full):
        assert torch.equal(torch.cat([parts[0][b][1], parts[1][b][1]]), y)
        assert torch.equal(torch.cat([parts[0][b][0], parts[1][b][0]]), x)
    assert [len(p[1]) for p in parts[0]][-1] == 4 and [len(p[1]) for p in parts[1]][-1] == 3
    assert sorted(loaded[0] + loaded[1]) == sorted(whole.loaded)
    assert not set(loaded[0]) & set(loaded[1])
    for r in range(2):
        assert loaded[r] == [int(i) for _, y in parts[r] for i in y]


def test_augmented_in_memory_batches_are_shares_of_the_whole_batch_augmentation():
    x = torch.randn(60, 1, 8)
    ds = torch.utils.data.TensorDataset(x, torch.arange(60))

    def noise(batch, g):
        return batch + torch.randn(batch.shape, generator=g)

    full = list(iterate_batches(ds, 20, epoch_generator(1, 0), noise))
    for r in range(2):
        part = list(iterate_batches(ds, 20, epoch_generator(1, 0), noise,
                                    shard=distributed.Rank(r, 2, r)))
        assert all(torch.equal(p[0], f[0][10 * r:10 * (r + 1)]) for p, f in zip(part, full,
                                                                               strict=True))


LAUNCH = """
import sys
from pathlib import Path
from bench.launch.job import StopOnSignal
from bench.run import run_one
from bench.train import Interrupted
from tests.helpers import tiny_config
cfg = tiny_config("set", epochs=3, world_size=2)
with StopOnSignal(interrupt=True) as stop:
    try:
        result = run_one(cfg, Path(sys.argv[1]), should_stop=stop)
    except Interrupted:
        sys.exit(3)
print(result["status"], result["top1"])
"""


def _rank_pid(parent: int, rank: int) -> int | None:
    """The child of `parent` started with RANK=`rank` (from /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in env:
            return int(entry.name)
    return None


def launch(root: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, "-c", LAUNCH, str(root)], env=env,
                            stdout=subprocess.PIPE, text=True)


def test_a_stop_on_rank_1_stops_both_ranks_and_the_resumed_run_is_bit_identical(tmp_path):
    """SIGTERM to rank 1 alone once the first epoch is recorded: both ranks stop at one step,
    rank 0 checkpoints, the launcher raises Interrupted (exit 3); run again, the run ends with
    the weights, top-1 and history of an uninterrupted 2-rank run."""
    cfg = tiny_config("set", epochs=3, world_size=2)
    root = tmp_path / "stopped"
    first = launch(root)
    straight = launch(tmp_path / "straight")  # alongside: most of a launch is start-up
    folder = run_folder(root, cfg)
    deadline = time.monotonic() + 300
    while not (folder / "metrics.jsonl").exists():
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    pid = _rank_pid(first.pid, 1)
    assert pid is not None and _rank_pid(first.pid, 0) is not None
    os.kill(pid, signal.SIGTERM)
    first.communicate(timeout=300)
    assert first.returncode == 3
    out = straight.communicate(timeout=600)[0].splitlines()[-1]  # ranks may print notes
    assert straight.returncode == 0 and out.startswith("ok "), out
    log = (folder / "log.txt").read_text()
    stopped = [line for line in log.splitlines() if "interrupted: stopped" in line]
    assert len(stopped) == 1, log
    # Mid-epoch at a multiple of the poll interval, or at the end of epoch 2 (step 24).
    step = stopped[0].split("stopped at step ")[-1] if "at step" in stopped[0] else None
    assert (step is not None and int(step) % distributed.STOP_POLL_STEPS == 0) or \
        "after epoch 2" in stopped[0], stopped[0]
    assert (folder / "checkpoint.pt").exists() and not (folder / "result.json").exists()

    again = launch(root)
    out2 = again.communicate(timeout=600)[0].splitlines()[-1]
    assert again.returncode == 0 and out2 == out
    assert_identical(torch.load(folder / MODEL_FILE, weights_only=True),
                     torch.load(run_folder(tmp_path / "straight", cfg) / MODEL_FILE,
                                weights_only=True))
    a = json.loads((folder / "result.json").read_text())
    b = json.loads((run_folder(tmp_path / "straight", cfg) / "result.json").read_text())
    assert len(a["history"]) == 3 and a["history"] == b["history"]
    assert a["top1"] == b["top1"] and a["counts"] == b["counts"]
    assert a["train_flops"] == b["train_flops"]
    # Rank 0 evaluated the whole test set: the same model evaluated in this one process.
    data = load_dataset(cfg.data, None)
    model = build_model("mnist1d_cnn", 10, tuple(data.input_shape), 1.0)
    Masking.attach(model, cfg.sparsity.layer_policy)
    model.load_state_dict(torch.load(folder / MODEL_FILE, weights_only=True))
    final = evaluate(model, data, cfg.train, torch.device("cpu"))
    assert (final["top1"], final["test_loss"]) == (a["top1"], a["test_loss"])


def test_world_size_1_keeps_run_ids_and_a_larger_one_changes_them():
    cfg = RunConfig()
    assert "world_size" not in canonical_json(cfg) and "sync_batchnorm" not in canonical_json(cfg)
    same = replace(cfg, train=replace(cfg.train, world_size=1))
    assert run_id(same) == run_id(cfg) == run_id(RunConfig(train=TrainConfig()))
    two = replace(cfg, train=replace(cfg.train, world_size=2))
    assert '"world_size":2' in canonical_json(two) and run_id(two) != run_id(cfg)
    synced = replace(two, train=replace(two.train, sync_batchnorm=True))
    assert run_id(synced) not in (run_id(two), run_id(cfg))


def test_sync_batchnorm_converts_every_batch_norm_and_keeps_the_state():
    model = build_model("resnet8", 10, (3, 32, 32), 1.0)
    before = model.state_dict()
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    converted = distributed.sync_batchnorm(model)
    assert n_bn == 9  # stem, 2 per block x 3 blocks, 2 projection shortcuts
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in converted.modules()) == n_bn
    assert not any(type(m) is nn.BatchNorm2d for m in converted.modules())
    assert_identical(converted.state_dict(), before)


@pytest.mark.parametrize(("key_value", "expected"), [
    ("world_size = 3", "train.world_size = 3: expected a divisor of batch_size (100, its "
                       "default)"),
    ("batch_size = 50\nworld_size = 4", "train.world_size = 4: expected a divisor of "
                                        "batch_size (50)"),
    ("world_size = 0", "train.world_size = 0: expected an integer >= 1"),
])
def test_a_world_size_that_does_not_divide_the_batch_is_refused(tmp_path, capsys, key_value,
                                                                expected):
    grid = tmp_path / "grid.toml"
    grid.write_text(train(key_value))
    (tmp_path / "data").mkdir()
    before = snapshot(tmp_path)
    code = main(["run", str(grid), "--root", str(tmp_path / "root"), "--data-root",
                 str(tmp_path / "data"), "--executor", "debug"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    line = 11 + key_value.count("\n")
    check_one_line(err, f"{grid}:{line}: {expected}")
    assert snapshot(tmp_path) == before
    assert GRID  # the grid these cases edit


@pytest.mark.parametrize(("world", "gpus", "expected"), [
    (2, 1, "[slurm] gpus = 1 but train.world_size = 2: a run uses one GPU per process; set "
           "gpus = 2 (or 0 to train its 2 processes on CPUs)"),
    (1, 4, "[slurm] gpus = 4 but train.world_size = 1: a run uses one GPU per process; set "
           "train.world_size = 4 to train each run on 4 GPUs, or gpus = 1"),
])
@pytest.mark.parametrize("dry_run", [True, False])
def test_slurm_gpus_must_agree_with_the_world_size(tmp_path, capsys, world, gpus, expected,
                                                   dry_run):
    grid = tmp_path / "grid.toml"
    grid.write_text(train(f"world_size = {world}") + f"[slurm]\ngpus = {gpus}\n")
    (tmp_path / "data").mkdir()
    before = snapshot(tmp_path)
    code = main(["run", str(grid), "--root", str(tmp_path / "root"), "--data-root",
                 str(tmp_path / "data"), "--executor", "slurm"] + (["--dry-run"] * dry_run))
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    check_one_line(err, expected)
    assert snapshot(tmp_path) == before


def test_slurm_jobs_of_a_multi_process_run_get_one_task_per_rank(tmp_path):
    from bench.launch.slurm import _executor
    from bench.launch.slurm_settings import SlurmSettings, check_gpus

    settings = SlurmSettings(gpus=4, partition="gpu")
    check_gpus(settings, {4})
    params = _executor(tmp_path, settings, "sb", None, world_size=4).parameters
    assert (params["ntasks_per_node"], params["gpus_per_node"]) == (4, 4)
    single = _executor(tmp_path, SlurmSettings(gpus=1), "sb", None).parameters
    assert "ntasks_per_node" not in single and single["gpus_per_node"] == 1


def test_preflight_times_one_rank_of_a_multi_process_run(tmp_path):
    """The preflight trains in its own process: it times one rank's share of the batch
    (100 / 2 = 50 examples) as a one-process run instead of failing for want of a group."""
    from bench.preflight import measure

    cfg = tiny_config("static", epochs=1, world_size=2, batch_size=100)
    out = measure(cfg, 2, None, None)
    assert out["batch"] == 50 and out["step_s"] > 0
    assert out["notes"] == ["timed as one of 2 ranks (batch 50), without gradient communication"]


@pytest.mark.parametrize(("device", "count", "expected"), [
    ("cuda", 1, "train.world_size = 2 trains on one CUDA device per process, and this machine "
                "has 1"),
    ("auto", 1, "train.world_size = 2 trains on one CUDA device per process, and this machine "
                "has 1"),
])
def test_a_local_multi_process_run_needs_a_gpu_per_rank(tmp_path, capsys, monkeypatch, device,
                                                        count, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    grid = tmp_path / "grid.toml"
    grid.write_text(train(f'world_size = 2\ndevice = "{device}"'))
    (tmp_path / "data").mkdir()
    before = snapshot(tmp_path)
    code = main(["run", str(grid), "--root", str(tmp_path / "root"), "--data-root",
                 str(tmp_path / "data"), "--executor", "debug"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    check_one_line(err, expected)
    assert snapshot(tmp_path) == before


def test_local_jobs_count_every_process_of_a_run():
    from bench.grid import GridRun
    from bench.launch.local import default_jobs, default_local_jobs

    run = GridRun(tiny_config("static", world_size=2, device="cpu"), "static")
    one = GridRun(tiny_config("static", device="cpu"), "static")
    assert default_local_jobs([one]) == default_jobs()
    assert default_local_jobs([run, one]) == max(1, default_jobs() // 2)


DIE = LAUNCH.replace('print(result["status"], result["top1"])',
                     'print(result["status"], result.get("error_kind"))')


def test_a_rank_that_dies_ends_the_run_as_an_environment_error_that_a_rerun_retries(tmp_path):
    """kill -9 of rank 1 mid-run: rank 0's collective fails, it records status "error"
    (environment, retried by a plain rerun), and the launcher returns instead of waiting."""
    cfg = tiny_config("set", epochs=3, world_size=2)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", DIE, str(tmp_path)], env=env,
                            stdout=subprocess.PIPE, text=True)
    folder = run_folder(tmp_path, cfg)
    deadline = time.monotonic() + 300
    while not (folder / "metrics.jsonl").exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    pid = _rank_pid(proc.pid, 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    out = proc.communicate(timeout=120)[0].splitlines()[-1]
    assert proc.returncode == 0 and out == "error environment", out
    assert (folder / "checkpoint.pt").exists()  # the rerun resumes from epoch 1
