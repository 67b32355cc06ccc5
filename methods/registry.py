"""The method registry: one line per method, ``name -> "module:Class"``.

Modules are imported on first use, so importing one piece of ``methods`` (``methods.masking``,
``methods.selection``) or looking up one method loads only what it needs; ``all_methods()``
imports every one (for listings and checks that need every class). Methods of other installed
packages come from the ``sparsebench.methods`` entry points (``bench/plugins.py``), looked up
when a name is not built in; built-in names win.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from bench.errors import UserError

if TYPE_CHECKING:
    from methods.base import Method

METHODS: dict[str, str] = {
    "dense": "methods.dense:Dense",
    "static": "methods.static:Static",
    "gmp": "methods.gmp:GMP",
    "snip": "methods.snip:SNIP",
    "grasp": "methods.grasp:GraSP",
    "str": "methods.str_method:STR",
    "thin_dense": "methods.thin_dense:ThinDense",
    "deepr": "methods.deepr:DeepR",
    "set": "methods.set_method:SET",
    "dsr": "methods.dsr:DSR",
    "eigendamage": "methods.eigendamage:EigenDamage",
    "rigl": "methods.rigl:RigL",
}

# Every class looked up so far (built-in or plugin): the one dict ``methods.REGISTRY`` is.
_LOADED: dict[str, type[Method]] = {}


def _load(name: str) -> type[Method]:
    if name not in _LOADED:
        module, cls_name = METHODS[name].split(":")
        cls = getattr(import_module(module), cls_name)
        if cls.name != name:
            raise RuntimeError(f"registry entry {name!r} points at a class named {cls.name!r}")
        _LOADED[name] = cls
    return _LOADED[name]


def _discover_plugins() -> None:
    from bench.plugins import discover
    from methods.base import Method

    found: dict[str, type[Method]] = {}
    discover("sparsebench.methods", found, Method)
    for name, cls in found.items():
        if name not in METHODS:
            _LOADED.setdefault(name, cls)


def get_method(name: str) -> type[Method]:
    """The Method subclass registered as `name`; UserError listing the valid names if none."""
    if name in METHODS:
        return _load(name)
    if name not in _LOADED:
        _discover_plugins()
    try:
        return _LOADED[name]
    except KeyError:
        valid = sorted(set(METHODS) | set(_LOADED))
        raise UserError(f"unknown method {name!r}; valid: {', '.join(valid)}") from None


def all_methods() -> dict[str, type[Method]]:
    """Every registered method, name -> class (imports them all), in the registry's order
    whichever was loaded first, then plug-ins; the same dict every call."""
    for name in METHODS:
        _load(name)
    if list(_LOADED)[:len(METHODS)] != list(METHODS):
        loaded = dict(_LOADED)
        _LOADED.clear()
        _LOADED.update({name: loaded[name] for name in METHODS} | loaded)
    return _LOADED
