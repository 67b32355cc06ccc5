"""Inference time of EigenDamage's rebuilt (genuinely smaller) networks against the dense
network they came from, measured in the same run; the ratio is printed and stored in
``extra_info``. Pruning uses K-FAC factors from random data: timing depends only on shapes."""

from __future__ import annotations

import copy

import pytest
import torch

from bench.flops import count
from bench.models import build_model
from methods.eigendamage.pruner import eligible_slots, prune_round, slot_params

CASES = {
    # name: (model, input shape, batch)
    "mnist1d_cnn": ("mnist1d_cnn", (40,), 1000),
    "resnet20": ("resnet20", (3, 32, 32), 64),
}
REDUCTIONS = (0.5, 0.8)
MEDIANS: dict[tuple[str, str], float] = {}


def _pruned(model: torch.nn.Module, shape, reduction: float) -> torch.nn.Module:
    model = copy.deepcopy(model)
    slots = eligible_slots(model)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(64, *shape, generator=gen), torch.randint(0, 10, (64,),
                                                                     generator=gen))]
    params = sum(slot_params(model.get_submodule(s)) for s in slots)
    biases = params - sum(model.get_submodule(s).weight.numel() for s in slots)
    prune_round(model, slots, batches, int((1 - reduction) * params) - biases, limit=0.95,
                generator=gen)
    return model


@pytest.fixture(scope="module")
def networks():
    torch.manual_seed(0)
    nets = {}
    for case, (name, shape, batch) in CASES.items():
        dense = build_model(name, 10, shape).eval()
        x = torch.randn(batch, *shape)
        nets[(case, "dense")] = (dense, x)
        for r in REDUCTIONS:
            nets[(case, f"ed{int(r * 100)}")] = (_pruned(dense, shape, r).eval(), x)
    return nets


def _measure(benchmark, networks, case: str, variant: str) -> None:
    model, x = networks[(case, variant)]
    counts = count(model, tuple(x.shape[1:]))
    benchmark.extra_info.update(params=counts.params_total, macs=counts.macs)

    def infer():
        with torch.inference_mode():
            return model(x)

    out = benchmark(infer)
    assert out.shape == (x.shape[0], 10)
    stats = getattr(benchmark, "stats", None)
    if stats is None:  # --benchmark-disable
        return
    MEDIANS[(case, variant)] = stats.stats.median
    dense = MEDIANS.get((case, "dense"))
    if variant != "dense" and dense:
        ratio = stats.stats.median / dense
        benchmark.extra_info["time_ratio_vs_dense"] = ratio
        dense_macs = count(networks[(case, "dense")][0], tuple(x.shape[1:])).macs
        print(f"\n{case} {variant}: inference time {ratio:.3f}x dense, "
              f"MACs {counts.macs / dense_macs:.3f}x dense")


@pytest.mark.parametrize("case", list(CASES))
def test_dense_inference(benchmark, networks, case):
    _measure(benchmark, networks, case, "dense")


@pytest.mark.parametrize("variant", [f"ed{int(r * 100)}" for r in REDUCTIONS])
@pytest.mark.parametrize("case", list(CASES))
def test_eigendamage_inference(benchmark, networks, case, variant):
    _measure(benchmark, networks, case, variant)
