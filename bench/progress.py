"""Progress within a run, for watching a grid train.

A run writes ``progress.json`` in its folder (``ProgressFile``, throttled to a write every
``interval_s`` seconds and at each epoch's end, atomically) and removes it once its result is
written. ``Watcher`` polls those files for the runs of a ``sparsebench run`` in a background
thread and shows one tqdm bar per run in flight, whatever executes it (the local executor's
subprocesses, or the debug executor in the calling process)::

    mnist1d_cnn/mnist1d gmp s=0.9 seed=0 epoch 12/40:  29%|██▉ | 465/1600 [00:21<00:52, 2,210 img/s]

The bar counts training steps of the current phase (EigenDamage's fine-tuning is a phase of its
own); the epoch is the run's, over all phases. Its times and rate are the run's own, measured
by the process that writes the file (rank 0 of a multi-process run), not by the bar: the rate is
global images (every rank's share of each batch) per second of wall time since the end of the
phase's first step in this process, so start-up (process start, data, model, the method's
setup, the first step's warm-up) is never in it; until a second step is timed it is unknown
("?"), never an estimate from one step.
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
# A run's bar: tqdm's description, percentage and bar, then the run's own times and rate.
BAR_FORMAT = "{{l_bar}}{{bar}}| {{n_fmt}}/{{total_fmt}} [{timing}]"


def run_title(config) -> str:
    """'model/dataset method s=target seed=n': what a progress line is about."""
    return (f"{config.model.name}/{config.data.name} {config.method.name} "
            f"s={config.sparsity.target:g} seed={config.seed}")


class ProgressFile:
    """Callbacks for the Trainer: ``step(step, total_steps)`` after each optimizer step and
    ``epoch(history)`` after each epoch. `total_epochs` is called once, lazily (the method's
    phases are known only once training started). `counts` gives the steps done in the current
    phase and the images trained on in this process so far, every rank's share counted
    (``Trainer.phase_step``, ``Trainer.images``); without it a phase's steps count from the
    first one seen and the file has no rate. `clock` is in seconds.

    The file holds ``title``, ``epoch``/``epochs``, ``step``/``steps`` (of the phase) and the
    timing: ``elapsed_s`` (seconds since the end of the phase's first step here),
    ``images_per_s`` (the images trained since then over ``elapsed_s``) and ``remaining_s``
    (the phase's steps left at the steps' rate since then); the last two are None until a
    second step is timed."""

    def __init__(self, folder: Path, title: str, total_epochs: Callable[[], int],
                 interval_s: float = 0.5, clock: Callable[[], float] = time.monotonic,
                 counts: Callable[[], tuple[int, int]] | None = None):
        self.path = Path(folder) / PROGRESS
        self.title = title
        self._total_epochs = total_epochs
        self.epochs: int | None = None
        self.interval_s = interval_s
        self.clock = clock
        self.counts = counts
        self.last_write = -float("inf")
        self.phase_total = 0
        self.phase_start = 0
        self.step_now = 0
        self.epoch_done = 0
        self.images_now = 0
        # The rate's origin: clock, step and images at the end of the phase's first step.
        self.origin: tuple[float, int, int] | None = None

    def step(self, step: int, total_steps: int) -> None:
        now = self.clock()
        done, images = self.counts() if self.counts is not None else (None, 0)
        if (total_steps != self.phase_total or step <= self.phase_start
                or (done is not None and done <= self.step_now - self.phase_start)):
            # A new phase (its own step budget) or a resume (at `done` steps into its phase):
            # the rate counts from the end of this step (what came before it is start-up).
            self.phase_total = total_steps
            self.phase_start = step - (done if done is not None else 1)
            self.origin = (now, step, images)
        self.step_now = step
        self.images_now = images
        if now - self.last_write >= self.interval_s:
            self.write()

    def epoch(self, history: list[dict[str, Any]]) -> None:
        if history:
            self.epoch_done = int(history[-1]["epoch"])
        self.write()

    def state(self) -> dict[str, Any]:
        if self.epochs is None:
            self.epochs = int(self._total_epochs())
        return {"title": self.title, "epoch": self.epoch_done, "epochs": self.epochs,
                "step": self.step_now - self.phase_start, "steps": self.phase_total,
                **self.timing()}

    def timing(self) -> dict[str, float | None]:
        """``elapsed_s``, ``images_per_s`` and ``remaining_s`` now (see the class)."""
        if self.origin is None:
            return {"elapsed_s": 0.0, "images_per_s": None, "remaining_s": None}
        start, step, images = self.origin
        elapsed = self.clock() - start
        steps = self.step_now - step
        if steps <= 0 or elapsed <= 0:
            return {"elapsed_s": max(elapsed, 0.0), "images_per_s": None, "remaining_s": None}
        rate = (self.images_now - images) / elapsed if self.counts is not None else None
        left = self.phase_total - (self.step_now - self.phase_start)
        return {"elapsed_s": elapsed, "images_per_s": rate,
                "remaining_s": left * elapsed / steps}

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


def timing(state: dict[str, Any]) -> str:
    """The bar's times and rate, from the run's own measurement (ProgressFile):
    'elapsed<remaining, N img/s', '?' for what is not measured yet."""
    from tqdm import tqdm

    remaining, rate = state.get("remaining_s"), state.get("images_per_s")
    return (f"{tqdm.format_interval(state.get('elapsed_s') or 0.0)}<"
            f"{'?' if remaining is None else tqdm.format_interval(remaining)}, "
            f"{'?' if rate is None else f'{rate:,.0f}'} img/s")


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
                # Created with its description and format: tqdm draws the bar at once.
                bar = self.bars[folder] = tqdm(
                    total=state["steps"], initial=state["step"], position=position,
                    leave=False, unit="step", dynamic_ncols=True, desc=describe(state),
                    bar_format=BAR_FORMAT.format(timing=timing(state)))
                bar.pos = position
            if bar.total != state["steps"]:
                bar.reset(total=state["steps"])
            bar.set_description_str(describe(state), refresh=False)
            bar.n = state["step"]
            # tqdm's own times and rate would count from the bar's creation, seeing a run's
            # first steps as instant: the run's measured ones instead.
            bar.bar_format = BAR_FORMAT.format(timing=timing(state))
            bar.refresh()


class RunWatch:
    """What watches one run from inside it: its progress file and the optional epoch loggers
    (bench.loggers). Wraps the Trainer's callbacks; ``close()`` removes the progress file and
    closes the loggers, whatever way the run ended."""

    def __init__(self, folder: Path, config, config_dict: dict[str, Any],
                 total_epochs: Callable[[], int],
                 counts: Callable[[], tuple[int, int]] | None = None):
        from bench.loggers import EpochLoggers

        self.file = ProgressFile(folder, run_title(config), total_epochs, counts=counts)
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
