"""Declarative checks of configuration values: one mechanism for the run config and for every
method's hyperparameters.

A dataclass field states what it accepts in its metadata::

    epochs: int = field(default=20, metadata=check(ge=1))
    optimizer: str = field(default="adam", metadata=check(choices=OPTIMIZERS))
    end_fraction: float = field(default=0.77, metadata=check(ge=0, le=1, above="begin_fraction"))

The field's annotation gives its type, the metadata its range or choices. ``build`` turns parsed
TOML/JSON into the dataclass and ``validate`` re-checks an instance built in code; both raise
one ``UserError`` naming the key, the value and what is valid, e.g.
``train.lr = -0.1: expected a number > 0``. The error's ``path`` (``("train", "lr")``) lets a
grid point at the file line of the offending key.

Types follow TOML, strictly: a bool is not an integer and a string is not a number; an integer
is accepted for a float (TOML users write ``lr = 1``); a list for a tuple.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
import types
import typing
from dataclasses import dataclass, fields, is_dataclass
from functools import cache
from typing import Any

from bench.errors import UserError

METADATA_KEY = "check"


@dataclass(frozen=True)
class Check:
    """What a field accepts beyond its type. Bounds apply to a number, or to every element of a
    tuple of numbers; `above` (`below`) names a field of the same dataclass that this one must
    exceed (stay under), strictly; `same_length` one whose tuple this one's must match in
    length; `divides` an integer field that this one must divide exactly."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    choices: tuple[str, ...] | None = None
    above: str | None = None
    below: str | None = None
    same_length: str | None = None
    # An integer that must divide the integer field named here (world_size -> batch_size).
    divides: str | None = None
    # A string must match this regular expression (whole); `pattern_text` says it in words.
    pattern: str | None = None
    pattern_text: str | None = None

    def describe_range(self) -> str:
        lo = (f"[{_num(self.ge)}" if self.ge is not None
              else f"({_num(self.gt)}" if self.gt is not None else None)
        hi = (f"{_num(self.le)}]" if self.le is not None
              else f"{_num(self.lt)})" if self.lt is not None else None)
        if lo and hi:
            return f"in {lo}, {hi}"
        if lo:
            return f"{'>=' if self.ge is not None else '>'} {lo[1:]}"
        if hi:
            return f"{'<=' if self.le is not None else '<'} {hi[:-1]}"
        return ""

    def in_range(self, x: float) -> bool:
        return not ((self.gt is not None and not x > self.gt)
                    or (self.ge is not None and not x >= self.ge)
                    or (self.lt is not None and not x < self.lt)
                    or (self.le is not None and not x <= self.le)
                    or (isinstance(x, float) and math.isnan(x)))


def check(**constraints: Any) -> dict[str, Check]:
    """Field metadata: ``field(default=..., metadata=check(gt=0))``."""
    if "choices" in constraints:
        constraints["choices"] = tuple(constraints["choices"])
    return {METADATA_KEY: Check(**constraints)}


def _num(x: float) -> str:
    return f"{x:g}"


def toml_value(value: Any) -> str:
    """A value as the user wrote it in TOML (true, "lots", [1, 2], inf, nan), for messages."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (list, tuple)) and any(isinstance(v, float) and not math.isfinite(v)
                                                for v in value):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, (bool, str, int, float, list, tuple)) or value is None:
        try:
            return json.dumps(list(value) if isinstance(value, tuple) else value)
        except (TypeError, ValueError):
            pass
    return repr(value)


# --- types ----------------------------------------------------------------------------------

@cache
def _hints(cls: type) -> dict[str, Any]:
    module = sys.modules.get(cls.__module__)
    return typing.get_type_hints(cls, globalns=vars(module) if module else None)


class _WrongType(Exception):
    pass


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if origin is tuple:
        args = typing.get_args(tp)
        inner = _type_name(args[0]) if args else "a value"
        plural = {"an integer": "integers", "a number": "numbers", "a string": "strings",
                  "true or false": "booleans"}.get(inner, "values")
        return f"a list of {plural}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join("none" if a is type(None) else _type_name(a)
                           for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any) -> Any:
    """`value` as type `tp` (int -> float, list -> tuple); _WrongType when it is not one."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _WrongType
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _WrongType
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _WrongType
    if tp is str:
        if isinstance(value, str):
            return value
        raise _WrongType
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _WrongType
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0]) for v in value)
        if len(args) != len(value):
            raise _WrongType
        return tuple(_coerce(v, a) for v, a in zip(value, args, strict=True))
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(value, arg)
            except _WrongType:
                continue
        raise _WrongType
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _WrongType
    return value  # an annotation we do not model: accepted as is


# --- checking -------------------------------------------------------------------------------

def _expected(tp: Any, spec: Check | None) -> str:
    name = _type_name(tp)
    if spec is None:
        return name
    if spec.choices is not None:
        return "one of " + ", ".join(json.dumps(c) for c in spec.choices)
    if spec.pattern is not None:
        return spec.pattern_text or f"{name} matching {spec.pattern}"
    rng = spec.describe_range()
    return f"{name} {rng}" if rng else name


