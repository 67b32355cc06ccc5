"""Sparse-training methods. The registry lives in ``methods.registry``; ``methods.REGISTRY``
(every method, name -> class) and ``methods.get_method`` are re-exported here without importing
any method module until they are used, so ``import methods.masking`` stays cheap."""

from __future__ import annotations

from typing import Any

from methods.registry import get_method

__all__ = ["REGISTRY", "get_method"]


def __getattr__(name: str) -> Any:
    if name == "REGISTRY":
        from methods.registry import all_methods

        return all_methods()
    raise AttributeError(f"module 'methods' has no attribute {name!r}")
