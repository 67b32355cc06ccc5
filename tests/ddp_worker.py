"""One rank of the multi-process checks of tests/test_ddp.py (``python -m tests.ddp_worker
ROOT REPORT METHOD...`` with torchrun's variables in the environment, gloo).

For each method it trains a 2-rank run with the real Trainer and, after the method's setup and
phase start, after every step and every epoch end, gathers from every rank the model's
parameters and buffers (masks included) and the method's ``state_dict``, and compares them
exactly. EigenDamage's dense run is trained first as a full 2-rank run (``run_body``) with an
audit hook recording every file this rank creates, writes, renames or removes under ROOT.
Rank 0 writes REPORT (JSON): per method the number of comparisons and of steps that changed a
mask, and per rank the files written.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from bench import distributed
from bench.config import MethodConfig, RunConfig
from bench.run import RunHarness, run_body
from bench.train import Trainer, intra_op_threads, make_method
from methods.str_method import STRHparams
from tests.helpers import tiny_config

EPOCHS = 2
# STR calibrates with two one-epoch trials, trained by both ranks together (bench.trial).
HPARAMS = {"str": STRHparams(calibration_max_runs=2)}


def config(name: str) -> RunConfig:
    cfg = tiny_config(name, epochs=EPOCHS, world_size=2, optimizer="sgd", lr=0.05)
    if name in HPARAMS:
        cfg = replace(cfg, method=MethodConfig(name, HPARAMS[name]))
    return cfg


def same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape \
            and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    return a == b


class Watch:
    """The cross-rank comparisons of one method's training."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.compared = 0
        self.mask_changes = 0
        self.previous: dict[str, torch.Tensor] | None = None

    def check(self, model: torch.nn.Module, method: Any, where: str) -> None:
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        snap = (state, method.state_dict())
        every: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(every, snap)
        for r in range(1, len(every)):
            for key in every[0][0]:
                assert same(every[0][0][key], every[r][0][key]), \
                    f"{self.name} {where}: {key} differs on rank {r}"
            assert same(every[0][1], every[r][1]), f"{self.name} {where}: method state differs"
        masks = {k: v for k, v in state.items() if k.endswith("mask")}
        if self.previous is not None and masks.keys() == self.previous.keys() and \
                not all(torch.equal(masks[k], self.previous[k]) for k in masks):
            self.mask_changes += 1
        self.previous = masks
        self.compared += 1

    def attach(self, method: Any) -> None:
        start_phase, after_step, end_epoch = method.start_phase, method.after_step, \
            method.end_epoch

        def on_start_phase(index, model, ctx):
            model = start_phase(index, model, ctx)
            self.check(model, method, f"phase {index} start")
            return model

        def on_after_step(model, optimizer, step):
            after_step(model, optimizer, step)
            self.check(model, method, f"step {step}")

        def on_end_epoch(model, optimizer, epoch):
            end_epoch(model, optimizer, epoch)
            self.check(model, method, f"end of epoch {epoch}")

        method.start_phase, method.after_step, method.end_epoch = \
            on_start_phase, on_after_step, on_end_epoch


def main(root: Path, report: Path, names: list[str]) -> None:
    rank = distributed.init_from_env("cpu")
    writes: list[str] = []

    def audit(event: str, args: tuple) -> None:
        path = None
        if event == "open" and isinstance(args[0], (str, Path)) and args[1] and \
                any(c in str(args[1]) for c in "wax+"):
            path = args[0]
        elif event in ("os.rename", "os.replace"):
            path = args[1]
        elif event in ("os.remove", "os.mkdir", "os.unlink"):
            path = args[0]
        if path is not None and Path(path).resolve().is_relative_to(root):
            writes.append(str(Path(path).resolve().relative_to(root)))

    out: dict[str, Any] = {"methods": {}}
    sys.addaudithook(audit)
    harness = RunHarness(root)
    for name in names:
        cfg = config(name)
        method = make_method(cfg)
        for dep in method.dependencies():
            result = run_body(dep, root, rank=rank)
            out.setdefault("dependency_status", []).append(result["status"])
        watch = Watch(name)
        watch.attach(method)
        trainer = Trainer(method, root / "trainer" / name, harness=harness)
        with intra_op_threads(cfg.train):
            trainer.run()
        # What the progress file's rate counts: global images (bench.progress), on every rank.
        images: list[Any] = [None] * rank.world_size
        dist.all_gather_object(images, trainer.images)
        out["methods"][name] = {"compared": watch.compared, "mask_changes": watch.mask_changes,
                                "images": images}
    every: list[Any] = [None] * rank.world_size
    dist.all_gather_object(every, sorted(set(writes)))
    out["writes"] = every
    if rank.writes:
        report.write_text(json.dumps(out))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve(), Path(sys.argv[2]), sys.argv[3:])
