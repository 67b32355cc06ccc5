"""Dense training: the reference every table needs. No masks change; sparsity is ignored."""

from __future__ import annotations

from methods.base import Method


class Dense(Method):
    name = "dense"
    uses_sparsity = False
