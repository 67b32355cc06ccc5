"""The contract every model meets, parametrized over the registry (a model added to
``bench.models.MODELS`` is tested here without new test code) plus two torchvision models, one
with inferred width groups and one without:

- it builds at its base width, and at unequal per-group channels where each group really
  controls a width (one more channel in any group adds parameters), with logits of shape
  (batch, classes) on its dataset's input shape;
- its dense MACs (``bench.flops``) equal ``torch.utils.flop_counter``'s conv + Linear count
  (FlopCounterMode counts 2 FLOPs per MAC for convolution, mm and addmm);
- thin dense solves a 90% budget for it within 1% (a single-group model whose count steps over
  the window gets the nearest width instead), or the model says why it cannot and thin dense
  refuses it: as a grid error before anything runs, and at build time.

Everything is built on the ``meta`` device (shapes only: no memory, no RNG draws, no arithmetic),
so even ResNet-50 and VGG-19 cost milliseconds.
"""

from __future__ import annotations

import textwrap

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.config import MethodConfig, ModelConfig, RunConfig, SparsityConfig
from bench.errors import UserError
from bench.flops import count
from bench.grid import load_grid
from bench.models import MODELS, ModelMaker, build_model, get_model_spec
from methods.thin_dense import ThinDense, count_channels, solve, sparse_nonzeros, within_tolerance

NAMES = sorted(MODELS) + ["tv:resnet18", "tv:mobilenet_v2"]
# FlopCounterMode's names for the ops a Conv or Linear runs.
CONV_LINEAR_OPS = {"aten.convolution", "aten.addmm", "aten.mm"}


def meta_build(name: str, channels=None) -> torch.nn.Module:
    classes, shape = get_model_spec(name).example
    with torch.device("meta"):
        return build_model(name, classes, shape, channels=channels)


def logits_shape(model: torch.nn.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    model.eval()
    with torch.no_grad():
        return tuple(model(torch.zeros((2, *shape), device="meta")).shape)


def unequal_channels(base: tuple[int, ...]) -> tuple[int, ...]:
    """A different fraction of each group's base width: 1/2, 1/3, 1/4, ... (at least 1), plus
    the group index so equal bases still get different counts."""
    return tuple(max(1, b // (g + 2)) + g for g, b in enumerate(base))


@pytest.mark.parametrize("name", NAMES)
def test_builds_at_base_and_at_unequal_channels(name):
    spec = get_model_spec(name)
    classes, shape = spec.example
    base = meta_build(name)
    assert logits_shape(base, shape) == (2, classes)
    if not spec.has_width:
        assert spec.no_width_reason
        with pytest.raises(UserError, match="has no width knob"):
            meta_build(name, channels=(8,))
        return
    assert not spec.no_width_reason
    channels = unequal_channels(spec.base_channels)
    assert len(set(channels)) == len(channels) > 0
    thin = meta_build(name, channels)
    assert logits_shape(thin, shape) == (2, classes)
    make = ModelMaker(name, classes, shape)
    params = count_channels(make, channels)
    assert params < count_channels(make, spec.base_channels)
    for g in range(len(channels)):
        bumped = tuple(c + (h == g) for h, c in enumerate(channels))
        assert count_channels(make, bumped) > params, spec.group_names[g]


@pytest.mark.parametrize("name", NAMES)
def test_dense_macs_equal_torch_flop_counter(name):
    classes, shape = get_model_spec(name).example
    model = meta_build(name).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros((1, *shape), device="meta"))
    flops = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    assert set(flops) <= CONV_LINEAR_OPS, flops
    macs = count(model, shape).macs_dense
    assert macs > 0
    assert sum(flops.values()) == 2 * macs


@pytest.mark.parametrize("name", NAMES)
def test_thin_dense_solves_a_90_percent_budget_or_is_refused(name, tmp_path):
    spec = get_model_spec(name)
    classes, shape = spec.example
    make = ModelMaker(name, classes, shape)
    if spec.has_width:
        goal = sparse_nonzeros(meta_build(name), "all", 0.9)
        solution = solve(make, 1.0, goal)
        assert count_channels(make, solution.channels) == solution.params
        if not within_tolerance(solution.params, goal):
            # Only a single-group model may miss the window (the MNIST-1D MLP: its count jumps
            # over it), and then its answer is the nearest of every width it could take.
            (top,) = spec.base_channels
            counts = [count_channels(make, (c,)) for c in range(1, top + 1)]
            assert not any(within_tolerance(n, goal) for n in counts)
            assert abs(solution.params - goal) == min(abs(n - goal) for n in counts)
        return
    config = RunConfig(model=ModelConfig(name), method=MethodConfig("thin_dense"),
                       sparsity=SparsityConfig(target=0.9))
    with pytest.raises(UserError, match="thin dense needs a model with width groups"):
        ThinDense(config, None).build_model(make, 0.9)
    grid = tmp_path / "grid.toml"
    grid.write_text(textwrap.dedent(f"""\
        name = "g"
        [axes]
        models = ["resnet8", "{name}"]
        datasets = ["cifar10"]
        methods = ["dense", "thin_dense"]
        sparsities = [0.9]
        seeds = [0]
        """))
    with pytest.raises(UserError) as error:
        load_grid(str(grid))
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{grid}:5: method 'thin_dense' needs a model with width groups; "
                              f"{name} has none: {spec.no_width_reason}")
