"""STR: the soft-threshold forward rule and its gradients, weight decay on s, baking, masks,
resume, and the weight-decay calibration (with a fake harness and once end to end; its order
independence and preemption: tests/test_str_calibration.py)."""

from __future__ import annotations

import copy
import io
import json
import math
import shutil
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

import methods.str_method as str_method
from bench.config import MethodConfig, RunConfig, SparsityConfig, TrainConfig, run_id
from bench.flops import count
from bench.models.mnist1d import MNIST1DCNN
from bench.run import run_folder, run_one
from bench.train import Interrupted, make_optimizer
from bench.trial import TRIALS
from methods.base import SetupContext, TrialResult
from methods.calibration import CalibrationSettings, bisect_weight_decay, density_gap
from methods.masking import Masking
from methods.str_method import STR, SoftThreshold, STRHparams
from tests.helpers import tiny_config


def make_ctx(model, hparams, target=0.9, policy="all", resuming=False, train=None, harness=None,
             seed=0):
    config = RunConfig(method=MethodConfig("str", hparams),
                       train=train or TrainConfig(optimizer="sgd", lr=0.1),
                       sparsity=SparsityConfig(target=target, layer_policy=policy), seed=seed)
    method = STR(config, hparams)
    masking = Masking.attach(model, policy)
    ctx = SetupContext(model=model, masking=masking, config=config, loss_fn=F.cross_entropy,
                       batches=lambda: iter(()), steps_per_epoch=1, device=torch.device("cpu"),
                       generator=method.generator, harness=harness, resuming=resuming)
    return method, ctx


