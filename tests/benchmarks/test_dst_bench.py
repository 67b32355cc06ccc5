"""Training-step cost of DeepR, SET and DSR against the dense step of the same model, measured
in the same run (``tox -e bench``).

For every method two things are timed: a training step including all its per-step hooks (for
DeepR that includes its every-step rewiring), and one rewiring pass on its own (SET, DSR).
The amortized ratio is (step + rewiring * rewirings per step) / dense step, with the number of
rewirings that the method's schedule gives for the stated run: the MNIST-1D CNN on the smoke
recipe (40 epochs of 40 steps), ResNet-8 on the DSR reference run (200 epochs of 500 steps).
Ratios are printed and stored in ``extra_info``; nothing asserts on time.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench.config import MethodConfig, ModelConfig, RunConfig, SparsityConfig, TrainConfig
from bench.models import build_model
from methods import get_method
from methods.base import SetupContext
from methods.deepr import DeepRHparams
from methods.dsr import DSRHparams
from methods.masking import Masking
from methods.set_method import SETHparams

CASES = {
    # name: (input shape, batch, epochs, steps per epoch of the run the rewiring is amortized on)
    "resnet8": ((3, 32, 32), 100, 200, 500),
    "mnist1d_cnn": ((40,), 100, 40, 40),
}
# Timed rounds per case: on a shared 2-core machine the minimum over many rounds is the
# stable statistic, so ratios use minima (medians are reported alongside).
ROUNDS = {"resnet8": 15, "mnist1d_cnn": 300}
VARIANTS = {
    "dense": ("dense", None),
    "static": ("static", None),
    "deepr": ("deepr", DeepRHparams()),
    "deepr-dsr": ("deepr", DeepRHparams(variant="dsr")),
    "set": ("set", SETHparams()),
    "set-dsr": ("set", SETHparams(variant="dsr")),
    "dsr": ("dsr", DSRHparams()),
}
REWIRING = ("set", "set-dsr", "dsr")
SPARSITY = 0.9
MEDIANS: dict[tuple[str, str, str], tuple[float, float]] = {}


class Setup:
    def __init__(self, case: str, variant: str):
        shape, batch, epochs, spe = CASES[case]
        method_name, hparams = VARIANTS[variant]
        self.config = RunConfig(
            model=ModelConfig(case), method=MethodConfig(method_name, hparams),
            train=TrainConfig(epochs=epochs, batch_size=batch, optimizer="sgd", lr=0.1,
                              momentum=0.9, weight_decay=5e-4),
            sparsity=SparsityConfig(target=SPARSITY if method_name != "dense" else 0.0),
        )
        torch.manual_seed(0)
        self.model = build_model(case, 10, shape)
        self.masking = Masking.attach(self.model, "all")
        self.method = get_method(method_name)(self.config, hparams)
        ctx = SetupContext(model=self.model, masking=self.masking, config=self.config,
                           loss_fn=F.cross_entropy, batches=lambda: iter(()),
                           steps_per_epoch=spe, device=torch.device("cpu"),
                           generator=self.method.generator)
        self.method.setup(ctx)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9,
                                   weight_decay=5e-4)
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(batch, *shape, generator=g)
        self.y = torch.randint(10, (batch,), generator=g)
        self.total_steps = epochs * spe
        self.epochs = epochs
        # A step inside the rewiring window that is not itself a periodic rewiring step, so the
        # step timing holds only the per-step hooks (DeepR rewires on every step anyway).
        schedule = getattr(self.method, "schedule", None)
        self.step_number = 1
        if schedule is not None:
            self.step_number = next(s for s in range(2, self.total_steps)
                                    if not schedule.is_rewire_step(s))

    def step(self) -> None:
        model, method, opt = self.model, self.method, self.opt
        loss = F.cross_entropy(model(self.x), self.y)
        extra = method.extra_loss(model)
        total = loss if extra is None else loss + extra
        opt.zero_grad(set_to_none=True)
        total.backward()
        method.after_backward(model, self.step_number)
        opt.step()
        method.after_step(model, opt, self.step_number)

    def rewire(self) -> None:
        m = self.method
        if self.config.method.name == "dsr":
            m.reallocate()
        elif m.hparams.variant == "dsr":
            m.rewire_dsr()
        else:
            m.rewire_paper(self.opt)

    def rewirings_per_step(self) -> float:
        m = self.method
        if self.config.method.name == "set" and m.hparams.variant == "paper":
            return (self.epochs - 1) / self.total_steps
        return len(m.schedule.points(self.total_steps)) / self.total_steps


def _stats(benchmark) -> tuple[float, float] | None:
    stats = getattr(benchmark, "stats", None)
    return None if stats is None else (stats.stats.min, stats.stats.median)


STEP_PARAMS = [(c, v) for c in CASES for v in VARIANTS]


@pytest.mark.parametrize(("case", "variant"), STEP_PARAMS, ids=[f"{c}-{v}" for c, v in STEP_PARAMS])
def test_training_step(benchmark, case, variant):
    setup = Setup(case, variant)
    benchmark.pedantic(setup.step, rounds=ROUNDS[case], warmup_rounds=2)
    for name, m in setup.masking.masks.items():
        w = setup.masking.weights()[name]
        assert torch.count_nonzero(w.detach()[~m]) == 0
    stats = _stats(benchmark)
    if stats is None:  # --benchmark-disable
        return
    MEDIANS[(case, variant, "step")] = stats
    dense = MEDIANS.get((case, "dense", "step"))
    if variant != "dense" and dense:
        ratio, ratio_median = stats[0] / dense[0], stats[1] / dense[1]
        benchmark.extra_info.update(step_ratio_vs_dense=ratio,
                                    step_ratio_vs_dense_median=ratio_median)
        print(f"\n{case} {variant}: step incl. hooks {ratio:.3f}x dense (min; median "
              f"{ratio_median:.3f}x; {stats[0] * 1e3:.2f} ms vs {dense[0] * 1e3:.2f} ms)")


REWIRE_PARAMS = [(c, v) for c in CASES for v in REWIRING]


@pytest.mark.parametrize(("case", "variant"), REWIRE_PARAMS,
                         ids=[f"{c}-{v}" for c, v in REWIRE_PARAMS])
def test_rewiring_amortized(benchmark, case, variant):
    setup = Setup(case, variant)
    setup.step()
    counts = sum(setup.masking.nonzero().values())
    benchmark.pedantic(setup.rewire, rounds=ROUNDS[case], warmup_rounds=2)
    assert sum(setup.masking.nonzero().values()) == counts
    stats = _stats(benchmark)
    if stats is None:
        return
    per_step = setup.rewirings_per_step()
    benchmark.extra_info.update(rewire_s=stats[0], rewirings_per_step=per_step)
    dense = MEDIANS.get((case, "dense", "step"))
    step = MEDIANS.get((case, variant, "step"))
    if dense and step:
        amortized = (step[0] + stats[0] * per_step) / dense[0]
        benchmark.extra_info["amortized_ratio_vs_dense"] = amortized
        print(f"\n{case} {variant}: one rewiring {stats[0] * 1e3:.2f} ms, "
              f"{per_step * 100:.2f} per 100 steps; amortized {amortized:.3f}x dense (min)")
