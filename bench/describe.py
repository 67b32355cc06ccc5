"""``sparsebench show method NAME``: a method's hyperparameters with their defaults, types and
the comments the source gives them, where it is defined, and its documentation (which cites the
paper and reference code it follows)."""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
from pathlib import Path


def field_comments(cls: type) -> dict[str, str]:
    """The ``# ...`` comment lines directly above each field of a dataclass, joined."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    out, pending = {}, []
    for line in lines[1:]:
        text = line.strip()
        if text.startswith("#"):
            pending.append(text.lstrip("#").strip())
            continue
        match = re.match(r"([A-Za-z_]\w*)\s*:", text)
        if match and pending:
            out[match.group(1)] = " ".join(pending)
        pending = []
    return out


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return repr(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return repr(f.default_factory())
    return "(required)"


def describe_method(name: str) -> str:
    """The text `show method NAME` prints. Raises UserError for an unknown name."""
    from methods import get_method

    cls = get_method(name)
    module = sys.modules[cls.__module__]
    source = Path(inspect.getsourcefile(cls)).resolve()
    try:
        source = source.relative_to(Path(__file__).resolve().parents[1])
    except ValueError:
        pass
    doc = inspect.cleandoc(cls.__doc__ or module.__doc__ or "(no documentation)")
    lines = [
        f"method {cls.name} ({cls.__module__}.{cls.__qualname__}, {source})",
        f"  uses the sparsity target: {'yes' if cls.uses_sparsity else 'no'}; default "
        f"distribution: {cls.default_distribution}; accepts: {', '.join(cls.distributions)}; "
        f"nonzero count: {'fixed by the target' if cls.fixed_budget else 'learned'}",
        "",
    ]
    hparams = cls.Hparams
    fields = dataclasses.fields(hparams) if dataclasses.is_dataclass(hparams) else ()
    if fields:
        comments = field_comments(hparams)
        lines.append(f"hyperparameters (set them in a grid under [method.{cls.name}]):")
        width = max(len(f.name) for f in fields)
        for f in fields:
            kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            lines.append(f"  {f.name:<{width}}  = {_default(f)}  ({kind})")
            if f.name in comments:
                lines.append(f"  {'':<{width}}    {comments[f.name]}")
    else:
        lines.append("hyperparameters: none")
    lines += ["", doc]
    return "\n".join(lines)