def batch(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 40, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_forward_rule_and_its_gradients():
    w = torch.tensor([[-0.30, -0.05, 0.0], [0.02, 0.07, 0.5]], dtype=torch.float64)
    s = torch.tensor([-2.5], dtype=torch.float64)  # threshold sigmoid(-2.5) ~ 0.0759
    tau = torch.sigmoid(s)
    st = SoftThreshold(-2.5, w)
    out = st(w.clone().requires_grad_(True))
    expected = torch.where(w.abs() > tau, w - tau * torch.sign(w), torch.zeros_like(w))
    torch.testing.assert_close(out.detach(), expected, rtol=0, atol=1e-15)
    # Sub-gradients, by hand: dW_hat/dW = 1[|W| > tau]; dW_hat/ds = -sign(W) 1[|W| > tau] s'(s)
    upstream = torch.arange(1.0, 7.0, dtype=torch.float64).view(2, 3)
    wv = w.clone().requires_grad_(True)
    out = st(wv)
    gw, gs = torch.autograd.grad((out * upstream).sum(), [wv, st.s])
    alive = (w.abs() > tau).double()
    torch.testing.assert_close(gw, upstream * alive)
    ds = -(upstream * torch.sign(w) * alive).sum() * tau * (1 - tau)
    torch.testing.assert_close(gs, ds.view(1))


def test_matches_the_reference_composition_and_its_autograd():
    """STR's ``sparseFunction``: torch.sign(x) * torch.relu(torch.abs(x) - torch.sigmoid(s))."""
    g = torch.Generator().manual_seed(4)
    for s_value in (-6.0, -2.0, 0.5):
        w = torch.randn(40, 30, generator=g, dtype=torch.float64) * 0.3
        w[0, :5] = torch.sigmoid(torch.tensor(s_value, dtype=torch.float64))  # |W| == t ties
        w[1, :3] = 0.0
        up = torch.randn(40, 30, generator=g, dtype=torch.float64)
        grads = []
        for fn in (str_method.soft_threshold,
                   lambda x, s: torch.sign(x) * torch.relu(torch.abs(x) - torch.sigmoid(s))):
            wv = w.clone().requires_grad_(True)
            sv = torch.tensor([s_value], dtype=torch.float64, requires_grad=True)
            out = fn(wv, sv)
            grads.append((out.detach(), *torch.autograd.grad((out * up).sum(), [wv, sv])))
        (o1, gw1, gs1), (o2, gw2, gs2) = grads
        assert torch.equal(o1, o2)
        assert torch.equal(gw1, gw2)
        torch.testing.assert_close(gs1, gs2, rtol=1e-12, atol=0.0)


def test_reparameterises_prunable_layers_with_one_s_each_under_the_same_weight_decay():
    torch.manual_seed(0)
    model = MNIST1DCNN()
    method, ctx = make_ctx(model, STRHparams(weight_decay=0.05), policy="dense_first")
    method.setup(ctx)
    names = {n for n, _ in model.named_parameters() if n.endswith(".s")}
    assert names == {f"{layer}.parametrizations.weight.0.s"
                     for layer in ("conv2", "conv3", "linear")}
    assert not parametrize.is_parametrized(model.conv1)
    for layer in ("conv2", "conv3", "linear"):
        assert getattr(model, layer).parametrizations.weight[0].s.item() == -3200.0
    phase = method.phases()[0]
    assert phase.train.weight_decay == 0.05 and phase.train.optimizer == "sgd"
    optimizer = make_optimizer(model, phase.train)
    s = model.conv2.parametrizations.weight[0].s
    assert any(p is s for g in optimizer.param_groups for p in g["params"])
    w0 = model.conv2.parametrizations.weight.original.detach().clone()
    x, y = batch()
    F.cross_entropy(model(x), y).backward()
    # sigmoid'(-3200) == 0: the loss does not move s, only the decay does.
    assert s.grad.item() == 0.0
    grad_w = model.conv2.parametrizations.weight.original.grad.clone()
    optimizer.step()
    assert s.item() == pytest.approx(-3200.0 * (1 - 0.1 * 0.05), rel=1e-7)
    torch.testing.assert_close(model.conv2.parametrizations.weight.original.detach(),
                               w0 - 0.1 * (grad_w + 0.05 * w0))


def train_steps(model, method, optimizer, steps=5):
    """Train; return, per step, the nonzero patterns of the weights its forward pass used."""
    x, y = batch(128, seed=1)
    patterns = []
    for step in range(1, steps + 1):
        optimizer.zero_grad()
        with torch.no_grad():
            patterns.append({n: m.weight != 0 for n, m in method.layers.items()})
        F.cross_entropy(model(x), y).backward()
        method.after_backward(model, step)
        optimizer.step()
        method.after_step(model, optimizer, step)
    return patterns


def test_masks_follow_the_thresholds_in_place_and_baking_keeps_the_forward():
    torch.manual_seed(1)
    model = MNIST1DCNN()
    method, ctx = make_ctx(model, STRHparams(s_init=-3.0, weight_decay=1e-3))
    method.setup(ctx)
    buffers = {n: m.data_ptr() for n, m in ctx.masking.masks.items()}
    optimizer = make_optimizer(model, method.phases()[0].train)
    patterns = train_steps(model, method, optimizer)
    # After each step the masks are those of the weights the step computed with (the density
    # the trainer integrates into training FLOPs), in the same buffers.
    changed = False
    for name, module in ctx.masking.layers.items():
        assert module.weight_mask.data_ptr() == buffers[name]
        assert torch.equal(module.weight_mask, patterns[-1][name])
        changed |= not torch.equal(patterns[0][name], patterns[-1][name])
    assert changed
    assert 0.1 < 1 - ctx.masking.density() < 0.9  # sigmoid(-3) ~ 0.047 prunes some, not all
    x, _ = batch(32, seed=2)
    model.eval()
    with torch.no_grad():
        before = model(x)
    thresholds = method.thresholds()
    method.finalize(model)
    with torch.no_grad():
        after = model(x)
    assert torch.equal(before, after)
    for name, module in ctx.masking.layers.items():
        assert not parametrize.is_parametrized(module)
        assert type(module.weight) is nn.Parameter
        assert torch.equal(module.weight_mask, module.weight != 0)
        assert thresholds[name] == pytest.approx(
            float(torch.sigmoid(torch.tensor(-3.0))), abs=0.05)
    assert set(model.state_dict()) == set(MNIST1DCNN().state_dict()) | {
        f"{n}.weight_mask" for n in ctx.masking.layers}
    counts = count(model, (40,))
    zeros = sum(int((m.weight == 0).sum()) for m in ctx.masking.layers.values())
    assert counts.params_nonzero == counts.params_total - zeros
    summary = method.summary()
    assert summary["achieved_sparsity"] == pytest.approx(counts.sparsity)
    assert summary["weight_decay"] == 1e-3 and summary["weight_decay_source"] == "hparams"


def test_checkpointed_state_restores_into_a_fresh_setup():
    torch.manual_seed(2)
    model = MNIST1DCNN()
    method, ctx = make_ctx(model, STRHparams(s_init=-3.0, weight_decay=1e-3))
    method.setup(ctx)
    train_steps(model, method, make_optimizer(model, method.phases()[0].train), 3)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "method": method.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)

    fresh = MNIST1DCNN()
    method2, ctx2 = make_ctx(fresh, STRHparams(s_init=-3.0, weight_decay=1e-3), resuming=True)
    method2.setup(ctx2)
    method2.load_state_dict(state["method"])
    fresh.load_state_dict(state["model"])
    assert method2.phases()[0].train.weight_decay == 1e-3
    x, _ = batch(16, seed=3)
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))


