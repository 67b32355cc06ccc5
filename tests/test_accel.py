"""Device settings (bench/accel.py): what each resolves to, that the process-wide flags are
restored, and that a compiled model is not recompiled by mask updates and trains exactly like
the uncompiled one."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench import accel
from bench.config import MethodConfig, RunConfig, SparsityConfig, TrainConfig
from bench.models import build_model
from methods import get_method
from methods.base import SetupContext
from methods.masking import Masking

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


def test_auto_precision_is_bf16_only_on_capable_gpus(monkeypatch):
    assert accel.resolve_precision("auto", CPU) == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert accel.resolve_precision("auto", CUDA) == "bf16"
    assert accel.resolve_precision("auto", CPU) == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert accel.resolve_precision("auto", CUDA) == "fp32"
    assert [accel.resolve_precision(p, CUDA) for p in ("fp32", "bf16", "fp16")] == \
        ["fp32", "bf16", "fp16"]


def test_channels_last_only_for_image_models_on_cuda():
    assert accel.memory_format(CUDA, (3, 32, 32)) is torch.channels_last
    assert accel.memory_format(CUDA, (40,)) is torch.contiguous_format
    assert accel.memory_format(CPU, (3, 32, 32)) is torch.contiguous_format
    model = accel.to_device(build_model("resnet8", 10, (3, 32, 32)), CPU, (3, 32, 32))
    assert model.conv1.weight.is_contiguous()


def test_fused_optimizers_on_cuda_foreach_elsewhere():
    assert accel.optimizer_kernel(CUDA) == {"fused": True}
    assert accel.optimizer_kernel(CPU) == {"foreach": True}


@pytest.mark.parametrize("deterministic", [False, True])
def test_backend_flags_are_set_inside_and_restored(deterministic, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
              torch.are_deterministic_algorithms_enabled())
    with accel.backend_flags(TrainConfig(deterministic=deterministic)):
        assert torch.backends.cudnn.benchmark is (not deterministic)
        assert torch.backends.cudnn.deterministic is deterministic
        assert torch.are_deterministic_algorithms_enabled() is deterministic
        assert ("CUBLAS_WORKSPACE_CONFIG" in __import__("os").environ) is deterministic
    assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
            torch.are_deterministic_algorithms_enabled()) == before
    assert "CUBLAS_WORKSPACE_CONFIG" not in __import__("os").environ


def test_new_fields_keep_run_ids():
    from bench.config import canonical
    assert "deterministic" not in canonical(TrainConfig()) and "compile" not in \
        canonical(TrainConfig())


def _set_training(compiled: bool, compiles: list[int]):
    """SET on the MNIST-1D CNN for 12 steps with a rewiring every 4 steps."""
    torch.manual_seed(0)
    model = build_model("mnist1d_cnn", 10, (40,))
    config = RunConfig(method=MethodConfig("set"), sparsity=SparsityConfig(target=0.8),
                       train=TrainConfig(epochs=3, compile=compiled))
    masking = Masking.attach(model, "all")
    method = get_method("set")(config, config.method.hparams)
    ctx = SetupContext(model=model, masking=masking, config=config, loss_fn=F.cross_entropy,
                       batches=lambda: iter(()), steps_per_epoch=4, device=CPU,
                       generator=method.generator)
    method.setup(ctx)

    def counting_backend(gm, example_inputs):
        compiles.append(1)
        return gm.forward

    accel.maybe_compile(model, config.train, backend=counting_backend)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    masks = []
    for step in range(1, 13):
        x, y = torch.randn(32, 40, generator=g), torch.randint(10, (32,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        method.after_backward(model, step)
        opt.step()
        method.after_step(model, opt, step)
        if step % 4 == 0:
            method.end_epoch(model, opt, step // 4 - 1)
        masks.append({k: v.clone() for k, v in masking.masks.items()})
    return model, masks


def test_compiled_model_trains_exactly_and_mask_updates_do_not_recompile():
    torch._dynamo.reset()
    compiles: list[int] = []
    eager, eager_masks = _set_training(False, compiles)
    assert compiles == []
    compiled, compiled_masks = _set_training(True, compiles)
    assert len(compiles) == 1  # one graph for the whole run, whatever the masks did
    # The masks did change during the run (SET rewired), identically in both runs.
    first, last = compiled_masks[0], compiled_masks[-1]
    assert any(not torch.equal(first[k], last[k]) for k in first)
    for a, b in zip(eager_masks, compiled_masks, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert list(compiled.state_dict()) == list(eager.state_dict())  # no _orig_mod. prefix
    for k, v in eager.state_dict().items():
        assert torch.equal(v, compiled.state_dict()[k]), k


def test_cpu_runs_with_gpu_settings_train_exactly_like_plain_fp32(tmp_path, data_root,
                                                                   monkeypatch):
    """precision auto, deterministic and compile (with an eager-executing backend: inductor's
    codegen takes minutes on this CPU) leave a CPU run's weights bit-identical, and a compiled
    run compiles as often in 6 epochs as in 3: GMP's mask updates (every few steps throughout)
    never recompile it. (The graphs are: training, evaluation under no_grad, and the counter's
    one-example probe after training.)"""
    from dataclasses import replace

    from bench.run import run_one
    from tests.helpers import assert_identical, final_weights, tiny_config

    compiles: list[int] = []

    def counting_backend(gm, example_inputs):
        compiles.append(1)
        return gm.forward

    real = accel.maybe_compile
    monkeypatch.setattr(accel, "maybe_compile",
                        lambda model, train: real(model, train, backend=counting_backend))
    base = tiny_config("gmp", 0.8, epochs=3, optimizer="sgd", lr=0.05)
    plain = run_one(base, tmp_path / "plain", data_root)
    assert plain["precision"] == "fp32"
    for name, train in (("auto", replace(base.train, precision="auto")),
                        ("deterministic", replace(base.train, deterministic=True)),
                        ("compile", replace(base.train, compile=True))):
        config = replace(base, train=train)
        torch._dynamo.reset()
        compiles.clear()
        result = run_one(config, tmp_path / name, data_root)
        assert result["precision"] == "fp32", name
        assert result["top1"] == plain["top1"], name
        assert_identical(final_weights(tmp_path / name, config),
                         final_weights(tmp_path / "plain", base))
    short = len(compiles)
    assert 1 <= short <= 3
    longer = replace(base, train=replace(base.train, compile=True, epochs=6))
    torch._dynamo.reset()
    compiles.clear()
    run_one(longer, tmp_path / "longer", data_root)
    assert len(compiles) == short
