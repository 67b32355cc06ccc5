"""One run: idempotent (a finished run is skipped), resumable (from its checkpoint), and a
failure is data (``result.json`` with ``status: "failed"`` and the reason; the grid goes on).
``RunHarness`` is what the run's method may ask of the harness (``methods.base.Harness``).

``result.json`` is written last and atomically; ``model.pt`` (the final weights) just before it,
so a run that has a result always has its model for methods that reuse it.
"""

from __future__ import annotations

import platform
import subprocess
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import bench
from bench import accel, distributed, store
from bench.budget import budget_error, calibration_flag
from bench.config import RunConfig, run_id, run_label, to_dict
from bench.failures import DependencyNotDone, classify, retried_by_plain_rerun
from bench.fingerprint import fingerprint
from bench.flops import ModelCounts, count
from bench.locks import exclusive_run
from bench.models import build_model
from bench.progress import PROGRESS, RunWatch
from bench.store import RESULT_SCHEMA_VERSION
from bench.train import (
    Diverged,
    Interrupted,
    Trainer,
    intra_op_threads,
    make_method,
    resolve_device,
    resolve_hparams,
)
from bench.trial import train_trial
from methods import get_method
from methods.base import FinishedRun, TrialResult
from methods.masking import Masking

MODEL_FILE = "model.pt"


def run_folder(root: Path, config: RunConfig) -> Path:
    return store.run_dir(Path(root), run_label(config), run_id(config))


def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "sparsebench": bench.__version__,
        "git": _git_revision(),
    }


def _git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _logger(folder: Path) -> Callable[[str], None]:
    def log(message: str) -> None:
        with open(folder / store.LOG, "a") as fh:
            fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    return log


def _write_metrics(folder: Path, history: list[dict[str, Any]]) -> None:
    store.atomic_write_text(folder / store.METRICS,
                            store.metrics_lines(folder.name.rsplit("-", 1)[-1], history))


def achieved_counts(config: RunConfig, final: ModelCounts, input_shape, num_classes) -> dict:
    """The final model's counts, with sparsity and the dense reference taken from the unpruned
    architecture of the run's config. For mask-based methods this equals the mask sparsity; for
    methods that change the architecture (thin dense, EigenDamage) it is their real reduction:
    sparsity = (dense params - nonzero params) / dense prunable params."""
    torch_state = torch.get_rng_state()
    reference = build_model(config.model.name, num_classes, input_shape, config.model.width)
    torch.set_rng_state(torch_state)
    Masking.attach(reference, config.sparsity.layer_policy)
    dense = count(reference, input_shape)
    out = final.as_dict()
    out.update(
        params_dense=dense.params_total,
        macs_dense=dense.macs_dense,
        flops_dense=2 * dense.macs_dense,
        sparsity=(dense.params_total - final.params_nonzero) / dense.params_prunable
        if dense.params_prunable else 0.0,
    )
    return out


@dataclass
class RunHarness:
    """The harness's services for the method of one run under `root`
    (``methods.base.Harness``). Trials honour the run's `should_stop`; `log` is the run's."""

    root: Path
    data_root: Path | None = None
    should_stop: Callable[[], bool] | None = None
    log: Callable[[str], None] = lambda _msg: None

    def trial_train(self, config: RunConfig) -> TrialResult:
        return train_trial(config, self.root, data_root=self.data_root,
                           should_stop=self.should_stop, harness=self, log=self.log)

    def finished_model(self, config: RunConfig) -> FinishedRun:
        """Raises DependencyNotDone when the run has no successful result (this run does not
        train it: ``sparsebench run`` trains a run's dependencies first), and
        ``load_final_model``'s RuntimeError when its model does not verify."""
        config = resolve_hparams(config)
        rid, folder = run_id(config), run_folder(self.root, config)
        result = store.read_result(folder)
        if result is None or result.get("status") != "ok":
            state = "has no result" if result is None else \
                f"failed ({result.get('error')})"
            raise DependencyNotDone(
                f"run {rid} ({folder}), which this run starts from, {state}; train it first "
                "(sparsebench run trains the runs a run depends on before it)")
        return FinishedRun(run_id=rid, weights=load_final_model(self.root, config),
                           train_flops=float(result["train_flops"]))


