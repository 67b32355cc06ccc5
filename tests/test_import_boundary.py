"""One direction of dependency (issue 10): ``methods/`` imports from ``bench`` only
configuration, errors and models; what else a method needs reaches it through
``SetupContext.harness``. Checked on the source, so late imports inside functions count too."""

from __future__ import annotations

import ast
from pathlib import Path

METHODS = Path(__file__).resolve().parents[1] / "methods"
# bench.plugins is the entry-point discovery the method registry shares with the model and data
# registries (importlib.metadata and bench.errors only: no part of the harness).
ALLOWED = ("bench.config", "bench.errors", "bench.models", "bench.plugins")


def bench_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of a ``bench`` module in `path`, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from bench import store` imports bench.store.
            names = [f"{node.module}.{a.name}" if node.module == "bench" else node.module
                     for a in node.names]
        else:
            continue
        found += [(node.lineno, n) for n in names if n == "bench" or n.startswith("bench.")]
    return found


def allowed(module: str) -> bool:
    return any(module == a or module.startswith(a + ".") for a in ALLOWED)


def test_methods_import_only_config_errors_and_models_from_bench():
    files = sorted(METHODS.rglob("*.py"))
    assert len(files) >= 20  # the walk sees the method modules, sub-packages included
    bad = [f"{path.relative_to(METHODS.parent)}:{line} imports {module}"
           for path in files for line, module in bench_imports(path) if not allowed(module)]
    assert bad == []


def test_the_check_sees_every_form_of_import(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "import bench.store\n"
        "from bench import train, config\n"
        "from bench.models import resnet\n"
        "from . import base\n"
        "def late():\n"
        "    from bench.run import run_one\n")
    assert bench_imports(source) == [(1, "bench.store"), (2, "bench.train"),
                                     (2, "bench.config"), (3, "bench.models"),
                                     (6, "bench.run")]
    assert [allowed(m) for _, m in bench_imports(source)] == [False, False, True, True, False]
