"""The method registry: name -> Method subclass. An unknown name is a UserError listing the
valid ones."""

from __future__ import annotations

from bench.errors import UserError
from methods.base import Method
from methods.deepr import DeepR
from methods.dense import Dense
from methods.dsr import DSR
from methods.eigendamage import EigenDamage
from methods.gmp import GMP
from methods.grasp import GraSP
from methods.set_method import SET
from methods.snip import SNIP
from methods.static import Static
from methods.str_method import STR
from methods.thin_dense import ThinDense

REGISTRY: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (
        Dense,
        Static,
        GMP,
        SNIP,
        GraSP,
        STR,
        ThinDense,
        DeepR,
        SET,
        DSR,
        EigenDamage,
    )
}


def get_method(name: str) -> type[Method]:
    if name not in REGISTRY:  # maybe another package's (bench/plugins.py)
        from bench.plugins import discover

        discover("sparsebench.methods", REGISTRY, Method)
    try:
        return REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown method {name!r}; valid: {', '.join(sorted(REGISTRY))}") from None
