"""The training loop: seeds, data order, method hooks, evaluation, per-epoch checkpoints.

Determinism: model init draws from torch's global RNG seeded with the run seed; each epoch's
data order (and augmentation) comes from a generator derived from (seed, epoch), never carried;
the method has its own generator; all of them, plus the global RNG state, are in the checkpoint.
On CPU an interrupted and resumed run therefore ends with bit-identical weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench import checkpoint
from bench.config import RunConfig, TrainConfig
from bench.data import load_dataset
from bench.data.base import DataBundle, epoch_generator, num_batches
from bench.flops import StepCost
from bench.models import ModelMaker
from bench.recipe import make_optimizer, set_lr, train_loss
from methods import get_method
from methods.base import Method, SetupContext
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
    from dataclasses import replace

    return replace(config, method=replace(config.method, hparams=method_cls.Hparams()))


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
    if train.precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if train.precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


class Trainer:
    """Trains one run. ``should_stop`` is polled after every step; when it returns true the
    trainer checkpoints at that step boundary and raises Interrupted."""

    def __init__(
        self,
        config: RunConfig,
        run_dir: Path,
        root: Path | None = None,
        data_root: Path | None = None,
        should_stop: Callable[[], bool] | None = None,
        stop_after_epoch: int | None = None,
        log: Callable[[str], None] = lambda _msg: None,
        progress: Callable[[int, int], None] | None = None,
        on_epoch: Callable[[list[dict[str, Any]]], None] | None = None,
        data: DataBundle | None = None,
    ):
        self.config = resolve_hparams(config)
        self.run_dir = Path(run_dir)
        self.root = root
        self.data_root = data_root
        self.should_stop = should_stop or (lambda: False)
        self.stop_after_epoch = stop_after_epoch
        self.log = log
        self.progress = progress
        self.on_epoch = on_epoch or (lambda _history: None)
        self.ckpt_path = self.run_dir / "checkpoint.pt"
        # Data given in place of the config's dataset (preflight trains on synthetic data).
        self.data = data

    # -- construction --------------------------------------------------------------------
    def _context(self, model, masking, data, device, resuming) -> SetupContext:
        cfg = self.config
        setup_seed = cfg.seed * 1_000_003 + 999_983

        def batches():
            # Setup data (SNIP/GraSP scores, K-FAC) comes from its own generator so it never
            # shifts the training order.
            g = torch.Generator().manual_seed(setup_seed)
            for x, y in data.batches("train", cfg.train.batch_size, g):
                yield x.to(device), y.to(device)

        return SetupContext(
            model=model, masking=masking, config=cfg, loss_fn=F.cross_entropy,
            batches=batches,
            steps_per_epoch=num_batches(data.train_size, cfg.train.batch_size),
            device=device, generator=self.method.generator, root=self.root,
            data_root=self.data_root, resuming=resuming,
        )

    def run(self) -> Outcome:
        cfg = self.config
        cfg.validate()
        device = resolve_device(cfg.train.device)
        # In-memory datasets live on the training device: one copy, not one per batch.
        data = (self.data if self.data is not None
                else load_dataset(cfg.data, self.data_root)).to(device)
        self.method = method = get_method(cfg.method.name)(cfg, cfg.method.hparams)
        state = checkpoint.load(self.ckpt_path, map_location="cpu")
        resuming = state is not None

        torch.manual_seed(cfg.seed)

        make_model = ModelMaker(cfg.model.name, data.num_classes, tuple(data.input_shape))
        model = method.build_model(make_model, cfg.sparsity.target).to(device)
        masking = Masking.attach(model, cfg.sparsity.layer_policy)
        ctx = self._context(model, masking, data, device, resuming)
        method.setup(ctx)
        if resuming:
            method.load_state_dict(state["method"])
            self.log(f"resuming from phase {state['phase']} epoch {state['epoch']} "
                     f"batch {state['batch']}")

        history: list[dict[str, Any]] = list(state["history"]) if resuming else []
        train_flops = torch.tensor(float(state["train_flops"]) if resuming else 0.0,
                                   dtype=torch.float64)
        elapsed = float(state["wall_time"]) if resuming else 0.0
        started = time.perf_counter()
        phases = method.phases()
        first_phase = state["phase"] if resuming else 0
        step = int(state["step"]) if resuming else 0
        global_epoch = sum(p.train.epochs for p in phases[:first_phase])

        for phase_index in range(first_phase, len(phases)):
            phase = phases[phase_index]
            resume_here = resuming and phase_index == first_phase
            ctx.resuming = resume_here
            new_model = method.start_phase(phase_index, model, ctx)
            if new_model is not model:
                model = new_model.to(device)
                masking = Masking.attach(model, cfg.sparsity.layer_policy)
                method.masking = masking
                ctx.model, ctx.masking = model, masking
            optimizer = make_optimizer(model, phase.train)
            scaler = torch.amp.GradScaler(device.type) if phase.train.precision == "fp16" \
                else None
            start_epoch, skip_batches, partial = 0, 0, (0.0, 0)
            if resume_here:
                model.load_state_dict(state["model"])
                optimizer.load_state_dict(state["optimizer"])
                if scaler is not None and "scaler" in state:
                    scaler.load_state_dict(state["scaler"])
                checkpoint.set_rng_state(state["rng"])
                start_epoch, skip_batches = int(state["epoch"]), int(state["batch"])
                partial = (float(state.get("loss_sum", 0.0)), int(state.get("n_batches", 0)))
            cost = StepCost(model, data.input_shape)
            steps_per_epoch = num_batches(data.train_size, phase.train.batch_size)
            total_steps = steps_per_epoch * phase.train.epochs
            loss_fn = train_loss(phase.train)
            per_step_lr = phase.train.schedule_unit == "step"

            for epoch in range(start_epoch, phase.train.epochs):
                model.train()
                set_lr(optimizer, phase.train, epoch, 0, steps_per_epoch)
                loss_sum = torch.tensor(partial[0], dtype=torch.float64, device=device)
                bad = torch.zeros((), dtype=torch.bool, device=device)
                n_batches = partial[1]
                # A resumed epoch starts at its first unconsumed batch; the skipped ones are
                # not loaded (their augmentation draws are replayed to keep the generator).
                batches = data.batches("train", phase.train.batch_size,
                                       epoch_generator(cfg.seed, global_epoch + epoch),
                                       data.batch_transform if cfg.data.augment else None,
                                       start=skip_batches, pin_memory=device.type == "cuda")
                for batch_index, (x, y) in enumerate(batches, start=skip_batches):
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    if per_step_lr:
                        set_lr(optimizer, phase.train, epoch, batch_index, steps_per_epoch)
                    with autocast(phase.train, device):
                        loss = loss_fn(model(x), y)
                        extra = method.extra_loss(model)
                        total = loss if extra is None else loss + extra
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
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
                    train_flops += cost.train_flops(len(y)).to(train_flops.device)
                    loss_sum += loss.detach().double()
                    bad |= ~torch.isfinite(loss.detach())
                    n_batches += 1
                    if self.progress is not None:
                        self.progress(step, total_steps)
                    if self.should_stop() and batch_index + 1 < steps_per_epoch:
                        self._save(model, optimizer, scaler, method, phase_index, epoch,
                                   batch_index + 1, step, history, train_flops,
                                   elapsed + time.perf_counter() - started,
                                   loss_sum=float(loss_sum), n_batches=n_batches)
                        raise Interrupted(f"stopped at step {step}")
                skip_batches, partial = 0, (0.0, 0)
                if bool(bad):
                    raise Diverged(f"loss became NaN/inf in epoch {global_epoch + epoch + 1}")
                method.end_epoch(model, optimizer, epoch)
                metrics = evaluate(model, data, phase.train, device)
                record = {
                    "epoch": global_epoch + epoch + 1, "phase": phase.name, "step": step,
                    "lr": optimizer.param_groups[0]["lr"],
                    "train_loss": float(loss_sum) / max(n_batches, 1),
                    "density": masking.density(), **metrics,
                }
                history.append(record)
                self.on_epoch(history)
                self.log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                  for k, v in record.items()))
                self._save(model, optimizer, scaler, method, phase_index, epoch + 1, 0, step,
                           history, train_flops, elapsed + time.perf_counter() - started)
                done_epochs = global_epoch + epoch + 1
                if self.should_stop() or (
                    self.stop_after_epoch is not None and done_epochs >= self.stop_after_epoch
                    and not (phase_index == len(phases) - 1 and epoch + 1 == phase.train.epochs)
                ):
                    raise Interrupted(f"stopped after epoch {done_epochs}")
            global_epoch += phase.train.epochs

        model = method.finalize(model)
        final = evaluate(model, data, phases[-1].train, device)
        return Outcome(model=model, method=method, data=data, history=history,
                       train_flops=float(train_flops),
                       wall_time_s=elapsed + time.perf_counter() - started, final=final)

    def _save(self, model, optimizer, scaler, method, phase, epoch, batch, step, history,
              train_flops, wall_time, loss_sum=0.0, n_batches=0) -> None:
        payload = {
            "loss_sum": loss_sum, "n_batches": n_batches,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "method": method.state_dict(), "phase": phase, "epoch": epoch, "batch": batch,
            "step": step, "history": history, "train_flops": float(train_flops),
            "wall_time": wall_time,
        }
        if scaler is not None:
            payload["scaler"] = scaler.state_dict()
        checkpoint.save(self.ckpt_path, payload)
