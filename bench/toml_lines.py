"""Where things are in a TOML file, for errors that say ``file:line``: the one place that reads
TOML text line by line (grid files, their ``[slurm]`` table, the published-numbers file).

``read`` reads and parses a file, ``load`` parses its text: an unreadable file, one that is
not UTF-8 or a syntax error is one ``UserError`` (at its line);
``locate`` finds the line that defines a key path (tables, array-of-tables entries, keys,
dotted keys); ``mention`` finds a bare word (a name inside a list, a key whose table is not
known).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from bench.errors import UserError

# A path step: a key, or the index of an [[array]] entry.
Step = str | int

_HEADER = re.compile(r"^\s*(\[[^\[\]]*(?:\[[^\]]*\][^\[\]]*)*\])\s*(#.*)?$")
_ARRAY_HEADER = re.compile(r"^\s*\[(\[[^\[\]]*\])\]\s*(#.*)?$")
_KEY = re.compile(r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')"""
                  r"""(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*=""")


def read(path: Path, noun: str, what: str | None = None) -> tuple[dict[str, Any], str]:
    """The TOML file `path` (the `noun` of errors, e.g. "grid file"), parsed, and its text.
    Unreadable, not UTF-8 (at the line of the first bad byte) or malformed (``load``, with
    `what`, default `noun`): one UserError."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {noun} {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: the {noun} is not UTF-8 text (byte "
                        f"0x{raw[exc.start]:02x}); save it as UTF-8, as TOML requires") from None
    if text.startswith("\ufeff"):
        # Windows editors' "UTF-8 with BOM"; tomllib would only say "Invalid statement".
        raise UserError(f"{path}:1: the {noun} starts with a byte-order mark (U+FEFF); save it "
                        "as UTF-8 without BOM, as TOML requires")
    return load(text, path, what or noun), text


def load(text: str, path: Path | str, what: str) -> dict[str, Any]:
    """`text` parsed as TOML; a syntax error is a UserError
    ``'<path>:<line>: malformed <what>: <tomllib's message>'``."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        line = match.group(1) if match else "1"
        raise UserError(f"{path}:{line}: malformed {what}: {exc}") from None


def _toml_path(fragment: str) -> tuple[str, ...] | None:
    """The key path a TOML table header or dotted key spells (quotes and dots as TOML reads
    them), e.g. '[method."gmp-lr0.05"]' -> ("method", "gmp-lr0.05")."""
    try:
        node: Any = tomllib.loads(fragment)
    except tomllib.TOMLDecodeError:
        return None
    keys: list[str] = []
    while isinstance(node, dict) and len(node) == 1:
        key, node = next(iter(node.items()))
        keys.append(key)
    return tuple(keys)


def _definitions(text: str):
    """(line number, the key path it defines) for every header and key line of `text`. The
    n-th ``[[name]]`` header defines ``("name", n)`` (0-based), and its keys lie below it."""
    table: tuple[Step, ...] = ()
    entries: dict[tuple[str, ...], int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        array = _ARRAY_HEADER.match(line)
        header = None if array else _HEADER.match(line)
        if array or header:
            found = _toml_path((array or header).group(1))
            if found is None:
                continue
            if array:
                entries[found] = entries.get(found, -1) + 1
                table = (*found, entries[found])
            else:
                table = found
            yield number, table
            continue
        key = _KEY.match(line)
        if key:
            keys = _toml_path(f"{key.group(1)} = 0")
            if keys is not None:
                yield number, (*table, *keys)


def locate(text: str, path: tuple[Step, ...], *, exact: bool = False) -> int | None:
    """The line that defines `path` (a table header, an ``[[array]]`` entry by its index, a key,
    a dotted key). Unless `exact`: failing that, the line of the longest prefix of `path` the
    file defines (a value inside an inline table is found at its table's key, a missing key
    at its table's header), and failing that the first line that defines something inside
    `path` (``[source.x]`` for ``("source",)``). None when nothing fits."""
    best, best_len, inside = None, 0, None
    for number, defined in _definitions(text):
        if len(defined) > best_len and tuple(path[:len(defined)]) == defined:
            best, best_len = number, len(defined)
        elif inside is None and defined[:len(path)] == tuple(path):
            inside = number
    if exact:
        return best if best_len == len(path) else None
    return best if best is not None else inside


def mention(text: str, word: str) -> int | None:
    """The line that defines `word` as a key or in a table header, else the first that quotes
    it, else the first that holds it as a word: for names given without their table (a
    method name inside ``methods = [...]``)."""
    k = re.escape(word)
    patterns = [rf"^\s*(\[[^\]]*\b{k}\b[^\]]*\]|\"?{k}\"?\s*=)", rf"[\"']{k}[\"']", rf"\b{k}\b"]
    lines = text.splitlines()
    for pattern in patterns:
        for number, line in enumerate(lines, start=1):
            if re.search(pattern, line):
                return number
    return None
