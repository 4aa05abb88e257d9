"""Each stage's code dependency is complete by construction: dvc.yaml lists exactly the import
closure of the stage's module, the closure matches what Python really imports, and the training
fingerprint hashes the same files."""

import pytest
import yaml

from pico import codedeps
from tests.helpers import REPO


def dvc_code_deps(stage: str) -> list[str]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return sorted(d for d in stages[stage]["deps"] if d.startswith("pico/"))


@pytest.mark.parametrize("stage", list(codedeps.STAGE_MODULES))
def test_dvc_yaml_lists_the_stage_import_closure(stage):
    want, have = codedeps.stage_files(stage), dvc_code_deps(stage)
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    assert not missing and not extra, (
        f"dvc.yaml stage {stage}: add {missing}, remove {extra} (`python -m pico.codedeps` prints the lists)"
    )


def test_closure_sees_function_level_and_relative_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "pico"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "entry.py").write_text("def f():\n    from pico.sub import leaf\n    from . import other\n")
    (pkg / "sub" / "leaf.py").write_text("from .deep import x\n")
    (pkg / "sub" / "deep.py").write_text("x = 1\n")
    (pkg / "other.py").write_text("import json\n")
    (pkg / "unused.py").write_text("")
    monkeypatch.setattr(codedeps, "PACKAGE_DIR", pkg)
    codedeps.closure.cache_clear()
    try:
        assert codedeps.closure("pico.entry") == (
            "pico",
            "pico.entry",
            "pico.other",
            "pico.sub",
            "pico.sub.deep",
            "pico.sub.leaf",
        )
    finally:
        codedeps.closure.cache_clear()


def test_training_fingerprint_hashes_the_modules_review_found_missing():
    files = codedeps.stage_files("train")
    for name in ("pico/monitor.py", "pico/distributed.py", "pico/data/eval_windows.py", "pico/config.py"):
        assert name in files
    report = codedeps.stage_files("report")
    for name in ("pico/diagnose.py", "pico/runs.py", "pico/plots.py", "pico/config.py"):
        assert name in report


def test_code_version_changes_with_what_train_code_computes_not_its_comments(tmp_path, monkeypatch):
    import shutil

    copy = tmp_path / "pico"
    shutil.copytree(REPO / "pico", copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(codedeps, "PACKAGE_DIR", copy)
    codedeps.closure.cache_clear()
    try:
        base = codedeps.code_version("train")
        # comments, docstrings, layout: the same code
        (copy / "config.py").write_text((copy / "config.py").read_text() + "\n# a comment\n\n\n")
        loss = (copy / "loss.py").read_text()
        (copy / "loss.py").write_text(loss.replace('"""', '"""Reworded. ', 1).replace("(", "(  ", 1))
        assert codedeps.code_version("train") == base
        (copy / "plan.py").write_text((copy / "plan.py").read_text() + "\ndef unused():\n    return 1\n")
        assert codedeps.code_version("train") == base  # the planner is not training code (no plan <-> train cycle)
        for rel in ("monitor.py", "data/loader.py"):
            (copy / rel).write_text((copy / rel).read_text() + "\nEDITED = 1\n")
            now = codedeps.code_version("train")
            assert now != base, rel
            base = now
        (copy / "report.py").write_text((copy / "report.py").read_text() + "\nEDITED = 1\n")
        assert codedeps.code_version("train") == base  # the report is not training code
    finally:
        codedeps.closure.cache_clear()


def test_the_cached_code_version_is_the_computed_one_and_any_byte_changes_the_tree(tmp_path):
    from pico.codedeps import PACKAGE_DIR, code_version, computed_code_version, source_tree_hash

    assert code_version("train") == computed_code_version("train") == code_version("train")
    assert (PACKAGE_DIR / "__pycache__" / "code_versions.json").exists()
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    before = source_tree_hash(tmp_path / "pkg")
    (tmp_path / "pkg" / "a.py").write_text("x = 1  # a comment\n")
    assert source_tree_hash(tmp_path / "pkg") != before  # the cache key is bytes, stricter than the version
