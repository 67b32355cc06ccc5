"""Prune-time cost of SNIP and GraSP as a multiple of one training epoch of the same model, and
STR's training step against the dense step, measured in the same run (``tox -e bench``).

The epoch is the smoke recipe's: 4,000 MNIST-1D-shaped examples in batches of 100 (40 Adam
steps) for the MNIST-1D CNN; 50,000 CIFAR-shaped examples in batches of 128 (391 SGD steps)
for ResNet-8, timed as one step times the steps per epoch. Pruning is timed from a fresh
model through ``setup`` (scoring copy, data fetch, scores, global top-k). STR's step includes
its per-step hook (mask sync) and runs on the thresholded weights; dense runs the same
optimizer. Ratios use minima over rounds (the stable statistic on a shared machine), medians
alongside; they are printed and stored in ``extra_info``. Nothing asserts on time.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench.config import MethodConfig, ModelConfig, RunConfig, SparsityConfig, TrainConfig
from bench.models import build_model
from bench.train import make_optimizer
from methods import get_method
from methods.base import SetupContext
from methods.masking import Masking
from methods.str_method import STRHparams

CASES = {
    # name: (input shape, batch, examples per epoch, optimizer of the recipe)
    "mnist1d_cnn": ((40,), 100, 4000, "adam"),
    "resnet8": ((3, 32, 32), 128, 50000, "sgd"),
}
STEP_ROUNDS = {"mnist1d_cnn": 300, "resnet8": 20}
PRUNE_ROUNDS = {"mnist1d_cnn": 30, "resnet8": 5}
SPARSITY = 0.9
RESULTS: dict[tuple[str, str], tuple[float, float]] = {}


def make_config(case: str, method: str, hparams=None, optimizer: str | None = None):
    shape, batch, _, opt = CASES[case]
    return RunConfig(
        model=ModelConfig(case), method=MethodConfig(method, hparams),
        train=TrainConfig(batch_size=batch, optimizer=optimizer or opt,
                          lr=0.01 if (optimizer or opt) == "adam" else 0.1,
                          weight_decay=5e-4),
        sparsity=SparsityConfig(target=SPARSITY if method != "dense" else 0.0),
    )


class Setup:
    def __init__(self, case: str, method: str, hparams=None, optimizer: str | None = None):
        shape, batch, examples, _ = CASES[case]
        self.config = make_config(case, method, hparams, optimizer)
        cls = get_method(method)
        self.hparams = hparams if hparams is not None else cls.Hparams()
        g = torch.Generator().manual_seed(1)
        # Pruning reads the first few hundred examples of the setup stream; a step reuses one
        # batch. The epoch itself is timed as steps per epoch x one dense step.
        n = min(examples, 2000) if method in ("snip", "grasp") else batch
        self.data_x = torch.randn(n, *shape, generator=g)
        self.data_y = torch.randint(10, (n,), generator=g)
        self.x, self.y = self.data_x[:batch], self.data_y[:batch]
        self.batch = batch
        self.steps_per_epoch = -(-examples // batch)
        self.case, self.shape, self.cls = case, shape, cls
        self.build()

    def batches(self):
        for i in range(0, len(self.data_y), self.batch):
            yield self.data_x[i : i + self.batch], self.data_y[i : i + self.batch]

    def build(self) -> None:
        torch.manual_seed(0)
        self.model = build_model(self.case, 10, self.shape)
        self.masking = Masking.attach(self.model, "all")
        self.method = self.cls(self.config, self.hparams)
        self.ctx = SetupContext(model=self.model, masking=self.masking, config=self.config,
                                loss_fn=F.cross_entropy, batches=self.batches,
                                steps_per_epoch=self.steps_per_epoch,
                                device=torch.device("cpu"), generator=self.method.generator)

    def setup(self) -> None:
        self.method.setup(self.ctx)
        self.opt = make_optimizer(self.model, self.method.phases()[0].train)

    def step(self) -> None:
        model, method, opt = self.model, self.method, self.opt
        loss = F.cross_entropy(model(self.x), self.y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        method.after_backward(model, 1)
        opt.step()
        method.after_step(model, opt, 1)


def _stats(benchmark) -> tuple[float, float] | None:
    stats = getattr(benchmark, "stats", None)
    return None if stats is None else (stats.stats.min, stats.stats.median)


STEP_VARIANTS = {
    "dense": ("dense", None, None),
    "str": ("str", STRHparams(weight_decay=5e-4), None),
    "dense-sgd": ("dense", None, "sgd"),
    "str-sgd": ("str", STRHparams(weight_decay=5e-4), "sgd"),
}
STEP_PARAMS = [(c, v) for c in CASES for v in STEP_VARIANTS]


@pytest.mark.parametrize(("case", "variant"), STEP_PARAMS,
                         ids=[f"{c}-{v}" for c, v in STEP_PARAMS])
def test_training_step(benchmark, case, variant):
    method, hparams, optimizer = STEP_VARIANTS[variant]
    setup = Setup(case, method, hparams, optimizer)
    setup.setup()
    benchmark.pedantic(setup.step, rounds=STEP_ROUNDS[case], warmup_rounds=3)
    # The masks always describe the weights the forward pass uses.
    for module in setup.masking.layers.values():
        assert torch.equal(module.weight_mask, module.weight != 0)
    stats = _stats(benchmark)
    if stats is None:  # --benchmark-disable
        return
    RESULTS[(case, variant)] = stats
    benchmark.extra_info["epoch_s"] = stats[0] * setup.steps_per_epoch
    base = "dense-sgd" if variant.endswith("-sgd") else "dense"
    dense = RESULTS.get((case, base))
    if method == "str" and dense:
        ratio, ratio_median = stats[0] / dense[0], stats[1] / dense[1]
        benchmark.extra_info.update(step_ratio_vs_dense=ratio,
                                    step_ratio_vs_dense_median=ratio_median)
        print(f"\n{case} {variant}: step incl. hooks {ratio:.3f}x dense (min; median "
              f"{ratio_median:.3f}x; {stats[0] * 1e3:.2f} ms vs {dense[0] * 1e3:.2f} ms)")


PRUNE_PARAMS = [(c, m) for c in CASES for m in ("snip", "grasp")]


@pytest.mark.parametrize(("case", "method"), PRUNE_PARAMS,
                         ids=[f"{c}-{m}" for c, m in PRUNE_PARAMS])
def test_prune_cost_in_epochs(benchmark, case, method):
    setup = Setup(case, method)
    benchmark.pedantic(setup.setup, setup=lambda: (setup.build(), ((), {}))[1],
                       rounds=PRUNE_ROUNDS[case], warmup_rounds=1)
    total = sum(m.numel() for m in setup.masking.masks.values())
    assert sum(setup.masking.nonzero().values()) == total - int(SPARSITY * total + 1e-9)
    stats = _stats(benchmark)
    dense = RESULTS.get((case, "dense"))
    if stats is None or dense is None:
        return
    epoch = dense[0] * setup.steps_per_epoch
    ratio = stats[0] / epoch
    benchmark.extra_info.update(prune_s=stats[0], epoch_s=epoch, prune_epochs=ratio,
                                prune_epochs_median=stats[1] / (dense[1] *
                                                                 setup.steps_per_epoch))
    print(f"\n{case} {method}: prune {stats[0] * 1e3:.1f} ms = {ratio:.3f} epochs "
          f"(epoch {epoch * 1e3:.0f} ms, min)")
