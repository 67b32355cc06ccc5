"""Published numbers (``baselines/published.toml``): parsed, validated, and looked up per
(model, dataset) for the report.

The file is data: ``[source.<key>]`` tables carry the citation (paper, table, what the numbers
were verified against, how the recipe differs from ours) and each ``[[published]]`` table one
published number in our registry's model / dataset / method names. Every problem is a
``UserError`` reading ``file:line: message``, the line being the one that sets the bad value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import UserError
from bench.toml_lines import locate
from bench.toml_lines import read as read_toml

# The repository's baselines/ folder; absent from a non-editable install, which then simply
# has no published numbers.
DEFAULT_PATH = Path(__file__).resolve().parents[2] / "baselines" / "published.toml"

SOURCE_REQUIRED = ("citation", "paper", "table", "verified")
SOURCE_OPTIONAL = ("protocol",)
ENTRY_REQUIRED = ("source", "model", "dataset", "method", "sparsity", "top1")
ENTRY_OPTIONAL = ("top5", "params", "macs", "protocol", "row")


@dataclass(frozen=True)
class Source:
    key: str
    citation: str
    paper: str
    table: str
    verified: str
    protocol: str = ""


@dataclass(frozen=True)
class Published:
    """One published number. ``params`` / ``macs`` are None where the source gives none."""

    source: Source
    model: str
    dataset: str
    method: str
    sparsity: float
    top1: float
    top5: float | None = None
    params: float | None = None
    macs: float | None = None
    protocol: str = ""
    # The row of the source's table the number is copied from, in the source's own words.
    row: str = ""

    @property
    def label(self) -> str:
        return f"{self.method} (published: {self.source.citation})"


class _Lines:
    """The ``file:line`` of errors in the published-numbers file: the line of a key inside the
    n-th ``[[published]]`` or a ``[source.<key>]`` table, else the table's header, else line 1
    (``bench.toml_lines.locate``)."""

    def __init__(self, path: Path, text: str):
        self.path, self.text = path, text

    def _at(self, *path: str | int | None) -> int:
        return locate(self.text, tuple(p for p in path if p is not None)) or 1

    def entry(self, index: int, key: str | None, message: str) -> UserError:
        return UserError(f"{self.path}:{self._at('published', index, key)}: published entry "
                         f"{index + 1}: {message}")

    def source(self, name: str, key: str | None, message: str) -> UserError:
        return UserError(f"{self.path}:{self._at('source', name, key)}: source {name!r}: "
                         f"{message}")

    def top(self, key: str, message: str) -> UserError:
        return UserError(f"{self.path}:{self._at(key)}: {message}")


def _names() -> dict[str, list[str]]:
    from bench.data import DATASETS
    from bench.models import MODELS
    from methods import REGISTRY

    return {"model": sorted(MODELS), "dataset": sorted(DATASETS), "method": sorted(REGISTRY)}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load(path: Path | None = None) -> list[Published]:
    """Entries of `path`, in file order. ``None`` reads ``DEFAULT_PATH`` and treats a missing
    default file as "no published numbers"; an explicit path must exist."""
    if path is None:
        if not DEFAULT_PATH.is_file():
            return []
        path = DEFAULT_PATH
    body, text = read_toml(Path(path), "published numbers file")
    return parse(body, _Lines(Path(path), text))


def parse(body: dict[str, Any], where: _Lines) -> list[Published]:
    for key in body:
        if key not in ("source", "published"):
            raise where.top(key, f"unknown top-level key {key!r}; expected [source.<key>] "
                            "tables and [[published]] entries")
    sources = _sources(body.get("source", {}), where)
    entries = body.get("published", [])
    if not isinstance(entries, list):
        raise where.top("published", "published entries must be [[published]] tables")
    names = _names()
    out: list[Published] = []
    seen: dict[tuple, int] = {}
    for index, entry in enumerate(entries):
        item = _entry(entry, index, sources, names, where)
        key = (item.source.key, item.model, item.dataset, item.method, item.sparsity)
        if key in seen:
            raise where.entry(index, "sparsity", f"duplicates entry {seen[key] + 1} (same "
                              "source, model, dataset, method and sparsity)")
        seen[key] = index
        out.append(item)
    return out


def _sources(tables: Any, where: _Lines) -> dict[str, Source]:
    if not isinstance(tables, dict):
        raise where.top("source", "sources must be [source.<key>] tables")
    out: dict[str, Source] = {}
    citations: dict[str, str] = {}
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise where.source(name, None, "must be a table")
        for key, value in table.items():
            if key not in SOURCE_REQUIRED + SOURCE_OPTIONAL:
                raise where.source(name, key, f"unknown key {key!r}; valid: "
                                   f"{', '.join(SOURCE_REQUIRED + SOURCE_OPTIONAL)}")
            if not isinstance(value, str) or not value.strip():
                raise where.source(name, key, f"{key} must be a non-empty string")
        for key in SOURCE_REQUIRED:
            if key not in table:
                raise where.source(name, None, f"missing {key!r}")
        # The citation labels rows in the report, so two sources must not share one.
        if table["citation"] in citations:
            raise where.source(name, "citation", f"citation {table['citation']!r} is already "
                               f"used by source {citations[table['citation']]!r}")
        citations[table["citation"]] = name
        out[name] = Source(key=name, **table)
    return out


def _entry(entry: Any, index: int, sources: dict[str, Source], names: dict[str, list[str]],
           where: _Lines) -> Published:
    if not isinstance(entry, dict):
        raise where.entry(index, None, "must be a table")
    for key in entry:
        if key not in ENTRY_REQUIRED + ENTRY_OPTIONAL:
            raise where.entry(index, key, f"unknown key {key!r}; valid: "
                              f"{', '.join(ENTRY_REQUIRED + ENTRY_OPTIONAL)}")
    for key in ENTRY_REQUIRED:
        if key not in entry:
            raise where.entry(index, None, f"missing {key!r}")
    for key in ("source", "model", "dataset", "method", "protocol", "row"):
        if key in entry and not isinstance(entry[key], str):
            raise where.entry(index, key, f"{key} must be a string")
    if entry["source"] not in sources:
        raise where.entry(index, "source", f"unknown source {entry['source']!r}; defined: "
                          f"{', '.join(sorted(sources)) or '(none)'}")
    for kind, valid in names.items():
        if entry[kind] not in valid:
            raise where.entry(index, kind, f"unknown {kind} {entry[kind]!r}; valid: "
                              f"{', '.join(valid)}")
    sparsity = entry["sparsity"]
    if not _number(sparsity) or not 0.0 <= sparsity < 1.0:
        raise where.entry(index, "sparsity", f"sparsity must be a number in [0, 1), got "
                          f"{sparsity!r}")
    if entry["method"] == "dense" and sparsity != 0:
        raise where.entry(index, "sparsity", "a dense entry has sparsity 0")
    for key in ("top1", "top5"):
        value = entry.get(key)
        if key in entry and (not _number(value) or not 0.0 <= value <= 100.0):
            raise where.entry(index, key, f"{key} must be a percentage in [0, 100], got "
                              f"{value!r}")
    for key in ("params", "macs"):
        value = entry.get(key)
        if key in entry and (not _number(value) or value <= 0):
            raise where.entry(index, key, f"{key} must be a positive number, got {value!r}")
    return Published(
        source=sources[entry["source"]], model=entry["model"], dataset=entry["dataset"],
        method=entry["method"], sparsity=float(sparsity), top1=float(entry["top1"]),
        top5=_float(entry.get("top5")), params=_float(entry.get("params")),
        macs=_float(entry.get("macs")), protocol=entry.get("protocol", ""),
        row=entry.get("row", ""),
    )


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def for_section(entries: list[Published], model: str, dataset: str) -> list[Published]:
    """The entries of one (model, dataset): dense first, then by method, source and sparsity
    (the order rows appear in the tables)."""
    mine = [e for e in entries if e.model == model and e.dataset == dataset]
    order: dict[str, int] = {}
    for i, e in enumerate(entries):
        order.setdefault(e.source.key, i)
    return sorted(mine, key=lambda e: (e.method != "dense", e.method, order[e.source.key],
                                       e.sparsity))


def fmt_number(value: float) -> str:
    """A published percentage as printed: no digits added (73.3 stays '73.3'), and a whole
    number keeps one decimal (TOML reads the paper's 90.0 as 90.0 == 90)."""
    text = f"{value:g}"
    return text if "." in text or "e" in text else f"{text}.0"


def fmt_count(value: float) -> str:
    """Parameter / MAC counts at the source's precision: 7.3e6 -> '7.3M', 0.26e6 -> '0.26M',
    4.09e9 -> '4.09G'."""
    for floor, div, suffix in ((1e9, 1e9, "G"), (1e5, 1e6, "M"), (1e3, 1e3, "k")):
        if value >= floor:
            return f"{value / div:.4g}{suffix}"
    return f"{value:g}"
