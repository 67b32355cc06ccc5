"""The training loop: seeds, data order, method hooks, evaluation, per-epoch checkpoints.

One unit, three parts: ``train_step`` is one batch (the hook order of ``methods/base.py``, used by
the trainer and by the tests' hook driver), ``TrainState`` is what a checkpoint holds, and
``Trainer`` runs the phases and epochs of one run around them.

Determinism: model init draws from torch's global RNG seeded with the run seed; each epoch's
data order (and augmentation) comes from a generator derived from (seed, epoch), never carried;
the method has its own generator; all of them, plus the global RNG state, are in the checkpoint.
On CPU an interrupted and resumed run therefore ends with bit-identical weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench import accel, checkpoint, distributed
from bench.config import RunConfig, TrainConfig
from bench.data import load_dataset
from bench.data.base import DataBundle, epoch_generator, num_batches
from bench.errors import UserError
from bench.flops import StepCost
from bench.models import ModelMaker
from bench.recipe import make_optimizer, set_lr, train_loss
from methods import get_method
from methods.base import Harness, Method, Phase, SetupContext
from methods.masking import Masking


class Diverged(Exception):
    """The loss became NaN or infinite."""


class Interrupted(Exception):
    """Training stopped on request (preemption, test hook) after saving a checkpoint."""


@dataclass
class Outcome:
    model: nn.Module
    method: Method
    data: DataBundle
    history: list[dict[str, Any]] = field(default_factory=list)
    train_flops: float = 0.0
    wall_time_s: float = 0.0
    final: dict[str, Any] = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_hparams(config: RunConfig) -> RunConfig:
    """Fill in the method's default hparams so every consumer sees a typed dataclass."""
    method_cls = get_method(config.method.name)
    if config.method.hparams is not None:
        return config
    return replace(config, method=replace(config.method, hparams=method_cls.Hparams()))


def make_method(config: RunConfig) -> Method:
    """The registered method of `config` (hparams filled in), built for it."""
    config = resolve_hparams(config)
    return get_method(config.method.name)(config, config.method.hparams)