def test_one_node_per_forward_computes_what_each_layer_computes_alone():
    """The model's pre-hook computes every W_hat in one autograd node; the result (loss, all
    gradients) is bit-identical to each layer computing its own W_hat, and outside a forward
    pass ``weight`` reflects the current W and s."""
    runs = []
    for batched in (True, False):
        torch.manual_seed(5)
        model = MNIST1DCNN()
        method, ctx = make_ctx(model, STRHparams(s_init=-3.0, weight_decay=1e-3))
        method.setup(ctx)
        if not batched:
            str_method._remove_hooks(model)
        nodes = set()
        seen = [m.register_forward_hook(lambda m, i, o, nodes=nodes: nodes.add(m.weight.grad_fn))
                for m in method.layers.values()]
        x, y = batch(32, seed=6)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        for handle in seen:
            handle.remove()
        assert len(nodes) == (1 if batched else len(method.layers))
        runs.append((loss.detach(), [p.grad.clone() for p in model.parameters()],
                     {n: st.last.clone() for n, st in
                      ((n, m.parametrizations.weight[0]) for n, m in method.layers.items())}))
        layer = model.conv2
        assert str_method._HAT not in layer.__dict__  # nothing outlives the forward pass
        with torch.no_grad():
            layer.parametrizations.weight.original.mul_(2.0)
            tau = torch.sigmoid(layer.parametrizations.weight[0].s)
            w = layer.parametrizations.weight.original
            assert torch.equal(layer.weight, w - torch.clamp(w, -tau, tau))
    (loss_a, grads_a, alive_a), (loss_b, grads_b, alive_b) = runs
    assert torch.equal(loss_a, loss_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b, strict=True))
    assert all(torch.equal(alive_a[n], alive_b[n]) for n in alive_a)


