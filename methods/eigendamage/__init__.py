"""EigenDamage: structured pruning in the Kronecker-factored eigenbasis (see ``method.py``)."""

from methods.eigendamage.method import EigenDamage, EigenDamageHparams

__all__ = ["EigenDamage", "EigenDamageHparams"]
