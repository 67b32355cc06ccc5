"""How a run uses its device: precision, memory format, cuDNN/determinism flags, fused
optimizer kernels and ``torch.compile``. None of this changes what a CPU run computes (the CPU
path is fp32, contiguous, unfused-foreach, uncompiled unless asked), so every CPU result stays
bit-identical; on a GPU these are the settings that keep it busy.

- ``precision = "auto"``: bf16 autocast on a CUDA device that supports bf16 (Ampere and newer),
  else fp32. ``"fp16"`` uses a GradScaler; ``"bf16"`` does not need one.
- Channels-last (NHWC) memory format for models fed images (3-d input shape) on CUDA: cuDNN's
  fastest convolution kernels under autocast are NHWC.
- ``cudnn.benchmark`` (autotuned kernels) unless the run sets ``deterministic = true``, which
  instead turns on ``torch.use_deterministic_algorithms`` and ``cudnn.deterministic`` and sets
  ``CUBLAS_WORKSPACE_CONFIG``; it costs speed (roughly 10-30 % on convolutional nets in
  PyTorch's reproducibility notes) and makes a GPU run repeatable on the same machine.
- Optimizers use the fused CUDA kernels on a GPU (one kernel per step), the foreach path
  elsewhere (bench.recipe documents the CPU choice).
- ``compile = true`` compiles the model's forward in place (``nn.Module.compile``: state-dict
  keys are unchanged, so checkpoints are those of an uncompiled run). Masks are buffers applied
  to the weights between steps, never inside forward, so a mask update does not recompile.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from torch import nn

from bench.config import TrainConfig


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision a run trains in: "auto" -> "bf16" on a bf16-capable CUDA device, else
    "fp32"; other values as given."""
    if precision != "auto":
        return precision
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def autocast(precision: str, device: torch.device):
    """The autocast context of a resolved precision ("fp32", "bf16", "fp16")."""
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def memory_format(device: torch.device, input_shape: tuple[int, ...]) -> torch.memory_format:
    """channels_last for image models (input C x H x W) on CUDA; contiguous otherwise."""
    if device.type == "cuda" and len(input_shape) == 3:
        return torch.channels_last
    return torch.contiguous_format


def to_device(model: nn.Module, device: torch.device,
              input_shape: tuple[int, ...]) -> nn.Module:
    """`model` on `device` in the memory format ``memory_format`` picks."""
    return model.to(device=device, memory_format=memory_format(device, input_shape))


def optimizer_kernel(device: torch.device) -> dict[str, bool]:
    """Keyword for torch.optim.SGD/Adam: fused CUDA kernels on a GPU, foreach elsewhere."""
    return {"fused": True} if device.type == "cuda" else {"foreach": True}


@contextlib.contextmanager
def backend_flags(train: TrainConfig) -> Iterator[None]:
    """cuDNN autotuning, or deterministic algorithms when ``train.deterministic``; the previous
    process-wide settings are restored on exit (several runs may share one process)."""
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.are_deterministic_algorithms_enabled(),
             os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    deterministic = getattr(train, "deterministic", False)
    try:
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
        if deterministic:
            # cuBLAS needs a fixed workspace to be deterministic (CUDA >= 10.2).
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[:2]
        torch.use_deterministic_algorithms(saved[2])
        if saved[3] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved[3]


def maybe_compile(model: nn.Module, train: TrainConfig, backend: str = "inductor") -> nn.Module:
    """Compile `model`'s forward in place when ``train.compile``; the module object, its
    parameters, buffers (masks) and state-dict keys stay the same."""
    if getattr(train, "compile", False):
        model.compile(backend=backend)
    return model