def test_a_layer_the_loss_does_not_reach_gets_no_gradient():
    """As with the reference composition: W and s of an unused layer keep ``grad is None``, so
    the optimizer leaves them alone (no weight decay either)."""
    torch.manual_seed(9)
    model = MNIST1DCNN()
    method, ctx = make_ctx(model, STRHparams(s_init=-3.0, weight_decay=1e-3))
    method.setup(ctx)
    x, y = batch(16, seed=9)
    # The loss reads conv1's activations only: conv2, conv3 and the linear layer are unused.
    loss = F.relu(model.conv1(x.unsqueeze(1))).sum()
    loss.backward()
    for name, layer in method.layers.items():
        w, s = layer.parametrizations.weight.original, layer.parametrizations.weight[0].s
        if name == "conv1":
            assert w.grad is not None and s.grad is not None
        else:
            assert w.grad is None and s.grad is None
    # The batched node, reached through a whole forward pass but with only conv1's output
    # used further, agrees with the per-layer computation for conv1.
    model.zero_grad(set_to_none=True)
    outputs = {}
    handle = model.conv1.register_forward_hook(lambda m, i, o: outputs.setdefault("conv1", o))
    model(x)
    handle.remove()
    outputs["conv1"].relu().sum().backward()
    batched = [p.grad for p in (model.conv1.parametrizations.weight.original,
                                model.conv1.parametrizations.weight[0].s)]
    assert model.conv2.parametrizations.weight.original.grad is None
    model.zero_grad(set_to_none=True)
    loss = F.relu(model.conv1(x.unsqueeze(1))).sum()
    loss.backward()
    alone = [p.grad for p in (model.conv1.parametrizations.weight.original,
                              model.conv1.parametrizations.weight[0].s)]
    assert all(torch.equal(a, b) for a, b in zip(batched, alone, strict=True))


def test_a_deep_copy_runs_its_own_node_and_bakes_on_its_own():
    torch.manual_seed(10)
    model = MNIST1DCNN()
    method, ctx = make_ctx(model, STRHparams(s_init=-3.0, weight_decay=1e-3))
    method.setup(ctx)
    twin = copy.deepcopy(model)
    x, _ = batch(8, seed=10)
    with torch.no_grad():
        twin.conv2.parametrizations.weight.original.mul_(3.0)
        out_model, out_twin = model(x), twin(x)
        assert not torch.equal(out_model, out_twin)  # the copy computes with its own W
        # Its pre-hook fed its own layers: conv2's W_hat saw the tripled weights.
        w = twin.conv2.parametrizations.weight.original
        tau = torch.sigmoid(twin.conv2.parametrizations.weight[0].s)
        assert torch.equal(twin.conv2.parametrizations.weight[0].last,
                           w - torch.clamp(w, -tau, tau))
    layers = {n: getattr(twin, n) for n in method.layers}
    str_method.bake(layers, twin)
    assert not twin._forward_pre_hooks and not twin._forward_hooks
    assert model._forward_pre_hooks and model._forward_hooks  # the original keeps its own
    with torch.no_grad():
        assert torch.equal(twin(x), out_twin)
        assert torch.equal(model(x), out_model)


def test_checkpoint_of_the_torch_parametrize_layout_loads_and_finalize_drops_the_hooks():
    """Before this mechanism STR used ``torch.nn.utils.parametrize``: its state dicts load
    unchanged (same keys, same parameter order)."""
    torch.manual_seed(7)
    reference = MNIST1DCNN()
    Masking.attach(reference, "all")
    for layer in (reference.conv1, reference.conv2, reference.conv3, reference.linear):
        parametrize.register_parametrization(layer, "weight", SoftThreshold(-3.0, layer.weight))
    model = MNIST1DCNN()
    method, ctx = make_ctx(model, STRHparams(s_init=-3.0, weight_decay=1e-3))
    method.setup(ctx)
    assert list(model.state_dict()) == list(reference.state_dict())
    assert [n for n, _ in model.named_parameters()] == [
        n for n, _ in reference.named_parameters()]
    model.load_state_dict(reference.state_dict())
    x, _ = batch(16, seed=8)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    method.finalize(model)
    assert not model._forward_pre_hooks and not model._forward_hooks
    assert str_method._LAYERS not in model.__dict__
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


# --- calibration ----------------------------------------------------------------------

def fake_curve(scale=1e-3):
    """A monotone sparsity(wd) curve and a log of the calls made to it."""
    calls = []

    def train_short(wd):
        calls.append(wd)
        return 1.0 - math.exp(-wd / scale)

    return train_short, calls


