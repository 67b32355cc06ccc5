"""Methods, models and datasets from other packages, found through entry points.

A package registers, in its own ``pyproject.toml``::

    [project.entry-points."sparsebench.methods"]
    myprune = "mypkg.prune:MyPrune"          # a methods.base.Method subclass
    [project.entry-points."sparsebench.models"]
    mynet = "mypkg.nets:MYNET_SPEC"          # a bench.models.ModelSpec
    [project.entry-points."sparsebench.datasets"]
    mydata = "mypkg.data:MYDATA_SPEC"        # a bench.data.DatasetSpec

The registries load their group when a name is not built in (and ``list`` loads all three), so
every process finds them: the launcher, a local executor's subprocess and a SLURM job alike,
with no import of the user's module in the grid. Installed distributions only
(``importlib.metadata``); the entry point's name is the registered name.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from bench.errors import UserError

GROUPS = ("sparsebench.methods", "sparsebench.models", "sparsebench.datasets")
_loaded: set[str] = set()


def discover(group: str, registry: dict[str, Any], kind: type) -> None:
    """Add every entry point of `group` to `registry` (once per process). Raises UserError
    naming the entry point when it does not load or is not a `kind`. Built-in names win."""
    if group in _loaded:
        return
    _loaded.add(group)
    for ep in entry_points(group=group):
        where = f"entry point {ep.name!r} = {ep.value!r} in group {group!r}"
        try:
            obj = ep.load()
        except Exception as exc:
            _loaded.discard(group)
            raise UserError(f"{where} does not load: {type(exc).__name__}: {exc}") from None
        ok = issubclass(obj, kind) if isinstance(kind, type) and isinstance(obj, type) \
            else isinstance(obj, kind)
        if not ok:
            _loaded.discard(group)
            raise UserError(f"{where} is a {type(obj).__name__}, not a {kind.__name__}")
        registry.setdefault(ep.name, obj)


def lookup(name: str, registry: dict[str, Any], group: str, kind: type, noun: str,
           also: str = "") -> Any:
    """``registry[name]``, discovering `group`'s entry points first when the name is not a
    built-in; UserError "unknown NOUN 'name'; valid: ..." (sorted names, then `also`) when
    nothing registers it. The one lookup of the model and dataset registries."""
    if name not in registry:
        discover(group, registry, kind)
    try:
        return registry[name]
    except KeyError:
        raise UserError(f"unknown {noun} {name!r}; valid: {', '.join(sorted(registry))}{also}"
                        ) from None
