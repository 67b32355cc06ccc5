"""Progress within a run, for watching a grid train.

A run writes ``progress.json`` in its folder (``ProgressFile``, throttled to a write every
``interval_s`` seconds and at each epoch's end, atomically) and removes it once its result is
written. ``Watcher`` polls those files for the runs of a ``sparsebench run`` in a background
thread and shows one tqdm bar per run in flight, whatever executes it (the local executor's
subprocesses, or the debug executor in the calling process)::

    mnist1d_cnn/mnist1d gmp s=0.9 seed=0 epoch 12/40:  29%|██▉       | 465/1600 [00:21<00:52]

The bar counts training steps of the current phase (EigenDamage's fine-tuning is a phase of its
own); the epoch is the run's, over all phases.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bench import store

PROGRESS = "progress.json"


def run_title(config) -> str:
    """'model/dataset method s=target seed=n': what a progress line is about."""
    return (f"{config.model.name}/{config.data.name} {config.method.name} "
            f"s={config.sparsity.target:g} seed={config.seed}")


class ProgressFile:
    """Callbacks for the Trainer: ``step(step, total_steps)`` after each optimizer step and
    ``epoch(history)`` after each epoch. `total_epochs` is called once, lazily (the method's
    phases are known only once training started)."""

    def __init__(self, folder: Path, title: str, total_epochs: Callable[[], int],
                 interval_s: float = 0.5, clock: Callable[[], float] = time.monotonic):
        self.path = Path(folder) / PROGRESS
        self.title = title
        self._total_epochs = total_epochs
        self.epochs: int | None = None
        self.interval_s = interval_s
        self.clock = clock
        self.last_write = -float("inf")
        self.phase_total = 0
        self.phase_start = 0
        self.step_now = 0
        self.epoch_done = 0

    def step(self, step: int, total_steps: int) -> None:
        if total_steps != self.phase_total or step <= self.phase_start:
            # A new phase (its own step budget) or a resume: steps count from here.
            self.phase_total, self.phase_start = total_steps, step - 1
        self.step_now = step
        if self.clock() - self.last_write >= self.interval_s:
            self.write()

    def epoch(self, history: list[dict[str, Any]]) -> None:
        if history:
            self.epoch_done = int(history[-1]["epoch"])
        self.write()

    def state(self) -> dict[str, Any]:
        if self.epochs is None:
            self.epochs = int(self._total_epochs())
        return {"title": self.title, "epoch": self.epoch_done, "epochs": self.epochs,
                "step": self.step_now - self.phase_start, "steps": self.phase_total}

    def write(self) -> None:
        self.last_write = self.clock()
        store.atomic_write_json(self.path, self.state())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def read(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(folder) / PROGRESS).read_text())
    except (OSError, ValueError):
        return None  # not started, finished, or mid-replace


def describe(state: dict[str, Any]) -> str:
    """The bar's description: title and the epoch being trained."""
    current = min(state["epoch"] + 1, state["epochs"])
    return f"{state['title']} epoch {current}/{state['epochs']}"


class Watcher:
    """Polls the progress files of `folders` every `poll_s` seconds in a thread while in the
    ``with`` block and keeps one tqdm bar per run in flight (position 1, 2, ... under the
    caller's bar at 0). Disabled (no thread) with ``enabled=False``."""

    def __init__(self, folders: Iterable[Path], enabled: bool = True, poll_s: float = 0.5):
        self.folders = [Path(f) for f in folders]
        self.enabled = enabled
        self.poll_s = poll_s
        self.bars: dict[Path, Any] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Watcher:
        if self.enabled and self.folders:
            self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.poll()

    def poll(self) -> None:
        """One refresh: a bar for each run with a progress file, none for the others."""
        from tqdm import tqdm

        for folder in self.folders:
            # A result on disk (valid or not) means the run has ended.
            state = None if (folder / store.RESULT).exists() else read(folder)
            bar = self.bars.get(folder)
            if state is None:
                if bar is not None:
                    bar.close()
                    del self.bars[folder]
                continue
            if bar is None:
                taken = {b.pos for b in self.bars.values()}
                position = next(i for i in range(1, len(self.bars) + 2) if i not in taken)
                bar = self.bars[folder] = tqdm(total=state["steps"], position=position,
                                               leave=False, unit="step", dynamic_ncols=True)
                bar.pos = position
            if bar.total != state["steps"]:
                bar.reset(total=state["steps"])
            bar.set_description_str(describe(state), refresh=False)
            bar.n = state["step"]
            bar.refresh()


class RunWatch:
    """What watches one run from inside it: its progress file and the optional epoch loggers
    (bench.loggers). Wraps the Trainer's callbacks; ``close()`` removes the progress file and
    closes the loggers, whatever way the run ended."""

    def __init__(self, folder: Path, config, config_dict: dict[str, Any],
                 total_epochs: Callable[[], int]):
        from bench.loggers import EpochLoggers

        self.file = ProgressFile(folder, run_title(config), total_epochs)
        self.loggers = EpochLoggers.from_env(folder, config_dict)

    def progress(self, inner: Callable[[int, int], None] | None):
        def call(step: int, total_steps: int) -> None:
            self.file.step(step, total_steps)
            if inner is not None:
                inner(step, total_steps)
        return call

    def on_epoch(self, inner: Callable[[list[dict[str, Any]]], None]):
        def call(history: list[dict[str, Any]]) -> None:
            inner(history)  # metrics.jsonl first: a logger failure must not lose the record
            self.file.epoch(history)
            self.loggers.epoch(history)
        return call

    def close(self) -> None:
        self.file.remove()
        self.loggers.close()