def run_one(
    config: RunConfig,
    root: Path,
    data_root: Path | None = None,
    *,
    label: str | None = None,
    retry_failed: bool = False,
    should_stop: Callable[[], bool] | None = None,
    stop_after_epoch: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Train `config` under `root` unless it is already done; return its result.

    `label` names the method in tables (a grid's variant name); by default the method's own.
    Raises ``Interrupted`` when `should_stop` or `stop_after_epoch` stopped it (a checkpoint is
    on disk and the next call resumes from it). Holds the run folder's lock throughout: a
    second process asking for the same run waits, then returns the first one's result. A
    corrupt result, or an ok one whose model.pt does not verify, is set aside and retrained.

    A run with ``train.world_size`` N > 1 trains in N processes (``bench.launch.ddp``: spawned
    here, or this process is one rank of a SLURM job or ``torchrun``); `progress` is not
    called for it (its progress file is written by rank 0).
    """
    config = resolve_hparams(config)
    if config.train.world_size > 1:
        from bench.launch.ddp import run_distributed

        return run_distributed(config, Path(root), data_root, label=label,
                               retry_failed=retry_failed, should_stop=should_stop,
                               stop_after_epoch=stop_after_epoch)
    return _run_locked(config, root, data_root, label=label, retry_failed=retry_failed,
                       should_stop=should_stop, stop_after_epoch=stop_after_epoch,
                       progress=progress)


def finished_result(folder: Path, retry_failed: bool) -> dict[str, Any] | None:
    """The result of the run in `folder` when it is to be returned as is (done, or failed and
    not retried); None when the run is to train. A result that is retried is removed (and,
    for a failure of the method, its checkpoint: it may hold the diverged state)."""
    existing = store.usable_result(folder)
    if existing is None:
        return None
    if existing.get("status") == "ok" or not (retry_failed or retried_by_plain_rerun(existing)):
        if existing.get("status") == "ok":
            # A kill between the result's write and the end of the run leaves these.
            (folder / store.CHECKPOINT).unlink(missing_ok=True)
            (folder / PROGRESS).unlink(missing_ok=True)
        return existing
    (folder / store.RESULT).unlink()
    if existing.get("status") != "error":
        # A retried failure starts from scratch: its checkpoint may hold the diverged state.
        # An error of the environment (OOM, I/O) resumes from its checkpoint.
        (folder / store.CHECKPOINT).unlink(missing_ok=True)
    return None


@exclusive_run(lambda root, config: run_folder(root, resolve_hparams(config)))
def _run_locked(config: RunConfig, root: Path, data_root: Path | None = None,
                **kwargs: Any) -> dict[str, Any]:
    return run_body(config, root, data_root, **kwargs)


def run_body(
    config: RunConfig,
    root: Path,
    data_root: Path | None = None,
    *,
    label: str | None = None,
    retry_failed: bool = False,
    should_stop: Callable[[], bool] | None = None,
    stop_after_epoch: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    rank: distributed.Rank | None = None,
) -> dict[str, Any]:
    """``run_one``'s work, the run folder's lock held by the caller. In a multi-process run
    every rank calls it (`rank`): rank 0 reads and writes the run folder and decides whether
    the run is done; the other ranks train alongside and write nothing."""
    config = resolve_hparams(config)
    config.validate()
    folder = run_folder(root, config)
    writes = rank is None or rank.writes
    done = None
    if writes:
        store.clean_temp_files(folder)
        done = finished_result(folder, retry_failed)
    if rank is not None:
        done = distributed.broadcast(done)
    if done is not None:
        return done
    result = _train_and_record(config, root, data_root, folder, writes, rank, label=label,
                               should_stop=should_stop, stop_after_epoch=stop_after_epoch,
                               progress=progress)
    # Every rank returns rank 0's result, once it is on disk (a run that depends on this one
    # may start right after, in the same processes).
    return distributed.broadcast(result) if rank is not None else result


def _train_and_record(config: RunConfig, root: Path, data_root: Path | None, folder: Path,
                      writes: bool, rank: distributed.Rank | None, *, label: str | None,
                      should_stop: Callable[[], bool] | None, stop_after_epoch: int | None,
                      progress: Callable[[int, int], None] | None) -> dict[str, Any]:
    rid = run_id(config)
    if writes:
        folder.mkdir(parents=True, exist_ok=True)
        store.prepare_folder(folder, to_dict(config))
        log = _logger(folder)
        log(f"run {rid} on {resolve_device(config.train.device)}"
            + (f", {rank.world_size} processes" if rank is not None else ""))
    else:
        def log(_msg: str) -> None:
            pass

    base = {
        "schema": RESULT_SCHEMA_VERSION,
        "run_id": rid,
        "config": to_dict(config),
        "method_label": label or get_method(config.method.name).label(config),
        "device": str(resolve_device(config.train.device)),
        # What "auto" became on this device (bench.accel): the numbers depend on it.
        "precision": accel.resolve_precision(config.train.precision,
                                             resolve_device(config.train.device)),
        "versions": versions(),
    }
    # Progress file for `sparsebench run`'s bars, and the optional TensorBoard / W&B loggers.
    watch = (RunWatch(folder, config, base["config"],
                      lambda: sum(p.train.epochs for p in trainer.method.phases()),
                      counts=lambda: (trainer.phase_step, trainer.images))
             if writes else _NoWatch())
    harness = RunHarness(Path(root), data_root, should_stop, log)
    method = None
    started = time.perf_counter()
    try:
        method = make_method(config)
        trainer = Trainer(method, folder, harness=harness, data_root=data_root,
                          should_stop=should_stop, stop_after_epoch=stop_after_epoch, log=log,
                          progress=watch.progress(progress),
                          on_epoch=watch.on_epoch(lambda h: _write_metrics(folder, h)))
        with intra_op_threads(config.train):
            base["torch_threads"] = torch.get_num_threads()
            base["fingerprint"] = fingerprint(base["device"], base["torch_threads"])
            outcome = trainer.run()
    except Interrupted as stop:
        log(f"interrupted: {stop}")
        raise
    except (Diverged, Exception) as exc:  # noqa: B014 - Diverged named for the reader
        status, kind = classify(exc)
        if not writes:
            return {"run_id": rid, "status": status, "error": f"{type(exc).__name__}: {exc}"}
        log(f"{status}: {kind}\n" + traceback.format_exc())
        result = {**base, "status": status, "error_kind": kind,
                  "error": f"{type(exc).__name__}: {exc}",
                  "distribution": method and method.distribution,
                  "wall_time_s": time.perf_counter() - started}
        store.atomic_write_json(folder / store.RESULT, result)
        return store.read_result(folder)
    finally:
        watch.close()

    if not writes:
        return {"run_id": rid, "status": "ok", "error": None}
    counts = count(outcome.model, outcome.data.input_shape)
    store.atomic_torch_save(outcome.model.state_dict(), folder / MODEL_FILE)
    result = {
        **base,
        "status": "ok",
        "error": None,
        "distribution": outcome.method.distribution,
        "top1": outcome.final["top1"],
        # EigenDamage reports the best test accuracy over fine-tuning; we record it too but
        # rank and check by the final one (choosing an epoch by test accuracy is selection on
        # the test set).
        "best_top1": max([outcome.final["top1"]] + [h["top1"] for h in outcome.history]),
        "top5": outcome.final.get("top5"),
        "test_loss": outcome.final["test_loss"],
        "counts": achieved_counts(config, counts, outcome.data.input_shape,
                                  outcome.data.num_classes),
        "layers": counts.layer_table(),
        "train_flops": outcome.train_flops,
        "model_file": store.model_record(folder / MODEL_FILE),
        "history": outcome.history,
        "method_summary": outcome.method.summary(),
        "wall_time_s": outcome.wall_time_s,
        # For the report's at-chance rule (bench.report.eligibility).
        "num_classes": outcome.data.num_classes,
        "test_examples": len(outcome.data.test),
    }
    result |= calibration_flag(result["method_summary"])
    missed = budget_error(outcome.method, outcome.model, counts)
    if missed:  # a fixed budget not met is not the experiment the row names (issue 11)
        result |= {"status": "failed", "error": missed}
    store.atomic_write_json(folder / store.RESULT, result)
    log(f"{'failed: ' + missed if missed else 'done:'} top1={result['top1']:.2f} "
        f"nonzero={counts.params_nonzero}")
    # The checkpoint is no longer needed once the result and final model are on disk.
    (folder / store.CHECKPOINT).unlink(missing_ok=True)
    # Return what is on disk, so a fresh result and a skipped one compare equal.
    return store.read_result(folder)


class _NoWatch:
    """RunWatch's interface for the ranks that write nothing."""

    def progress(self, inner):
        return inner

    def on_epoch(self, inner):
        return inner

    def close(self) -> None:
        pass


def load_final_model(root: Path, config: RunConfig) -> dict[str, torch.Tensor]:
    """The final weights of a finished run (e.g. the dense run EigenDamage starts from), after
    checking them against the size and SHA-256 its result recorded. Raises RuntimeError naming
    the file when they do not verify."""
    folder = run_folder(root, resolve_hparams(config))
    result = store.read_result(folder)
    problem = store.model_problem(folder, result) if result else f"{folder} has no result"
    if problem:
        raise RuntimeError(f"cannot use run {run_id(config)}'s final model: {problem}")
    return torch.load(folder / MODEL_FILE, map_location="cpu", weights_only=True)
