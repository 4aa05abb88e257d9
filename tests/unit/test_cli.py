import argparse
import copy

import yaml

from pico.cli import COMMANDS, main, parser
from pico.config import Params, load_params
from tests.helpers import REPO, write_jsonl_gz, write_params


def test_params_yaml_spells_out_every_key():
    # DVC needs every param a stage lists to exist in params.yaml; defaults hidden in code would break that
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    full = load_params(REPO / "params.yaml").model_dump(mode="json")

    def keys(d, prefix=""):
        return {f"{prefix}{k}" for k in d} | {
            x for k, v in d.items() if isinstance(v, dict) for x in keys(v, f"{prefix}{k}.")
        }

    assert keys(raw) == keys(full)


def test_bad_params_exit_2_naming_the_key(tmp_path, params_dict, capsys):
    raw = copy.deepcopy(params_dict)
    raw["optim"]["lr"] = -1
    path = write_params(tmp_path / "p.yaml", raw)
    assert main(["--params", str(path), "train"]) == 2
    err = capsys.readouterr().err
    assert "optim.lr" in err and "-1" in err and "Traceback" not in err


def test_strict_mode_fails_naming_file_and_line(tmp_path, params_dict, capsys):
    write_jsonl_gz(tmp_path / "corpus/dolma/part-0009.json.gz", [{"text": "fine"}], [b"{broken\n"])
    raw = copy.deepcopy(params_dict)
    raw["data"]["strict"] = True
    path = write_params(tmp_path / "p.yaml", raw)
    assert main(["--params", str(path), "tokenizer"]) == 1
    err = capsys.readouterr().err
    assert "part-0009.json.gz:2: bad json" in err


def test_missing_inputs_are_one_line_errors(tmp_path, params_dict, capsys):
    path = write_params(tmp_path / "p.yaml", params_dict)
    assert main(["--params", str(path), "evaluate"]) == 1
    assert "no checkpoint in" in capsys.readouterr().err
    raw = copy.deepcopy(params_dict)
    raw["data"]["train_paths"] = [str(tmp_path / "nowhere/*.json.gz")]
    path = write_params(tmp_path / "p2.yaml", raw)
    assert main(["--params", str(path), "tokenizer"]) == 1
    assert "no documents match" in capsys.readouterr().err


def test_check_params(capsys):
    assert main(["--params", str(REPO / "params.yaml"), "check-params"]) == 0
    assert isinstance(load_params(REPO / "params.yaml"), Params)


def _errors(capsys) -> list[str]:
    """stderr's lines, less the numerics note a test process that already loaded torch gets."""
    return [line for line in capsys.readouterr().err.splitlines() if not line.startswith("note: ")]


def test_a_bad_tokenizer_file_is_one_line_naming_it(tmp_path, params_dict, capsys):
    bad = tmp_path / "tok/tokenizer.json"
    bad.parent.mkdir()
    for content, why in ((b"", "it is empty"), (b'{"version": "1.0", "model": ', "not a tokenizers JSON file")):
        bad.write_bytes(content)
        raw = copy.deepcopy(params_dict)
        raw["tokenizer"]["source"] = str(bad)
        path = write_params(tmp_path / "p.yaml", raw)
        assert main(["--params", str(path), "tokenizer"]) == 1
        err = _errors(capsys)
        assert len(err) == 1 and f"{bad}: cannot load the tokenizer: {why}" in err[0]


def test_a_damaged_tokenizer_output_is_named_by_the_next_stage(tmp_path, params_dict, capsys):
    path = write_params(tmp_path / "p.yaml", params_dict)
    assert main(["--params", str(path), "tokenizer"]) == 0
    out = tmp_path / "data/tokenizer/tokenizer.json"
    out.write_bytes(b"")  # a disk that filled up, a sync that stopped half-way
    capsys.readouterr()
    assert main(["--params", str(path), "tokenize"]) == 1
    err = _errors(capsys)
    assert len(err) == 1 and f"{out}: cannot load the tokenizer: it is empty" in err[0]


def test_params_files_dvc_would_refuse_are_one_line_exit_2(tmp_path, capsys):
    text = (REPO / "params.yaml").read_text()
    cases = {
        "dup.yaml": (text + "optim:\n  lr: 0.5\n").encode(),
        "latin1.yaml": text.replace("3.0e-3", "3.0e-3 # caf\u00e9").encode("latin-1"),
        "bomb.yaml": (
            text
            + "junk:\n  a: &a [x, x, x, x, x, x, x, x, x, x]\n"
            + "".join(
                f"  b{i}: &b{i} [" + ", ".join([f"*{'a' if i == 0 else f'b{i - 1}'}"] * 10) + "]\n" for i in range(8)
            )
        ).encode(),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        assert main(["--params", str(tmp_path / name), "check-params"]) == 2
        err = _errors(capsys)
        assert len(err) == 1 and str(tmp_path / name) in err[0], err


def _positionals(name: str) -> list[str]:
    """Placeholder values for a command's positional arguments (the params check comes first)."""
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    actions = sub.choices[name]._actions
    required = [arg for a in actions if a.option_strings and a.required for arg in (a.option_strings[0], "1")]
    return [f"placeholder-{i}" for i, a in enumerate(actions) if not a.option_strings] + required


def test_every_command_refuses_an_unknown_key_with_exit_2_and_one_line(tmp_path, params_dict, capsys, monkeypatch):
    raw = copy.deepcopy(params_dict)
    raw["training"]["warmup_stpes"] = 10  # a typo a user makes
    path = write_params(tmp_path / "p.yaml", raw)
    monkeypatch.chdir(tmp_path)
    assert set(COMMANDS) >= {"train", "export-hf", "export-analysis", "import-pico", "queue", "reproduce"}
    for name in COMMANDS:
        assert main(["--params", str(path), name, *_positionals(name)]) == 2, name
        err = _errors(capsys)
        assert len(err) == 1 and "training.warmup_stpes" in err[0] and name in err[0], (name, err)


def test_an_expected_failure_is_one_line_and_exit_1(tmp_path, params_dict, capsys, monkeypatch):
    path = write_params(tmp_path / "p.yaml", params_dict)
    monkeypatch.chdir(tmp_path)
    for argv, says in (
        (["export-hf", "no/such/checkpoint", "out"], "no/such/checkpoint"),
        (["import-pico", "no/such/run"], "no/such/run"),
        (["export-analysis", "out", "--checkpoint-dir", "no/such/dir"], "no/such/dir"),
        (["plan"], "tokenizer_meta.json: no such file or directory (the plan needs the tokenize"),
    ):
        assert main(["--params", str(path), *argv]) == 1, argv
        err = _errors(capsys)
        assert len(err) == 1 and err[0].startswith(f"error in {argv[0]}: ") and says in err[0], err


def test_commands_that_need_no_params_file_run_without_one(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml here
    assert main(["export-hf", "no/such/checkpoint", "out"]) == 1
    assert "no/such/checkpoint" in capsys.readouterr().err
    assert main(["check-params"]) == 2  # the stages do need one, and say which file is missing
    assert "params.yaml" in capsys.readouterr().err
