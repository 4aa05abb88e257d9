"""`pico ablate`'s price gate: the ladder priced with `pico plan`'s calibration before anything is
queued, and refused over `--budget` with one line, queueing nothing."""

import copy

import pytest
import yaml

from pico import ablate
from pico.config import parse_params
from pico.errors import PipelineError


def test_a_ladder_over_its_budget_is_refused_before_anything_is_queued(params_dict, prepared, tmp_path, monkeypatch):
    a = parse_params(params_dict).model_dump(mode="json")  # every key, as a params.yaml spells them
    b = copy.deepcopy(a)
    b["optim"]["lr"] *= 10
    (tmp_path / "A.yaml").write_text(yaml.safe_dump(a))
    (tmp_path / "B.yaml").write_text(yaml.safe_dump(b))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(a))
    monkeypatch.chdir(tmp_path)  # not a git repository: no HEAD run to reuse, no experiment finished

    def no_dvc(*args, **kwargs):
        raise AssertionError(f"dvc called: {args}")

    monkeypatch.setattr(ablate, "dvc_command", no_dvc)
    priced = ablate.price_ladder(ablate.build("A.yaml", "B.yaml", 2, False), set())
    assert priced["runs"] == 4 and priced["device_hours"] > 0  # A and A + lr (= B: one run), two seeds each
    with pytest.raises(PipelineError, match=r"needs [0-9.e-]+ device-hours, over --budget 1e-09"):
        ablate.ablate("A.yaml", "B.yaml", budget=1e-9)