@pytest.mark.parametrize("target", [0.5, 0.9, 0.98])
def test_bisection_reaches_the_target_density_within_tolerance(target):
    train_short, calls = fake_curve()
    result = bisect_weight_decay(train_short, target, CalibrationSettings(max_runs=30))
    assert result.converged
    assert density_gap(result.achieved, target) <= 0.05
    assert result.achieved == pytest.approx(train_short(result.weight_decay))
    assert [w for w, _ in result.evaluations] == sorted(calls[:-1])
    assert result.runs == len(calls) - 1
    # Exact answer of the fake: wd* = -scale * log(1 - target).
    true_wd = -1e-3 * torch.log(torch.tensor(1 - target)).item()
    assert result.weight_decay == pytest.approx(true_wd, rel=0.1)


def test_bisection_expands_the_bracket_both_ways_and_stops_at_max_runs():
    train_short, _ = fake_curve(scale=10.0)  # needs wd ~ 23 for 90%: far above high=0.1
    up = bisect_weight_decay(train_short, 0.9, CalibrationSettings(max_runs=30))
    assert up.converged and up.weight_decay > 1.0
    train_short, _ = fake_curve(scale=1e-9)  # needs wd ~ 2e-9: far below low=1e-6
    down = bisect_weight_decay(train_short, 0.9, CalibrationSettings(max_runs=30))
    assert down.converged and down.weight_decay < 1e-8
    never, calls = fake_curve(scale=1e4)  # 90% needs wd ~ 2.3e4: four runs reach 100
    result = bisect_weight_decay(never, 0.9, CalibrationSettings(max_runs=4))
    assert len(calls) == 4 and not result.converged
    assert result.weight_decay == max(calls)  # the closest of the four


class FakeHarness:
    """Trial trainings on the fake curve (``fake_curve``), kept by run id as the harness keeps
    them; trials above `diverge_above` diverge."""

    def __init__(self, scale=1e-3, diverge_above=math.inf):
        self.curve, self.trainings = fake_curve(scale)
        self.diverge_above = diverge_above
        self.asked: list[RunConfig] = []
        self.kept: dict[str, TrialResult] = {}

    def trial_train(self, config):
        self.asked.append(config)
        rid = run_id(config)
        if rid not in self.kept:
            wd = config.method.hparams.weight_decay
            self.kept[rid] = TrialResult(rid, True, None) if wd > self.diverge_above \
                else TrialResult(rid, False, self.curve(wd))
        return self.kept[rid]

    def finished_model(self, config):
        raise AssertionError("STR starts from no finished run")


SEARCH = STRHparams(calibration_max_runs=30)


def setup_str(harness, target=0.9, seed=3, train=None, hp=SEARCH):
    method, ctx = make_ctx(MNIST1DCNN(), hp, target=target, harness=harness, seed=seed,
                           train=train or TrainConfig(optimizer="sgd", lr=0.1))
    method.setup(ctx)
    return method


def test_setup_calibrates_on_trials_every_seed_and_target_shares():
    harness = FakeHarness()
    method = setup_str(harness)
    assert method.weight_decay_source == "calibrated"
    assert method.phases()[0].train.weight_decay == method.calibration.weight_decay
    # Trials: seed 0, target 0 and no recipe weight decay, whatever the run's.
    made = harness.asked
    assert {(c.seed, c.sparsity.target, c.train.weight_decay) for c in made} == {(0, 0.0, 0.0)}
    assert [c.method.hparams.weight_decay for c in made] == harness.trainings
    assert sorted(harness.trainings) == [w for w, _ in method.calibration.evaluations]
    assert method.calibration.runs == len(made)
    # The search settings are normalised too: they do not change a trial.
    assert {(c.train.optimizer, c.method.hparams.calibration_max_runs) for c in made} == {
        ("sgd", STRHparams().calibration_max_runs)}
    # Another seed and another recipe weight decay ask for the same trials: nothing trained.
    n = len(harness.trainings)
    other = setup_str(harness, seed=7,
                      train=TrainConfig(optimizer="sgd", lr=0.1, weight_decay=5e-4))
    assert len(harness.trainings) == n
    assert other.weight_decay == method.weight_decay and other.calibration == method.calibration
    summary = other.summary()
    assert summary["calibration"]["converged"] and summary["calibration"]["seed"] == 0
    # Another target follows its own path, the one it follows on a fresh harness, and trains
    # only the trials of that path the first target did not.
    fresh = FakeHarness()
    alone = setup_str(fresh, target=0.8)
    after = setup_str(harness, target=0.8)
    assert after.calibration == alone.calibration and after.calibration.converged
    assert [run_id(c) for c in harness.asked[-len(fresh.asked):]] == [
        run_id(c) for c in fresh.asked]
    shared = {w for w, _ in alone.calibration.evaluations} & {
        w for w, _ in method.calibration.evaluations}
    assert shared and len(harness.trainings) - n == len(fresh.trainings) - len(shared)