@contextmanager
def intra_op_threads(train: TrainConfig) -> Iterator[None]:
    """CPU training at the config's thread count, restored afterwards (the debug executor
    trains in the caller's process). GPU runs keep the process's setting."""
    if resolve_device(train.device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(train.cpu_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def evaluate(model: nn.Module, data: DataBundle, train: TrainConfig,
             device: torch.device) -> dict[str, float]:
    was_training = model.training
    model.eval()
    correct1 = correct5 = 0
    loss_sum = 0.0
    n = 0
    for x, y in data.batches("test", train.eval_batch_size, None,
                             pin_memory=device.type == "cuda"):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(train, device):
            logits = model(x)
        logits = logits.float()
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += int((top[:, 0] == y).sum())
        correct5 += int((top == y[:, None]).any(dim=1).sum())
        n += len(y)
    model.train(was_training)
    out = {"top1": 100.0 * correct1 / n, "test_loss": loss_sum / n}
    if data.num_classes > 10:
        out["top5"] = 100.0 * correct5 / n
    return out


def autocast(train: TrainConfig, device: torch.device):
    """The autocast context of the recipe's precision on `device` ("auto" resolved there)."""
    return accel.autocast(accel.resolve_precision(train.precision, device), device)


def train_step(
    model: nn.Module,
    method: Method,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    step: int,
    *,
    scaler: torch.amp.GradScaler | None = None,
    amp: Callable[[], Any] | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    forward: nn.Module | None = None,
    loss_weight: float = 1.0,
) -> torch.Tensor:
    """One optimizer step on the batch (x, y), calling the method's hooks in the contract's
    order (``methods/base.py``): forward and ``extra_loss`` (under `amp`, a context factory such
    as ``lambda: autocast(train, device)``), backward (scaled by `scaler` for fp16, then
    unscaled), ``after_backward`` with the dense gradient, the optimizer step,
    ``after_step``. `step` is the number of this step, from 1 over the whole run. Returns the
    detached task loss (without ``extra_loss``), shape [].

    The one implementation of a training step: the trainer and the tests' hook driver both
    call it, so the hook order is written once.

    In a multi-process run `forward` is `model` wrapped in DistributedDataParallel: the forward
    goes through it, so ``backward`` returns with the gradients averaged over the ranks, before
    ``after_backward``; the hooks get `model` itself. `loss_weight` scales this rank's loss
    (``bench.distributed.shard_weight``); the returned loss is the weighted one."""
    with amp() if amp is not None else nullcontext():
        loss = loss_fn((forward or model)(x), y)
        if loss_weight != 1.0:
            loss = loss * loss_weight
        extra = method.extra_loss(model)
        total = loss if extra is None else loss + extra
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(total).backward()
        scaler.unscale_(optimizer)
    else:
        total.backward()
    method.after_backward(model, step)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    method.after_step(model, optimizer, step)
    return loss.detach()


@dataclass
class TrainState:
    """What a checkpoint holds: where training stands and the state dicts to continue from.

    Saved as one dict with a key per field (``to_payload``) plus torch's global RNG states,
    which ``bench.checkpoint.save`` adds as ``rng``; loaded with ``torch.load(weights_only=True)``
    (tensors and plain containers only). The keys are those checkpoints always had, so older
    checkpoints (before ``loss_sum``/``n_batches`` existed) still resume."""

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    method: dict[str, Any]
    phase: int  # index into method.phases()
    epoch: int  # epochs finished in this phase
    batch: int  # batches finished in this epoch: non-zero only for a mid-epoch stop
    step: int  # optimizer steps so far, all phases
    history: list[dict[str, Any]]  # one record per finished epoch
    train_flops: float  # integrated training FLOPs so far
    wall_time: float  # seconds spent training so far, over all processes
    loss_sum: float = 0.0  # sum of this epoch's batch losses so far (mid-epoch)
    n_batches: int = 0  # batches in loss_sum
    scaler: dict[str, Any] | None = None  # fp16 only
    # Multi-process runs: each rank's own loss_sum (mid-epoch), in rank order.
    rank_loss_sums: list[float] | None = None
    rng: dict[str, Any] | None = None  # as loaded; saving records the RNG of that moment

    def to_payload(self) -> dict[str, Any]:
        payload = {
            "model": self.model, "optimizer": self.optimizer, "method": self.method,
            "phase": self.phase, "epoch": self.epoch, "batch": self.batch, "step": self.step,
            "history": self.history, "train_flops": self.train_flops,
            "wall_time": self.wall_time, "loss_sum": self.loss_sum,
            "n_batches": self.n_batches,
        }
        if self.scaler is not None:
            payload["scaler"] = self.scaler
        if self.rank_loss_sums is not None:
            payload["rank_loss_sums"] = self.rank_loss_sums
        return payload

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> TrainState:
        return cls(
            model=payload["model"], optimizer=payload["optimizer"], method=payload["method"],
            phase=int(payload["phase"]), epoch=int(payload["epoch"]),
            batch=int(payload["batch"]), step=int(payload["step"]),
            history=list(payload["history"]), train_flops=float(payload["train_flops"]),
            wall_time=float(payload["wall_time"]),
            loss_sum=float(payload.get("loss_sum", 0.0)),
            n_batches=int(payload.get("n_batches", 0)),
            scaler=payload.get("scaler"), rng=payload["rng"],
            rank_loss_sums=payload.get("rank_loss_sums"),
        )


class Trainer:
    """Trains one run: `method` (an instance built for its run config) in `run_dir`, where its
    checkpoint lives. ``should_stop`` is polled after every step; when it returns true the
    trainer checkpoints at that step boundary and raises Interrupted; ``stop_after_epoch``
    stops the same way after that many epochs (counted over all phases). `harness` is what the
    method's setup may ask of the harness (``ctx.harness``)."""

    def __init__(
        self,
        method: Method,
        run_dir: Path,
        *,
        harness: Harness | None = None,
        data_root: Path | None = None,
        should_stop: Callable[[], bool] | None = None,
        stop_after_epoch: int | None = None,
        log: Callable[[str], None] = lambda _msg: None,
        progress: Callable[[int, int], None] | None = None,
        on_epoch: Callable[[list[dict[str, Any]]], None] | None = None,
        data: DataBundle | None = None,
    ):
        self.method = method
        self.config = method.config
        self.run_dir = Path(run_dir)
        self.harness = harness
        self.data_root = data_root
        self.should_stop = should_stop or (lambda: False)
        self.stop_after_epoch = stop_after_epoch
        self.log = log
        self.progress = progress
        self.on_epoch = on_epoch or (lambda _history: None)
        self.ckpt_path = self.run_dir / "checkpoint.pt"
        # Data given in place of the config's dataset (preflight trains on synthetic data).
        self.given_data = data
        self._compiled: set[int] = set()  # ids of models whose forward is compiled

    def run(self) -> Outcome:
        with accel.backend_flags(self.config.train):
            return self._run()

    def _run(self) -> Outcome:
        saved = self._load()
        self._build(saved)
        phases = self.method.phases()
        first = saved.phase if saved is not None else 0
        global_epoch = sum(p.train.epochs for p in phases[:first])
        for index in range(first, len(phases)):
            resume = saved if index == first else None
            phase = phases[index]
            self._start_phase(index, phase, resume)
            for epoch in range(resume.epoch if resume else 0, phase.train.epochs):
                # Only the first epoch after a mid-epoch stop continues a partial one.
                partial = resume if resume is not None and epoch == resume.epoch else None
                loss_sum, n_batches = self._train_epoch(phase, epoch, global_epoch, partial)
                self._end_epoch(phase, epoch, global_epoch, loss_sum, n_batches,
                                last=index == len(phases) - 1)
            global_epoch += phase.train.epochs
        return self._finish(phases[-1])

    # -- the parts of a run --------------------------------------------------------------
    def _load(self) -> TrainState | None:
        self.config.validate()
        payload = checkpoint.load(self.ckpt_path, map_location="cpu")
        return TrainState.from_payload(payload) if payload is not None else None

    def _build(self, saved: TrainState | None) -> None:
        """Data, the model (from the run seed), masks and the method's setup; on resume the
        method's state from the checkpoint."""
        cfg, method = self.config, self.method
        # This process's rank in a multi-process run (bench.distributed), else None.
        self.rank = distributed.group(cfg.train.world_size)
        self.device = distributed.rank_device(resolve_device(cfg.train.device), self.rank)
        if self.rank is not None and cfg.train.sync_batchnorm and self.device.type != "cuda":
            raise UserError(f"train.sync_batchnorm needs CUDA devices (torch's SyncBatchNorm); "
                            f"this run trains on {self.device.type}")
        # In-memory datasets live on the training device: one copy, not one per batch.
        # Rank 0 first: the ranks of a run never wait on each other's data cache lock.
        self.data = (self.given_data if self.given_data is not None
                     else distributed.rank_0_first(
                         lambda: load_dataset(cfg.data, self.data_root), self.rank)
                     ).to(self.device)
        torch.manual_seed(cfg.seed)
        make_model = ModelMaker(cfg.model.name, self.data.num_classes,
                                tuple(self.data.input_shape))
        self.model = accel.to_device(self._sync_bn(method.build_model(make_model,
                                                                      cfg.sparsity.target)),
                                     self.device, tuple(self.data.input_shape))
        self.masking = Masking.attach(self.model, cfg.sparsity.layer_policy)
        self.ctx = self._context(saved is not None)
        method.setup(self.ctx)
        if saved is not None:
            method.load_state_dict(saved.method)
            self.log(f"resuming from phase {saved.phase} epoch {saved.epoch} "
                     f"batch {saved.batch}")
        self.history = list(saved.history) if saved is not None else []
        # On the device, like the step cost added to it: no host sync per step.
        self.train_flops = torch.tensor(saved.train_flops if saved is not None else 0.0,
                                        dtype=torch.float64, device=self.device)
        self.step = saved.step if saved is not None else 0
        # Images trained on in this process, every rank's share of a batch counted (the
        # progress file's rate is global images per second); a host count, no sync.
        self.images = 0
        self.phase_step = 0  # steps of the current phase done, a resumed run's included
        self.elapsed = saved.wall_time if saved is not None else 0.0
        self.started = time.perf_counter()
        if self.rank is not None:
            self._vote = distributed.StopVote(self.should_stop, self.device)

    def _context(self, resuming: bool) -> SetupContext:
        cfg, data, device = self.config, self.data, self.device
        setup_seed = cfg.seed * 1_000_003 + 999_983

        def batches():
            # Setup data (SNIP/GraSP scores, K-FAC) comes from its own generator so it never
            # shifts the training order.
            g = torch.Generator().manual_seed(setup_seed)
            for x, y in data.batches("train", cfg.train.batch_size, g):
                yield x.to(device), y.to(device)

        return SetupContext(
            model=self.model, masking=self.masking, config=cfg, loss_fn=F.cross_entropy,
            batches=batches,
            steps_per_epoch=num_batches(data.train_size, cfg.train.batch_size),
            device=device, generator=self.method.generator, harness=self.harness,
            resuming=resuming,
        )

    def _start_phase(self, index: int, phase: Phase, resume: TrainState | None) -> None:
        """The method's phase start (which may replace the model: masks are re-attached),
        a fresh optimizer, and on resume the model, optimizer and RNG of the checkpoint."""
        self.phase_index = index
        self.ctx.resuming = resume is not None
        new_model = self.method.start_phase(index, self.model, self.ctx)
        if new_model is not self.model:
            self.model = accel.to_device(self._sync_bn(new_model), self.device,
                                         tuple(self.data.input_shape))
            self.masking = Masking.attach(self.model, self.config.sparsity.layer_policy)
            self.method.masking = self.masking
            self.ctx.model, self.ctx.masking = self.model, self.masking
        self.optimizer = make_optimizer(self.model, phase.train, self.device)
        precision = accel.resolve_precision(phase.train.precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type) if precision == "fp16" else None
        if resume is not None:
            self.model.load_state_dict(resume.model)
            self.optimizer.load_state_dict(resume.optimizer)
            if self.scaler is not None and resume.scaler is not None:
                self.scaler.load_state_dict(resume.scaler)
            checkpoint.set_rng_state(resume.rng)
        self.cost = StepCost(self.model, self.data.input_shape)
        # Compiled after the method's setup, the phase start (which may replace the model) and
        # the step-cost probe (a one-example forward that would be a graph of its own).
        if id(self.model) not in self._compiled:
            accel.maybe_compile(self.model, phase.train)
            self._compiled.add(id(self.model))
        # What the forward goes through: DDP in a multi-process run (wrapped last, so rank 0's
        # state after setup, phase start and resume is broadcast), the model otherwise.
        self.forward = (distributed.wrap(self.model, self.device) if self.rank is not None
                        else self.model)

    def _sync_bn(self, model: nn.Module) -> nn.Module:
        """SyncBatchNorm in place of BatchNorm when a multi-process run asks for it."""
        if self.rank is not None and self.config.train.sync_batchnorm:
            return distributed.sync_batchnorm(model)
        return model

    def _stop_at_step(self) -> bool:
        """Stop now? Polled after every step; in a multi-process run the ranks vote every
        ``distributed.STOP_POLL_STEPS`` steps (a collective), so all stop at the same step."""
        if self.rank is None:
            return self.should_stop()
        return self._vote.at_step(self.step)

    def _stop_now(self) -> bool:
        return self.should_stop() if self.rank is None else self._vote.now()

    def _train_epoch(self, phase: Phase, epoch: int, global_epoch: int,
                     partial: TrainState | None) -> tuple[torch.Tensor, int]:
        """The epoch's steps, from the batch after a mid-epoch checkpoint (`partial`) on.
        Returns the sum of the epoch's batch losses (float64) and their count; checkpoints
        and raises Interrupted when ``should_stop`` asks mid-epoch, Diverged when a loss was
        not finite."""
        train, model, device = phase.train, self.model, self.device
        model.train()
        steps_per_epoch = num_batches(self.data.train_size, train.batch_size)
        set_lr(self.optimizer, train, epoch, 0, steps_per_epoch)
        per_step_lr = train.schedule_unit == "step"
        loss_fn = train_loss(train)
        skip = partial.batch if partial is not None else 0
        start_loss = partial.loss_sum if partial is not None else 0.0
        if partial is not None and self.rank is not None and partial.rank_loss_sums:
            start_loss = partial.rank_loss_sums[self.rank.rank]
        loss_sum = torch.tensor(start_loss, dtype=torch.float64, device=device)
        n_batches = partial.n_batches if partial is not None else 0
        # No autocast context at all for fp32: entering a disabled one costs every step.
        precision = accel.resolve_precision(train.precision, device)
        amp = None if precision == "fp32" else (lambda: accel.autocast(precision, device))
        total_steps = steps_per_epoch * train.epochs
        # A resumed epoch starts at its first unconsumed batch; the skipped ones are not
        # loaded (their augmentation draws are replayed to keep the generator in step).
        batches = self.data.batches("train", train.batch_size,
                                    epoch_generator(self.config.seed, global_epoch + epoch),
                                    self.data.batch_transform if self.config.data.augment
                                    else None, start=skip, pin_memory=device.type == "cuda",
                                    shard=self.rank)
        for batch_index, (x, y) in enumerate(batches, start=skip):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            global_batch, weight = len(y), 1.0
            if self.rank is not None:  # (x, y) is this rank's part of the batch
                global_batch = min(train.batch_size,
                                   self.data.train_size - batch_index * train.batch_size)
                weight = distributed.shard_weight(len(y), global_batch, self.rank)
            if per_step_lr:
                set_lr(self.optimizer, train, epoch, batch_index, steps_per_epoch)
            self.step += 1
            loss = train_step(model, self.method, self.optimizer, x, y, self.step,
                              scaler=self.scaler, amp=amp,
                              loss_fn=loss_fn, forward=self.forward, loss_weight=weight)
            self.train_flops += self.cost.train_flops(global_batch)
            self.images += global_batch
            self.phase_step = epoch * steps_per_epoch + batch_index + 1
            # Added in float64 (exact for a float32 loss); a non-finite loss makes the sum
            # non-finite (float32 losses cannot overflow a float64 sum), checked once per epoch.
            loss_sum += loss
            n_batches += 1
            if self.progress is not None:
                self.progress(self.step, total_steps)
            if self._stop_at_step() and batch_index + 1 < steps_per_epoch:
                state = self._state(epoch, batch_index + 1, float(loss_sum), n_batches)
                if self.rank is not None:
                    state.rank_loss_sums = distributed.gather_floats(float(loss_sum), device)
                self._save(state)
                raise Interrupted(f"stopped at step {self.step}")
        bad = not bool(torch.isfinite(loss_sum))
        if self.rank is not None:
            # A non-finite shard loss on any rank is the run's; the loss is the global batch's.
            bad = distributed.any_true(bad, device)
            loss_sum = torch.tensor(sum(distributed.gather_floats(float(loss_sum), device))
                                    / self.rank.world_size, dtype=torch.float64)
        if bad:
            raise Diverged(f"loss became NaN/inf in epoch {global_epoch + epoch + 1}")
        return loss_sum, n_batches

    def _end_epoch(self, phase: Phase, epoch: int, global_epoch: int, loss_sum: torch.Tensor,
                   n_batches: int, last: bool) -> None:
        """The method's end_epoch, evaluation, the epoch's record, a checkpoint, and a stop
        when asked (``should_stop``, ``stop_after_epoch``) unless training is over."""
        self.method.end_epoch(self.model, self.optimizer, epoch)
        if self.rank is not None and not self.rank.writes:
            # Rank 0 evaluates, records and checkpoints; the others only agree on stopping.
            if self._stop_now() or self._stopped_after(global_epoch + epoch + 1, last, epoch,
                                                        phase):
                raise Interrupted(f"stopped after epoch {global_epoch + epoch + 1}")
            return
        metrics = evaluate(self.model, self.data, phase.train, self.device)
        record = {
            "epoch": global_epoch + epoch + 1, "phase": phase.name, "step": self.step,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_loss": float(loss_sum) / max(n_batches, 1),
            "density": self.masking.density(), **metrics,
        }
        self.history.append(record)
        self.on_epoch(self.history)
        self.log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in record.items()))
        self._save(self._state(epoch + 1, 0))
        done_epochs = global_epoch + epoch + 1
        if self._stop_now() or self._stopped_after(done_epochs, last, epoch, phase):
            raise Interrupted(f"stopped after epoch {done_epochs}")

    def _stopped_after(self, done_epochs: int, last: bool, epoch: int, phase: Phase) -> bool:
        finished = last and epoch + 1 == phase.train.epochs
        return (self.stop_after_epoch is not None and done_epochs >= self.stop_after_epoch
                and not finished)

    def _finish(self, last_phase: Phase) -> Outcome:
        model = self.method.finalize(self.model)
        final = (evaluate(model, self.data, last_phase.train, self.device)
                 if self.rank is None or self.rank.writes else {})
        return Outcome(model=model, method=self.method, data=self.data, history=self.history,
                       train_flops=float(self.train_flops),
                       wall_time_s=self.elapsed + time.perf_counter() - self.started,
                       final=final)

    # -- checkpoints ---------------------------------------------------------------------
    def _state(self, epoch: int, batch: int, loss_sum: float = 0.0,
               n_batches: int = 0) -> TrainState:
        """The train state now, at `batch` of `epoch` of the current phase."""
        return TrainState(
            model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
            method=self.method.state_dict(), phase=self.phase_index, epoch=epoch,
            batch=batch, step=self.step, history=self.history,
            train_flops=float(self.train_flops),
            wall_time=self.elapsed + time.perf_counter() - self.started,
            loss_sum=loss_sum, n_batches=n_batches,
            scaler=self.scaler.state_dict() if self.scaler is not None else None,
        )

    def _save(self, state: TrainState) -> None:
        if self.rank is None or self.rank.writes:
            checkpoint.save(self.ckpt_path, state.to_payload())
