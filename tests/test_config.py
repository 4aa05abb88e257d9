import copy
import shutil

import pytest

from pico.config import ConfigError, Params, load_params, parse_params
from tests.conftest import REPO, tiny_params, write_params


def test_repo_params_yaml_is_valid():
    params = load_params(REPO / "params.yaml")
    assert params.model.preset == "tiny"
    assert isinstance(params.optim.lr, float)
    assert params.model.dim == 96 and params.model.hidden == 384


@pytest.mark.parametrize(
    "section, key, value, expect",
    [
        ("optim", "lr", -1.0, "optim.lr"),
        ("optim", "lr", 0.0, "optim.lr"),
        ("model", "dropout", 1.5, "model.dropout"),
        ("model", "attention_dropout", 1.0, "model.attention_dropout"),
        ("model", "preset", "huge", "model.preset"),
        ("training", "micro_batch_size", 0, "training.micro_batch_size"),
        ("training", "max_steps", "many", "training.max_steps"),
        ("optim", "betas", [0.9, 1.2], "optim.betas"),
    ],
)
def test_bad_values_name_key_and_value(tmp_path, section, key, value, expect):
    raw = tiny_params(tmp_path)
    raw[section][key] = value
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    assert expect in str(err.value)
    assert repr(value) in str(err.value)


def test_unknown_key_is_rejected(tmp_path):
    raw = tiny_params(tmp_path)
    raw["optim"]["learning_rate"] = 1.0e-4
    with pytest.raises(ConfigError, match=r"optim\.learning_rate: unknown key"):
        parse_params(raw)
    raw = tiny_params(tmp_path)
    raw["optimiser"] = {}
    with pytest.raises(ConfigError, match="optimiser: unknown key"):
        parse_params(raw)


def test_cross_field_checks(tmp_path):
    raw = tiny_params(tmp_path)
    raw["training"]["global_batch_size"] = 10  # micro 4 x accum 2 = 8 does not divide 10
    with pytest.raises(ConfigError, match="global_batch_size=10"):
        parse_params(raw)
    raw = tiny_params(tmp_path)
    raw["model"]["n_kv_heads"] = 5
    with pytest.raises(ConfigError, match="n_kv_heads=5"):
        parse_params(raw)
    raw = tiny_params(tmp_path)
    raw["data"]["seq_len"] = 4096
    with pytest.raises(ConfigError, match="data.seq_len=4096 exceeds model.max_seq_len"):
        parse_params(raw)


def test_yaml_float_spellings(tmp_path):
    raw = tiny_params(tmp_path)
    path = write_params(tmp_path / "p.yaml", raw)
    text = path.read_text().replace("lr: 0.003", "lr: 3e-4")  # PyYAML reads 3e-4 as a string
    path.write_text(text)
    assert load_params(path).optim.lr == pytest.approx(3e-4)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("optim: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(tmp_path / "bad.yaml")


def test_fingerprint_tracks_sections(tmp_path):
    a = parse_params(tiny_params(tmp_path))
    raw = copy.deepcopy(tiny_params(tmp_path))
    raw["optim"]["lr"] = 1.0e-4
    b = parse_params(raw)
    assert a.fingerprint("data") == b.fingerprint("data")
    assert a.fingerprint("optim") != b.fingerprint("optim")


def test_params_yaml_is_the_code_defaults():
    # one source of truth: params.yaml spells out exactly what a left-out key means
    assert load_params(REPO / "params.yaml").model_dump() == Params().model_dump()


def test_effective_batch_counts_processes():
    p = Params.model_validate({"training": {"micro_batch_size": 4, "grad_accum_steps": 3, "nproc": 2}})
    assert p.training.effective_batch_rows() == 24 and p.training.effective_batch_rows(world=8) == 96


@pytest.mark.parametrize("key,value,why", [
    ("training.checkpoint_dir", ".", "folder of its own"),
    ("training.checkpoint_dir", "..", "folder of its own"),
    ("training.checkpoint_dir", "/", "folder of its own"),
    ("training.metrics_dir", "", "folder of its own"),
    ("embedded.out_dir", "data/../..", "folder of its own"),
    ("training.checkpoint_dir", "data/tokens/ckpt", "overlap"),
    ("training.metrics_dir", "checkpoints", "overlap"),
    ("report.out_dir", "pico/reports", "source folder pico/"),
    ("training.checkpoint_dir", ".git/ckpt", "source folder .git/"),
])
def test_output_folders_must_be_their_own(key, value, why):
    section, name = key.split(".")
    with pytest.raises(ConfigError, match=rf"{key}=.*{why}"):
        parse_params({section: {name: value}})


@pytest.mark.parametrize("section,name,value,message", [
    ("training", "max_steps", True, "max_steps: True is a boolean"),
    ("optim", "eps", float("inf"), "finite number"),
    ("optim", "lr", float("nan"), "finite number"),
    ("training", "seed", False, "seed: False is a boolean"),
])
def test_booleans_and_non_finite_numbers_are_rejected(section, name, value, message):
    with pytest.raises(ConfigError, match=rf"{section}.*{message}"):
        parse_params({section: {name: value}})


def test_numbers_as_strings_still_parse():  # DVC's -S writes 1e-4, which YAML 1.1 reads as a string
    assert parse_params({"optim": {"lr": "1e-4"}}).optim.lr == 1e-4


def test_outputs_outside_the_dvc_project_are_refused_before_work(tmp_path, monkeypatch):
    """DVC refuses to save an output outside the repo only after the stage ran (a whole run lost)."""
    repo, elsewhere = tmp_path / "repo", tmp_path / "scratch"
    (repo / ".dvc").mkdir(parents=True)
    monkeypatch.chdir(repo)
    path = write_params(repo / "params.yaml", {"training": {"checkpoint_dir": str(elsewhere / "ckpt")}})
    with pytest.raises(ConfigError, match=r"training.checkpoint_dir=.*scratch/ckpt' is outside the DVC project"):
        load_params(path)
    write_params(path, {"training": {"checkpoint_dir": str(repo / "ckpt")}})  # absolute, but inside: fine
    assert load_params(path).training.checkpoint_dir == str(repo / "ckpt")
    shutil.rmtree(repo / ".dvc")  # no DVC project: a direct `pico train` may write anywhere
    write_params(path, {"training": {"checkpoint_dir": str(elsewhere / "ckpt")}})
    assert load_params(path).training.checkpoint_dir == str(elsewhere / "ckpt")
