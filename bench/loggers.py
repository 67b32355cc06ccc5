"""Optional experiment loggers: each epoch's metrics (the records of ``metrics.jsonl``) to
TensorBoard and/or Weights & Biases. Both are off by default and optional extras
(``pip install 'sparsebench[tensorboard]'`` / ``'sparsebench[wandb]'``).

Turned on for a whole ``sparsebench run`` by its flags, which set environment variables every
executor's runs inherit (local subprocesses, the debug executor, SLURM jobs):

* ``--tensorboard DIR`` -> ``SPARSEBENCH_TENSORBOARD=DIR``: one event file folder per run,
  ``DIR/<run folder name>/``, scalars named as in metrics.jsonl (``top1``, ``train_loss``,
  ``test_loss``, ``lr``, ``density``, ...) at step = epoch.
* ``--wandb PROJECT`` -> ``SPARSEBENCH_WANDB=PROJECT``: one W&B run per run, named after its
  folder, with the run's config; offline unless ``WANDB_MODE`` says otherwise (offline runs sync
  later with ``wandb sync``), written under ``SPARSEBENCH_WANDB_DIR`` (default: the run folder).

Loggers observe; they never change a run's config, id or results.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bench.errors import UserError

TENSORBOARD_ENV = "SPARSEBENCH_TENSORBOARD"
WANDB_ENV = "SPARSEBENCH_WANDB"
WANDB_DIR_ENV = "SPARSEBENCH_WANDB_DIR"


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of an epoch record, except the epoch itself (the x axis)."""
    return {k: float(v) for k, v in record.items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoardLogger:
    def __init__(self, log_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError(f"{TENSORBOARD_ENV} is set but the tensorboard package is not "
                            "installed: pip install 'sparsebench[tensorboard]'") from None
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, record: dict[str, Any]) -> None:
        for key, value in scalars(record).items():
            self.writer.add_scalar(key, value, global_step=int(record["epoch"]))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    def __init__(self, project: str, name: str, config: dict[str, Any], folder: Path):
        try:
            import wandb
        except ImportError:
            raise UserError(f"{WANDB_ENV} is set but the wandb package is not installed: "
                            "pip install 'sparsebench[wandb]'") from None
        self.wandb = wandb
        directory = Path(os.environ.get(WANDB_DIR_ENV) or folder)
        directory.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=project, name=name, config=config, dir=str(directory),
                              mode=os.environ.get("WANDB_MODE", "offline"), reinit="create_new",
                              settings=wandb.Settings(silent=True))

    def log(self, record: dict[str, Any]) -> None:
        self.run.log(scalars(record), step=int(record["epoch"]))

    def close(self) -> None:
        self.run.finish()


class EpochLoggers:
    """The loggers the environment asks for; ``epoch(history)`` logs the newest record."""

    def __init__(self, folder: Path, config: dict[str, Any]):
        self.loggers: list[Any] = []
        self.folder = Path(folder)
        self.config = config
        self.logged = 0

    @classmethod
    def from_env(cls, folder: Path, config: dict[str, Any]) -> EpochLoggers:
        out = cls(folder, config)
        name = Path(folder).name
        if os.environ.get(TENSORBOARD_ENV):
            out.loggers.append(TensorBoardLogger(Path(os.environ[TENSORBOARD_ENV]) / name))
        if os.environ.get(WANDB_ENV):
            out.loggers.append(WandbLogger(os.environ[WANDB_ENV], name, config, folder))
        return out

    def epoch(self, history: list[dict[str, Any]]) -> None:
        # A resumed run hands back its whole history: log each record once per process.
        if not self.logged and history:
            self.logged = len(history) - 1
        for record in history[self.logged:]:
            for logger in self.loggers:
                logger.log(record)
        self.logged = len(history)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()
        self.loggers.clear()
