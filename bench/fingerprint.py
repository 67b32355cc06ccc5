"""What a run's floating-point results depend on besides its config: the torch build, the CPU
kernels torch dispatches to, the intra-op thread count and the platform (issue 11, the exact
regression gate). Two runs of one config with equal fingerprints give bit-identical results on
CPU (README "Runs, resume and results"), so ``sparsebench check`` compares such results exactly
and falls back to the seed-noise rule only when fingerprints differ.
"""

from __future__ import annotations

import platform

import torch

FIELDS = ("torch", "cpu_capability", "threads", "platform", "device")


def fingerprint(device: str, threads: int) -> dict[str, str | int]:
    """The running process's fingerprint: torch version, ``torch.backends.cpu.
    get_cpu_capability()`` (the ISA its CPU kernels use, e.g. "AVX2"), intra-op `threads`,
    OS and machine, and `device` (with the GPU's name on CUDA)."""
    if device.startswith("cuda") and torch.cuda.is_available():
        device = f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": int(threads),
        "platform": f"{platform.system()} {platform.machine()}",
        "device": device,
    }


def describe(fp: dict | None) -> str:
    """'torch 2.9.0, AVX2, 1 thread(s), Linux x86_64, cpu' (or 'unknown')."""
    if not fp:
        return "unknown"
    return (f"torch {fp.get('torch')}, {fp.get('cpu_capability')}, {fp.get('threads')} "
            f"thread(s), {fp.get('platform')}, {fp.get('device')}")


def differences(a: dict, b: dict) -> list[str]:
    """'field a vs b' for each field in which two fingerprints differ."""
    return [f"{k} {a.get(k)} vs {b.get(k)}" for k in FIELDS if a.get(k) != b.get(k)]
