"""Watching a run (issue 15): the progress file a run writes, the bars `sparsebench run` shows
from it, and the optional TensorBoard / W&B epoch loggers, with the real packages writing to a
temporary folder (W&B offline, no network)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from bench import store
from bench.cli import main
from bench.progress import PROGRESS, ProgressFile, Watcher, describe, read
from bench.run import run_folder, run_one
from tests.helpers import tiny_config


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_file_is_throttled_and_counts_steps_of_the_phase(tmp_path):
    clock = Clock()
    pf = ProgressFile(tmp_path, "m/d gmp s=0.9 seed=0", lambda: 4, interval_s=0.5, clock=clock)
    pf.step(1, 10)  # first step: written at once
    assert read(tmp_path) == {"title": "m/d gmp s=0.9 seed=0", "epoch": 0, "epochs": 4,
                              "step": 1, "steps": 10, "elapsed_s": 0.0,
                              "images_per_s": None, "remaining_s": None}
    clock.now = 0.4
    pf.step(2, 10)  # within the interval: not written
    assert read(tmp_path)["step"] == 1
    clock.now = 0.9
    pf.step(3, 10)
    assert read(tmp_path)["step"] == 3
    pf.epoch([{"epoch": 1}])  # an epoch's end is always written
    assert (read(tmp_path)["epoch"], read(tmp_path)["step"]) == (1, 3)
    assert describe(read(tmp_path)) == "m/d gmp s=0.9 seed=0 epoch 2/4"
    clock.now = 2.0
    pf.step(11, 6)  # a second phase with its own budget: counts from its first step
    assert (read(tmp_path)["step"], read(tmp_path)["steps"]) == (1, 6)
    pf.remove()
    assert read(tmp_path) is None and not (tmp_path / PROGRESS).exists()


def test_the_rate_is_global_images_per_second_after_start_up_from_the_first_line(tmp_path):
    """A 2-rank run at global batch 100 (50 images per rank): 7 s of start-up before its first
    step ends, then steps at 0.25 s. The file and the bar say '?' until a second step is timed,
    then (300 - 100) images / (7.5 - 7.0) s = 400 img/s (not 200: one rank's share; not
    300 / 7.5 = 40: start-up counted; not 1 step / ~0 s: tqdm's clock starting at the first
    line), and 117 steps left at 2 steps / 0.5 s = 29.25 s."""
    clock = Clock()
    counts = [0, 0]  # Trainer.phase_step, Trainer.images (global: both ranks' shares)
    title = "mnist1d_cnn/mnist1d set s=0.9 seed=0"
    pf = ProgressFile(tmp_path, title, lambda: 3, interval_s=0.5, clock=clock,
                      counts=lambda: tuple(counts))
    watcher = Watcher([tmp_path])
    lines = []
    for step, now in ((1, 7.0), (2, 7.25), (3, 7.5)):
        clock.now, counts[:] = now, [step, 100 * step]
        pf.step(step, 120)
        watcher.poll()
        lines.append(str(watcher.bars[tmp_path]))
    assert lines[0] == lines[1] == (f"{title} epoch 1/3:   1%|          | 1/120 "
                                    "[00:00<?, ? img/s]")
    assert lines[2] == f"{title} epoch 1/3:   2%|▎         | 3/120 [00:00<00:29, 400 img/s]"
    assert read(tmp_path) == {"title": title, "epoch": 0, "epochs": 3, "step": 3,
                              "steps": 120, "elapsed_s": 0.5, "images_per_s": 400.0,
                              "remaining_s": 29.25}
    watcher.__exit__(None, None, None)

    # The run resumed in a new process at step 61 of 120: the bar goes on at 61/120 (not
    # 1/120), and the rate counts from the end of that step: 1,500 images in 3 s = 500 img/s,
    # 44 steps left at 15 steps / 3 s = 8.8 s.
    resumed = ProgressFile(tmp_path, title, lambda: 3, interval_s=0.5, clock=clock,
                           counts=lambda: tuple(counts))
    clock.now, counts[:] = 100.0, [61, 100]
    resumed.step(61, 120)
    assert (read(tmp_path)["step"], read(tmp_path)["images_per_s"]) == (61, None)
    clock.now, counts[:] = 103.0, [76, 1600]
    resumed.step(76, 120)
    assert {k: read(tmp_path)[k] for k in ("step", "elapsed_s", "images_per_s",
                                           "remaining_s")} == \
        {"step": 76, "elapsed_s": 3.0, "images_per_s": 500.0, "remaining_s": 8.8}


def test_watcher_shows_a_bar_per_run_in_flight(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    store.atomic_write_json(a / PROGRESS, {"title": "cnn/mnist1d gmp s=0.9 seed=0",
                                           "epoch": 2, "epochs": 40, "step": 95,
                                           "steps": 1600})
    watcher = Watcher([a, b])
    watcher.poll()
    assert list(watcher.bars) == [a]  # b has not started
    bar = watcher.bars[a]
    assert (bar.n, bar.total, bar.desc) == (95, 1600, "cnn/mnist1d gmp s=0.9 seed=0 epoch 3/40")
    store.atomic_write_json(b / PROGRESS, {"title": "t", "epoch": 0, "epochs": 1, "step": 1,
                                           "steps": 2})
    store.atomic_write_json(a / store.RESULT, {"status": "ok"})  # a finished
    watcher.poll()
    assert list(watcher.bars) == [b] and watcher.bars[b].pos == 1
    watcher.__exit__(None, None, None)
    assert watcher.bars == {}


def _wandb_records(path: Path):
    """The records of a W&B transaction log (.wandb): a 7-byte header (':W&B', magic, version)
    then LevelDB-log framing in 32 KiB blocks (crc32, length, type; FULL=1, FIRST=2,
    MIDDLE=3, LAST=4), each record a wandb_internal Record protobuf."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw = path.read_bytes()
    assert raw[:4] == b":W&B"
    pos, buf = 7, b""
    while pos + 7 <= len(raw):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        data, pos = raw[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0 and length == 0:
            continue
        buf += data
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


def test_run_writes_progress_and_logs_epochs_to_tensorboard_and_wandb(
        tmp_path, data_root, monkeypatch):
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = tmp_path / "tb"
    monkeypatch.setenv("SPARSEBENCH_TENSORBOARD", str(tb))
    monkeypatch.setenv("SPARSEBENCH_WANDB", "sb-test")
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline by default
    at_epoch_end = []
    original = ProgressFile.epoch

    def spy(self, history):
        original(self, history)
        at_epoch_end.append(read(self.path.parent))

    monkeypatch.setattr(ProgressFile, "epoch", spy)
    config = tiny_config(method="gmp", target=0.9, epochs=2)
    result = run_one(config, tmp_path / "root", data_root)
    assert result["status"] == "ok"
    folder = run_folder(tmp_path / "root", config)
    title = "mnist1d_cnn/mnist1d gmp s=0.9 seed=0"
    # 600 examples / batch 50 = 12 steps per epoch, 24 in the run's one phase.
    timing = ("elapsed_s", "images_per_s", "remaining_s")
    assert [{k: v for k, v in state.items() if k not in timing} for state in at_epoch_end] == [
        {"title": title, "epoch": 1, "epochs": 2, "step": 12, "steps": 24},
        {"title": title, "epoch": 2, "epochs": 2, "step": 24, "steps": 24},
    ]
    # The rate counts the 23 steps after the first: 23 x 50 images over the time since.
    last = at_epoch_end[-1]
    assert last["images_per_s"] == pytest.approx(23 * 50 / last["elapsed_s"])
    assert last["remaining_s"] == 0.0
    assert not (folder / PROGRESS).exists()  # removed once the run ended
    metrics = [json.loads(line) for line in (folder / store.METRICS).read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]

    events = EventAccumulator(str(tb / folder.name))
    events.Reload()
    assert {"top1", "train_loss", "test_loss", "lr", "density"} <= set(events.Tags()["scalars"])
    for tag in ("top1", "train_loss"):
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in logged] == [1, 2]
        assert [v for _, v in logged] == pytest.approx([m[tag] for m in metrics], rel=1e-6)

    logs = list((folder / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == 1
    records = list(_wandb_records(logs[0]))
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (run.project, run.display_name) == ("sb-test", folder.name)
    config_keys = {item.key for item in run.config.update}
    assert {"train", "method", "sparsity", "seed"} <= config_keys
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json)
                for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    assert [h["_step"] for h in history] == [1, 2]
    assert [h["top1"] for h in history] == [m["top1"] for m in metrics]
    assert [h["train_loss"] for h in history] == [m["train_loss"] for m in metrics]


def test_missing_logger_package_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("no wandb here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    monkeypatch.delenv("SPARSEBENCH_WANDB", raising=False)
    assert main(["run", "smoke", "--root", str(tmp_path / "r"), "--wandb", "p"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["sparsebench: error: --wandb needs the wandb package: "
                   "pip install 'sparsebench[wandb]'"]
    assert not list((tmp_path / "r").glob("runs/*"))  # nothing trained