def _error(where: str, key: str, value: Any, expected: str) -> UserError:
    path = (*where.split("."), key) if where else (key,)
    return UserError(f"{'.'.join(path)} = {toml_value(value)}: expected {expected}", key=key,
                     path=path)


def _check_value(where: str, key: str, raw: Any, tp: Any, spec: Check | None) -> Any:
    """`raw` coerced to `tp` and checked against `spec`; the error shows `raw` as written."""
    try:
        value = _coerce(raw, tp)
    except _WrongType:
        raise _error(where, key, raw, _expected(tp, spec)) from None
    # TOML reads inf and nan as floats; no setting means either (an infinite lr or decay
    # trains a NaN model, a NaN bound compares false with everything).
    if any(isinstance(item, float) and not math.isfinite(item)
           for item in (value if isinstance(value, tuple) else (value,))):
        expected = _expected(tp, spec)
        finite = ("a list of finite " + expected.removeprefix("a list of ")
                  if expected.startswith("a list of ") else "a finite " + expected[2:]
                  if expected.startswith("a ") else f"finite: {expected}")
        raise _error(where, key, raw, finite)
    if spec is None or value is None:
        return value
    if spec.choices is not None and value not in spec.choices:
        raise _error(where, key, raw, _expected(tp, spec))
    if spec.pattern is not None and isinstance(value, str) \
            and not re.fullmatch(spec.pattern, value):
        raise _error(where, key, raw, _expected(tp, spec))
    items = value if isinstance(value, tuple) else (value,)
    for item in items:
        if isinstance(item, (int, float)) and not isinstance(item, bool) \
                and not spec.in_range(item):
            raise _error(where, key, raw, _expected(tp, spec))
    return value


def _check_relations(cls: type, where: str, values: dict[str, Any], given: set[str]) -> None:
    """Cross-field rules; the error names a key the user gave (the other one if this one is a
    default)."""
    for f in fields(cls):
        spec = f.metadata.get(METADATA_KEY)
        if spec is None or f.name not in values:
            continue
        value = values[f.name]
        for other, ok, rule in (
            (spec.above, lambda a, b: a is None or b is None or a > b, "above"),
            (spec.below, lambda a, b: a is None or b is None or a < b, "below"),
            (spec.same_length, lambda a, b: len(a) == len(b), "as long as"),
            (spec.divides, lambda a, b: b % a == 0, "a divisor of"),
        ):
            if other is None or other not in values:
                continue
            if not ok(value, values[other]):
                key, ref = (f.name, other) if f.name in given or other not in given \
                    else (other, f.name)
                bad, ref_value = values[key], values[ref]
                default = "" if ref in given else ", its default"
                if rule in ("above", "below"):
                    flip = {"above": "below", "below": "above"}
                    side = rule if key == f.name else flip[rule]
                    shown = f"{ref_value:.6g}" if isinstance(ref_value, float) \
                        else toml_value(ref_value)
                    expected = f"a value {side} {ref} ({shown}{default})"
                elif rule == "a divisor of":
                    # Said of the key the user gave: a divisor of the other, or a multiple.
                    word = "a divisor of" if key == f.name else "a multiple of"
                    expected = f"{word} {ref} ({ref_value}{default})"
                else:
                    expected = (f"a list as long as {ref} ({len(ref_value)} values"
                                f"{default})")
                raise _error(where, key, bad, expected)


def check_values(cls: type, values: dict[str, Any], where: str,
                 relations: bool = True) -> dict[str, Any]:
    """Check parsed values for the dataclass `cls` (unknown keys, types, ranges, choices and,
    with `relations`, the rules between fields, the missing fields taken at their defaults);
    return them coerced (int -> float, list -> tuple). Raises UserError."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise UserError(f"unknown key(s) {', '.join(unknown)} in {where}; valid: "
                        f"{', '.join(sorted(known))}", key=unknown[0],
                        path=(*where.split("."), unknown[0]) if where else (unknown[0],))
    hints = _hints(cls)
    out = {key: _check_value(where, key, value, hints.get(key, Any),
                             known[key].metadata.get(METADATA_KEY))
           for key, value in values.items()}
    if relations:
        full = {f.name: out[f.name] if f.name in out else _default(f) for f in fields(cls)}
        _check_relations(cls, where, full, set(values))
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def build(cls: type, values: dict[str, Any], where: str) -> Any:
    """The dataclass `cls` from parsed TOML/JSON `values`, every value checked."""
    return cls(**check_values(cls, values, where))


def validate(obj: Any, where: str) -> None:
    """Check every field of a config dataclass built in code (nested dataclasses too, each under
    its field's name)."""
    cls = type(obj)
    values = {}
    for f in fields(cls):
        value = getattr(obj, f.name)
        if is_dataclass(value) and not isinstance(value, type):
            validate(value, f"{where}.{f.name}" if where else f.name)
        else:
            values[f.name] = value
    hints = _hints(cls)
    for key, value in values.items():
        spec = next(f for f in fields(cls) if f.name == key).metadata.get(METADATA_KEY)
        _check_value(where, key, value, hints.get(key, Any), spec)
    _check_relations(cls, where, values, set(values))
