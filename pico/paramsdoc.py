"""docs/params.md, generated from pico/config.py: every param with its type, default, bounds and the
comments written beside its field, so the reference cannot drift from the code that validates it.

``python -m pico.paramsdoc`` rewrites the page; a unit test fails when the page is stale.
"""

from __future__ import annotations

import ast
import inspect
import io
import sys
import textwrap
import tokenize
import types
import typing
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel

from pico.config import Params

PAGE = Path(__file__).resolve().parents[1] / "docs" / "params.md"

HEADER = """# Params reference

Every key `params.yaml` may hold, generated from `pico/config.py` (`python -m pico.paramsdoc`;
a test fails when this page is stale). `params.yaml` spells every one out with these defaults.
Unknown keys, wrong types and values out of bounds are refused before any work, naming the key.
"""


def field_comments(cls: type) -> dict[str, str]:
    """The comments of each field of a class: the comment lines right above it, then the one after it."""
    text = textwrap.dedent(inspect.getsource(cls))
    lines = text.splitlines()
    comments = {
        tok.start[0]: tok.string.lstrip("#").strip()
        for tok in tokenize.generate_tokens(io.StringIO(text).readline)
        if tok.type == tokenize.COMMENT
    }
    found: dict[str, str] = {}
    for node in ast.parse(text).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above, line = [], node.lineno - 1
        while line in comments and lines[line - 1].lstrip().startswith("#"):
            above.insert(0, comments[line])
            line -= 1
        after = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
        found[node.target.id] = " ".join(above + after)
    return found


def _type(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type(a) for a in args)
    if origin in (list, tuple, dict):
        return f"{origin.__name__}[{', '.join(_type(a) for a in args if a is not Ellipsis)}]"
    return getattr(annotation, "__name__", str(annotation))


def _bounds(metadata: list) -> str:
    marks = {
        annotated_types.Ge: ("≥", "ge"),
        annotated_types.Gt: (">", "gt"),
        annotated_types.Le: ("≤", "le"),
        annotated_types.Lt: ("<", "lt"),
    }
    out = []
    for m in metadata:
        for kind, (sign, attr) in marks.items():
            if isinstance(m, kind):
                out.append(f"{sign} {getattr(m, attr)}")
        if isinstance(m, annotated_types.MinLen):
            out.append(f"at least {m.min_length}")
    return ", ".join(out)


def _cell(value: Any) -> str:
    text = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    return f"`{text}`".replace("|", "\\|")


def _nested(annotation: Any) -> type[BaseModel] | None:
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _rows(model: type[BaseModel], values: dict, prefix: str) -> list[str]:
    comments = {}
    for cls in reversed(model.__mro__):  # a subclass's comment wins
        if inspect.isclass(cls) and issubclass(cls, BaseModel) and cls.__module__ == model.__module__:
            comments.update(field_comments(cls))
    rows = []
    for name, field in model.model_fields.items():
        key, value = f"{prefix}{name}", values.get(name)
        inner = _nested(field.annotation)
        if inner is not None:
            rows += _rows(inner, value or {}, f"{key}.")
            continue
        args = typing.get_args(field.annotation)
        if typing.get_origin(field.annotation) is dict and args and _nested(args[-1]):
            rows.append(
                f"| `{key}` | {_type(field.annotation).replace(args[-1].__name__, 'mapping')} "
                f"| {_cell(value)} |  | {comments.get(name, '')} |"
            )
            rows += _rows(args[-1], args[-1]().model_dump(mode="json"), f"{key}.<name>.")
            continue
        rows.append(
            f"| `{key}` | {_type(field.annotation)} | {_cell(value)} | {_bounds(field.metadata)} "
            f"| {comments.get(name, '')} |"
        )
    return rows


def render() -> str:
    defaults = Params().model_dump(mode="json")
    parts = [HEADER]
    for section, field in Params.model_fields.items():
        model = field.annotation
        doc = inspect.cleandoc(model.__dict__.get("__doc__") or "")  # its own, not BaseModel's
        parts.append(
            f"## {section}\n\n"
            + (f"{doc}\n\n" if doc else "")
            + "| key | type | default | bounds | meaning |\n|---|---|---|---|---|\n"
            + "\n".join(_rows(model, defaults[section], f"{section}."))
            + "\n"
        )
    return "\n".join(parts)


if __name__ == "__main__":
    PAGE.write_text(render())
    print(f"wrote {PAGE}", file=sys.stderr)