def test_a_diverged_trial_counts_as_fully_sparse():
    # 90% needs wd ~2.3e-3; the bracket's upper end 0.1 diverges and counts as sparsity 1.
    method = setup_str(FakeHarness(diverge_above=0.05))
    evaluations = dict(method.calibration.evaluations)
    assert evaluations[0.1] == 1.0
    assert method.calibration.converged
    assert method.calibration.weight_decay == pytest.approx(-1e-3 * math.log(0.1), rel=0.1)


def test_calibration_without_a_harness_says_what_it_needs():
    with pytest.raises(RuntimeError, match="needs the harness"):
        setup_str(None)
    method = setup_str(None, hp=STRHparams(weight_decay=0.01))
    assert (method.weight_decay, method.weight_decay_source) == (0.01, "hparams")


def test_end_to_end_calibrated_run_lands_near_its_target(tmp_path, data_root):
    hp = STRHparams(s_init=-5.0, calibration_high=0.1, calibration_max_runs=10,
                    calibration_rel_tol=0.25)
    config = tiny_config("str", 0.7, epochs=2, optimizer="sgd", lr=0.1)
    config = replace(config, method=MethodConfig("str", hp))
    result = run_one(config, tmp_path, data_root)
    assert result["status"] == "ok", result.get("error")
    summary = result["method_summary"]
    cal = summary["calibration"]
    assert summary["weight_decay"] == cal["weight_decay"]
    assert cal["converged"], cal
    # Seed 0 is the calibration seed, so the run reproduces the calibration's sparsity.
    assert result["counts"]["sparsity"] == pytest.approx(cal["achieved"], abs=1e-12)
    assert summary["achieved_sparsity"] == pytest.approx(result["counts"]["sparsity"])
    assert density_gap(result["counts"]["sparsity"], 0.7) <= 0.25
    # One trial folder per evaluation, each with its outcome and no leftover checkpoint.
    trials = sorted((tmp_path / TRIALS).iterdir())
    assert len(trials) == cal["runs"] == len(cal["evaluations"])
    recorded = []
    for trial in trials:
        body = json.loads((trial / "result.json").read_text())
        recorded.append([body["config"]["method"]["hparams"]["weight_decay"], body["sparsity"]])
    assert sorted(recorded) == cal["evaluations"]
    assert not list((tmp_path / TRIALS).glob("*/checkpoint.pt"))

    # Interrupted after one epoch and resumed: identical to an uninterrupted run (its trials
    # copied over, so that only the run itself trains again).
    resumed_root = tmp_path / "resumed"
    shutil.copytree(tmp_path / TRIALS, resumed_root / TRIALS)
    with pytest.raises(Interrupted):
        run_one(config, resumed_root, data_root, stop_after_epoch=1)
    again = run_one(config, resumed_root, data_root)
    a = torch.load(run_folder(tmp_path, config) / "model.pt", weights_only=True)
    b = torch.load(run_folder(resumed_root, config) / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert again["method_summary"]["weight_decay"] == summary["weight_decay"]
