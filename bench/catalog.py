"""What ``sparsebench list`` prints, read from the source files without importing them.

Importing the registries (methods, models, datasets, grids) imports torch, which takes 2-5 s;
listing names should not. So this module reads the same definitions statically with ``ast``:
the method classes named in ``methods/registry.py``'s ``METHODS`` (their ``name`` and the
first line of their docstring), the ``ModelSpec(...)`` entries of ``bench/models/__init__.py``,
the ``DatasetSpec(...)`` entries of ``bench/data/__init__.py``, and the built-in grid TOML
files. tests/test_cli.py checks every listing against the imported registries, so a change to
how a registry is written that this reader does not follow fails there, not silently here.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Collection
from functools import cache
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the pinned interpreter is 3.11
    import tomli as tomllib

BENCH = Path(__file__).resolve().parent
METHODS = BENCH.parent / "methods"


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _first_line(doc: str | None) -> str:
    doc = (doc or "").strip()
    return doc.splitlines()[0] if doc else ""


def _module_file(module: str) -> Path:
    parts = module.split(".")
    base = BENCH.parent.joinpath(*parts)
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _imports(tree: ast.Module) -> dict[str, str]:
    """Imported name -> the module it comes from (``from a.b import C``)."""
    return {alias.asname or alias.name: node.module
            for node in tree.body if isinstance(node, ast.ImportFrom) and node.module
            for alias in node.names}


def _find_class(module: str, name: str, depth: int = 0) -> tuple[ast.ClassDef, ast.Module]:
    """The class `name` as defined in `module` or in the module it re-exports it from."""
    tree = _tree(_module_file(module))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node, tree
    source = _imports(tree).get(name)
    if source is None or depth > 4:
        raise LookupError(f"class {name} not found in {module}")
    return _find_class(source, name, depth + 1)


def _class_attr(cls: ast.ClassDef, attr: str):
    for node in cls.body:
        target = (node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1
                  else node.target if isinstance(node, ast.AnnAssign) else None)
        if isinstance(target, ast.Name) and target.id == attr and node.value is not None:
            return ast.literal_eval(node.value)
    return None


@cache
def methods() -> dict[str, str]:
    """Registry name -> the first line of the class's docstring (else its module's)."""
    entries = ast.literal_eval(_registry_node(METHODS / "registry.py", "METHODS"))
    out = {}
    for entry in entries.values():
        module_name, cls_name = entry.split(":")
        cls, module = _find_class(module_name, cls_name)
        name = _class_attr(cls, "name")
        if not name:
            raise LookupError(f"method class {cls_name} has no literal `name`")
        out[name] = _first_line(ast.get_docstring(cls) or ast.get_docstring(module))
    return dict(sorted(out.items()))


def _registry_node(path: Path, registry: str) -> ast.AST:
    """The value assigned to the module-level name `registry` in `path`."""
    for node in _tree(path).body:
        target = (node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1
                  else node.target if isinstance(node, ast.AnnAssign) else None)
        if isinstance(target, ast.Name) and target.id == registry and node.value is not None:
            return node.value
    raise LookupError(f"no {registry} = ... in {path}")


def _specs(path: Path, registry: str, call: str) -> dict[str, str]:
    """``Spec("name", builder, "description", ...)`` calls inside the module-level
    ``registry = {...}`` of `path`: name -> description."""
    out = {}
    for node in ast.walk(_registry_node(path, registry)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == call:
            args = {i: a for i, a in enumerate(node.args)}
            kwargs = {k.arg: k.value for k in node.keywords}
            name = args.get(0, kwargs.get("name"))
            description = args.get(2, kwargs.get("description"))
            out[ast.literal_eval(name)] = ast.literal_eval(description)
    return dict(sorted(out.items()))


def models() -> dict[str, str]:
    return _specs(BENCH / "models" / "__init__.py", "MODELS", "ModelSpec")


def datasets() -> dict[str, str]:
    return _specs(BENCH / "data" / "__init__.py", "DATASETS", "DatasetSpec")


def grids() -> dict[str, tuple[str, dict[str, int]]]:
    """Built-in grid name -> (description, size of each axis)."""
    out = {}
    for path in sorted((BENCH / "grids").glob("*.toml")):
        body = tomllib.loads(path.read_text())
        axes = body.get("axes", {})
        out[path.stem] = (str(body.get("description", "")),
                          {k: len(v) for k, v in axes.items() if isinstance(v, list)})
    return out


@cache
def sparsity_free() -> frozenset[str]:
    """Registered methods whose class sets ``uses_sparsity = False`` (dense): one run per
    (model, dataset, seed) in a grid. Read from ``methods/registry.py``'s entries, as
    ``methods()`` reads them."""
    entries = ast.literal_eval(_registry_node(METHODS / "registry.py", "METHODS"))
    out = set()
    for entry in entries.values():
        cls, _ = _find_class(*entry.split(":"))
        if _class_attr(cls, "uses_sparsity") is False:
            out.add(_class_attr(cls, "name"))
    return frozenset(out)


def grid_runs(name: str) -> int:
    """The run count of built-in grid `name` as ``bench.grid`` expands it: every entry of
    ``methods`` once per model, dataset and seed, times the sparsities unless its method ignores
    the target (tests/test_paper_grids.py checks it against the expansion)."""
    body = tomllib.loads((BENCH / "grids" / f"{name}.toml").read_text())
    axes = body["axes"]
    tables = body.get("method", {})
    free = sparsity_free()
    per_target = len(axes["models"]) * len(axes["datasets"]) * len(axes["seeds"])
    return sum(per_target * (1 if tables.get(entry, {}).get("method", entry) in free
                             else len(axes["sparsities"])) for entry in axes["methods"])



GROUPS = {"methods": "sparsebench.methods", "models": "sparsebench.models",
          "datasets": "sparsebench.datasets"}


def _module_source(module: str) -> Path | None:
    """The source file of `module` found on sys.path without importing it (or any parent
    package, as ``importlib.util.find_spec`` would)."""
    parts = module.split(".")
    for entry in sys.path:
        base = Path(entry or ".").joinpath(*parts)
        for candidate in (base / "__init__.py", base.with_suffix(".py")):
            if candidate.is_file():
                return candidate
    return None


def _plugin_description(value: str) -> str:
    """The first docstring line of the class (a method), or the ``description`` argument of
    the ``ModelSpec(...)`` / ``DatasetSpec(...)`` assigned to the name (a model or a dataset),
    that entry point `value` ("module:attr") names, read statically; "" when not found."""
    module, _, attr = value.partition(":")
    source = _module_source(module.strip())
    if source is None or not attr:
        return ""
    try:
        tree = _tree(source)
    except (OSError, SyntaxError, UnicodeDecodeError):
        return ""
    name = attr.strip().split(".")[0]
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return _first_line(ast.get_docstring(node))
        target = (node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1
                  else node.target if isinstance(node, ast.AnnAssign) else None)
        if isinstance(target, ast.Name) and target.id == name and isinstance(
                getattr(node, "value", None), ast.Call):
            call = node.value
            described = (call.args[2] if len(call.args) > 2 else
                         next((k.value for k in call.keywords if k.arg == "description"), None))
            if isinstance(described, ast.Constant) and isinstance(described.value, str):
                return described.value
    return ""


def plugins(what: str, builtin: Collection[str]) -> dict[str, str]:
    """Entry points of the group for `what` ("methods", "models", "datasets") that installed
    distributions register (bench.plugins loads them; here they are only read, from their
    metadata and source, without importing the plugin or torch): name -> description and the
    distribution it comes from. A name a built-in already has is listed as ignored (the
    built-in wins, as in bench.plugins.discover)."""
    from importlib.metadata import entry_points

    out = {}
    for ep in entry_points(group=GROUPS[what]):
        dist = getattr(ep, "dist", None)
        source = f"{dist.name} {dist.version}" if dist is not None else "an installed package"
        if ep.name in builtin:
            out[ep.name] = f"[from {source}: ignored, the built-in {ep.name} is used]"
            continue
        description = _plugin_description(ep.value) or ep.value
        out[ep.name] = f"{description} [from {source}]"
    return dict(sorted(out.items()))
