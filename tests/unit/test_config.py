import copy
import shutil
import time

import pytest

from pico.config import ConfigError, Params, load_params, parse_params
from tests.helpers import REPO, tiny_params, write_params


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


@pytest.mark.parametrize(
    "key,value,why",
    [
        ("training.checkpoint_dir", ".", "folder of its own"),
        ("training.checkpoint_dir", "..", "folder of its own"),
        ("training.checkpoint_dir", "/", "folder of its own"),
        ("training.metrics_dir", "", "folder of its own"),
        ("embedded.out_dir", "data/../..", "folder of its own"),
        ("training.checkpoint_dir", "data/tokens/ckpt", "overlap"),
        ("training.metrics_dir", "checkpoints", "overlap"),
        ("report.out_dir", "pico/reports", "source folder pico/"),
        ("training.checkpoint_dir", ".git/ckpt", "source folder .git/"),
    ],
)
def test_output_folders_must_be_their_own(key, value, why):
    section, name = key.split(".")
    with pytest.raises(ConfigError, match=rf"{key}=.*{why}"):
        parse_params({section: {name: value}})


@pytest.mark.parametrize(
    "section,name,value,message",
    [
        ("training", "max_steps", True, "max_steps: True is a boolean"),
        ("optim", "eps", float("inf"), "finite number"),
        ("optim", "lr", float("nan"), "finite number"),
        ("training", "seed", False, "seed: False is a boolean"),
    ],
)
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


# ---- params files a user (or an attacker) can hand the pipeline: one line naming the file, fast ----
def _bomb(levels: int = 9) -> str:
    """A "billion laughs" YAML mapping: each level aliases the one before nine times."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines)


def test_alias_bomb_is_refused_at_once(tmp_path):
    text = (REPO / "params.yaml").read_text() + "junk:\n" + "\n".join("  " + line for line in _bomb().splitlines())
    (tmp_path / "params.yaml").write_text(text + "\n")
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="aliases expand to over") as err:
        load_params(tmp_path / "params.yaml")
    assert time.perf_counter() - started < 1.0
    assert "\n" not in str(err.value) and str(tmp_path / "params.yaml") in str(err.value)


def test_a_large_bad_value_is_shown_capped(tmp_path):
    """Under the expansion cap, an unknown key's value is still far too large to print whole."""
    text = (REPO / "params.yaml").read_text() + "junk:\n" + "\n".join("  " + line for line in _bomb(6).splitlines())
    (tmp_path / "params.yaml").write_text(text + "\n")
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="junk: unknown key") as err:
        load_params(tmp_path / "params.yaml")
    assert time.perf_counter() - started < 1.0 and len(str(err.value)) < 400


def test_a_key_given_twice_is_refused_like_dvc_does(tmp_path):
    text = (REPO / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(text + "optim:\n  lr: 0.5\n")
    with pytest.raises(ConfigError) as err:
        load_params(tmp_path / "params.yaml")
    line = text[: text.index("\noptim:")].count("\n") + 2
    assert str(err.value) == (
        f"{tmp_path / 'params.yaml'}: key 'optim' is given twice (lines {line} and "
        f"{text.count(chr(10)) + 1}); DVC refuses such a file: keep one"
    )
    nested = text.replace("  lr: 3.0e-3\n", "  lr: 3.0e-3\n  lr: 0.5\n")
    (tmp_path / "params.yaml").write_text(nested)
    with pytest.raises(ConfigError, match="key 'lr' is given twice"):
        load_params(tmp_path / "params.yaml")


def test_a_params_file_that_is_not_utf8_is_named(tmp_path):
    data = (REPO / "params.yaml").read_bytes().replace(b"lr: 3.0e-3", b"lr: 3.0e-3 # \xe9t\xe9")
    (tmp_path / "params.yaml").write_bytes(data)
    with pytest.raises(ConfigError) as err:
        load_params(tmp_path / "params.yaml")
    line = data[: data.index(b"\xe9")].count(b"\n") + 1
    assert str(err.value) == f"{tmp_path / 'params.yaml'}: not UTF-8 text (byte 0xe9 on line {line}); save it as UTF-8"
