"""Which of this package's modules each stage runs: its code dependency, by construction.

A stage's code is the *import closure* of its entry module inside ``pico/`` — every module it
imports, directly or through another, at the top or inside a function — found by reading the
source with ``ast`` (nothing is imported). Two things are built from it, so neither can miss a
module:

- the ``deps`` of each stage in ``dvc.yaml``: ``tests/unit/test_codedeps.py`` fails, naming the
  missing file, when they differ (``python -m pico.codedeps`` prints the lists to paste);
- the training-code version a run records (``code_version("train")``): editing what any module
  the train stage imports computes (not its comments, docstrings or layout) is a new segment of
  the run's code lineage (pico.lineage), or a new run under ``training.on_code_change: new_run``.

``cli.py`` only dispatches to the entry modules (each stage's ``run(params)``), so it is not part
of any stage's code.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
from functools import cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE = PACKAGE_DIR.name

# dvc.yaml stage -> the module whose ``run(params)`` the stage's ``pico <command>`` calls
STAGE_MODULES: dict[str, str] = {
    "embedded_data": "pico.data.embedded",
    "tokenizer": "pico.data.tokenizer",
    "tokenize": "pico.data.tokenize",
    "train": "pico.launch",  # pico.train in one process or under torchrun
    "evaluate": "pico.evaluate",
    "report": "pico.report",
}


def module_path(module: str) -> Path:
    parts = module.split(".")[1:]
    base = PACKAGE_DIR.joinpath(*parts)
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _resolve(node: ast.ImportFrom, current: str) -> list[str]:
    """Absolute module names an ``import from`` statement may refer to (the module and, for
    ``from pico.data import tokenizer``, the submodules it names)."""
    if node.level:
        is_pkg = module_path(current).name == "__init__.py"
        base = current.split(".")[: len(current.split(".")) - node.level + (1 if is_pkg else 0)]
        name = ".".join(base + ([node.module] if node.module else []))
    else:
        name = node.module or ""
    return [name] + [f"{name}.{alias.name}" for alias in node.names]


def direct_imports(module: str) -> set[str]:
    """Modules of this package that ``module`` imports anywhere in its source."""
    tree = ast.parse(module_path(module).read_text(), filename=str(module_path(module)))
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = _resolve(node, module)
        for name in names:
            if name.split(".")[0] == PACKAGE and module_path(name).is_file():
                found.add(name)
    return found


@cache
def closure(module: str) -> tuple[str, ...]:
    """``module`` and every package module it reaches through imports, sorted. Packages on the way
    (``pico/__init__.py``, ``pico/data/__init__.py``) are included: importing runs them."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages
        todo.extend(direct_imports(name))
    return tuple(sorted(seen))


def stage_files(stage: str) -> list[str]:
    """The stage's code as repository-relative paths (``pico/train.py``), sorted."""
    root = PACKAGE_DIR.parent
    return sorted(module_path(m).relative_to(root).as_posix() for m in closure(STAGE_MODULES[stage]))


def _without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                node.body = body[1:] or [ast.Pass()]
    return tree


def code_text(path: Path) -> str:
    """What a module computes, as text: its syntax tree without docstrings, positions or comments
    (which the tree never holds), so rewording, reformatting or commenting code changes nothing."""
    tree = _without_docstrings(ast.parse(path.read_text(), filename=str(path)))
    return ast.dump(tree, annotate_fields=False, include_attributes=False)


def code_version(stage: str) -> str:
    """Hash of what the stage's modules compute (path and ``code_text``), 16 hex digits. DVC still
    reruns a stage on any byte change of its files; this is what a *run* counts as its code.

    Parsing the closure costs ~0.3 s, paid by every trainer process; so the versions are kept in
    ``pico/__pycache__/code_versions.json`` (like bytecode: derived from the sources, rebuilt when
    any of the package's files changes a byte; a read-only install just computes them)."""
    cache = PACKAGE_DIR / "__pycache__" / "code_versions.json"
    tree = source_tree_hash()
    try:
        kept = json.loads(cache.read_text())
        if kept["tree"] == tree and stage in kept["versions"]:
            return kept["versions"][stage]
    except (OSError, ValueError, KeyError, TypeError):
        kept = {}
    versions = kept.get("versions", {}) if kept.get("tree") == tree else {}
    versions[stage] = computed_code_version(stage)
    try:
        cache.parent.mkdir(exist_ok=True)
        tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"tree": tree, "versions": versions}))
        os.replace(tmp, cache)  # whole or not at all: another process may be reading it
    except OSError:
        pass
    return versions[stage]


def source_tree_hash(package: Path | None = None) -> str:
    """Hash of every source file of the package, path and bytes (a few milliseconds)."""
    package = package or PACKAGE_DIR
    h = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        h.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def computed_code_version(stage: str) -> str:
    """``code_version`` without the cache."""
    h = hashlib.sha256()
    root = PACKAGE_DIR.parent
    for rel in stage_files(stage):
        h.update(rel.encode())
        h.update(code_text(root / rel).encode())
    return h.hexdigest()[:16]


def main() -> None:
    """Print each stage's code deps, as dvc.yaml lists them."""
    for stage in STAGE_MODULES:
        print(f"{stage}:")
        for rel in stage_files(stage):
            print(f"  - {rel}")


if __name__ == "__main__":
    main()
