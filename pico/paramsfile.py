"""A params file as text → a raw mapping, refusing what DVC refuses (a key given twice), what no
params file needs (YAML aliases expanding past a million values), and text that is not UTF-8 —
each with one line naming the file, line or byte — and a pydantic validation failure as the lines
a person reads. pico.config validates the mapping against the params model.
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pico.errors import ConfigError

# Params files need no YAML aliases; a few are harmless, but a "billion laughs" file (aliases of
# aliases) expands to more values than anything can validate or print: refused before it is built.
MAX_EXPANDED_VALUES = 1_000_000
_SHOWN = reprlib.Repr()  # how a bad value is shown: capped, whatever its size
_SHOWN.maxlevel, _SHOWN.maxdict, _SHOWN.maxlist, _SHOWN.maxstring, _SHOWN.maxother = 2, 4, 4, 60, 60


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """How many values ``node`` becomes once every alias is expanded (each shared node counted once
    per reference, computed once: linear in the file, however large the expansion)."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = 1  # a recursive alias counts once rather than looping
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(n, memo) for n in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    else:
        size = 1
    memo[id(node)] = min(size, MAX_EXPANDED_VALUES + 1)
    return memo[id(node)]


class _ParamsLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses what DVC refuses (a key given twice in one mapping: PyYAML
    keeps the last silently, so pico and DVC would read different params) and alias bombs."""

    def __init__(self, stream: Any, source: str):
        super().__init__(stream)
        self.source = source

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_EXPANDED_VALUES:
            raise ConfigError(
                f"{self.source}: its YAML aliases expand to over {MAX_EXPANDED_VALUES:,} values; "
                "params files do not need aliases: write the values out"
            )
        return self.construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise ConfigError(
                    f"{self.source}: key {key!r} is given twice (lines {seen[key]} and {line}); "
                    "DVC refuses such a file: keep one"
                )
            if isinstance(key, (str, int, float, bool)):
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(text: str, source: str) -> Any:
    """A params-like YAML text, refusing duplicate keys and alias bombs with one line naming ``source``."""
    loader = _ParamsLoader(text, source)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML: {' '.join(str(err).split())[:300]}") from None
    finally:
        loader.dispose()


def read_params_file(path: str | Path) -> Any:
    """The raw mapping of a params file: one line naming the file when it is missing, not UTF-8 or not YAML."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{data[err.start]:02x} on line {line}); save it as UTF-8"
        ) from None
    return read_yaml(text, str(path))


def format_errors(err: ValidationError, raw: dict[str, Any], source: str) -> str:
    """A validation failure as one line per bad key (one line in all for one problem), naming the
    key, what is wrong and the value given, capped."""
    lines = [f"invalid params in {source}:"]
    errors = err.errors()
    if len(errors) > 20:
        lines.append(f"  ({len(errors)} problems; the first 20:)")
    for e in errors[:20]:
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (misspelt? not a param this project reads)"
        if e["loc"]:
            value: Any = raw
            for p in e["loc"]:
                value = (
                    value.get(p)
                    if isinstance(value, dict)
                    else (
                        value[p] if isinstance(value, (list, tuple)) and isinstance(p, int) and p < len(value) else None
                    )
                )
            # capped: a value may be huge or deeply shared (YAML aliases), and this is one line per key
            shown = f" (got {_SHOWN.repr(value)})" if e["type"] != "missing" else ""
        else:
            shown = ""
        lines.append(f"  {key}: {msg}{shown}")
    if len(lines) == 2:  # one problem: one line
        return f"{lines[0]} {lines[1].strip()}"
    return "\n".join(lines)
