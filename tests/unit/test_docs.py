"""The README and docs/ stay a newcomer's map: short, and every relative link lands on a file."""

import re

from tests.helpers import REPO

PAGES = [REPO / "README.md", REPO / "benchmarks/README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_the_readme_is_short_and_the_depth_lives_in_docs():
    assert len((REPO / "README.md").read_text().splitlines()) <= 150
    assert len(list((REPO / "docs").glob("*.md"))) >= 4


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert not broken, broken


def test_the_params_reference_is_generated_from_config():
    from pico import paramsdoc

    assert paramsdoc.PAGE.read_text() == paramsdoc.render(), "docs/params.md is stale: python -m pico.paramsdoc"


def test_every_param_has_a_meaning_in_the_reference():
    from pico import paramsdoc

    rows = [line for line in paramsdoc.render().splitlines() if line.startswith("| `")]
    assert len(rows) > 100
    assert not [r for r in rows if r.rstrip().endswith("|  |")], "a field in pico/config.py has no comment"


def test_field_comments_come_from_above_and_beside(tmp_path):
    from pico.config import OptimConfig
    from pico.paramsdoc import field_comments

    found = field_comments(OptimConfig)
    assert found["lr"].startswith("pico-train: 3e-4")
    assert found["warmup_start"].startswith("warmup's first step") and "lr 0" in found["warmup_start"]
