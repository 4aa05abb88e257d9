"""Learning dynamics: the files pico-analyze reads, their shapes, their values, and a run that
trains the same bits with capture on."""

import copy
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pico import checkpoint, dynamics, folders, runfolder, train
from pico.config import parse_params
from pico.data.eval_windows import EvalWindows
from pico.data.loader import GlobalRowOrder
from pico.data.tokens_dir import TokensDir
from pico.export_analysis import export_analysis
from pico.model import ModelDims, PicoDecoder


def feature_space_linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """pico-analyze's CKA (lib/cka.py, Kornblith et al. 2019): centred features, linear kernel."""
    x, y = x - x.mean(0, keepdims=True), y - y.mean(0, keepdims=True)
    dot = np.linalg.norm(x.T @ y) ** 2
    return float(dot / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def condition_number(w: torch.Tensor) -> float:
    """pico-analyze's condition number: largest over smallest singular value."""
    s = torch.linalg.svdvals(w)
    return float(s.max() / s.min())


def load_like_pico_analyze(run_path: Path, step: int, split: str) -> dict:
    """pico-analyze's local loader (src/utils/data.py): fixed folder names, no zero padding."""
    folder = run_path / "checkpoints" / f"step_{step}" / "learning_dynamics"
    return {
        kind: torch.load(folder / f"{split}_{kind}.pt", weights_only=True)
        for kind in dynamics.KINDS
        if (folder / f"{split}_{kind}.pt").exists()
    }


@pytest.fixture(scope="module")
def captured_run(tmp_path_factory):
    """One tiny run with capture on, shared by the tests that only read it: (params, raw params, root)."""
    from pico.data import tokenize as tokenize_stage
    from pico.data import tokenizer
    from tests.helpers import make_corpus, tiny_params

    root = tmp_path_factory.mktemp("dynamics")
    raw = tiny_params(root, make_corpus(root / "corpus"))
    raw["learning_dynamics"] = {"enabled": True, "val_windows": 10}
    raw["training"]["keep_checkpoints"] = 10
    params = parse_params(raw)
    tokenizer.run(params)
    tokenize_stage.run(params, progress=False)
    assert train.run(params, progress=False).status == "completed"
    return params, raw, root


@pytest.fixture
def captured(captured_run):
    return captured_run[0]


def test_captures_load_with_the_shapes_pico_analyze_expects(captured):
    root = Path(captured.training.checkpoint_dir)
    assert dynamics.captured_steps(root) == [0, 4, 8, 12]  # step 0, every checkpoint, the last
    d, layers = captured.model.d_model, captured.model.n_layers
    head = d // captured.model.n_heads
    out_features = {"attention.v_proj": captured.model.n_kv_heads * head, "attention.o_proj": d, "swiglu.w_2": d}
    in_features = {"attention.v_proj": d, "attention.o_proj": d, "swiglu.w_2": captured.model.hidden_dim}
    expected_keys = {f"layers.{i}.{s}" for i in range(layers) for s in out_features}
    for step in (0, 4, 8, 12):
        folder = dynamics.step_folder(root, step)
        splits = ("train", "val") if step < 12 else ("val",)  # after the last step: no next batch (as pico-train)
        assert sorted(f.name for f in folder.glob("*.pt")) == sorted(
            f"{s}_{k}.pt" for s in splits for k in dynamics.KINDS
        )
        for split in splits:
            rows = 8 if split == "train" else 10
            for kind in dynamics.KINDS:
                data = torch.load(folder / f"{split}_{kind}.pt", weights_only=True)
                assert type(data) is dict and set(data) == expected_keys
                for name, t in data.items():
                    suffix = name.split(".", 2)[2]
                    assert t.dtype == torch.float32 and t.device.type == "cpu"
                    want = (
                        (rows, out_features[suffix])
                        if kind == "activations"
                        else (out_features[suffix], in_features[suffix])
                    )
                    assert tuple(t.shape) == want, (step, split, kind, name)
            acts = torch.load(folder / f"{split}_activations.pt", weights_only=True)
            assert os.path.commonprefix(list(acts)) == "layers."  # how pico-analyze finds the layer prefix


def test_capture_is_the_checkpoint_and_the_next_batch(captured):
    """Weights are the step's checkpoint; train activations are that model on the next step's rows, at
    the last input position; gradients are pico-train's sum of sub-batch mean-loss gradients."""
    root = Path(captured.training.checkpoint_dir)
    ckpt = checkpoint.step_dir(root, 4)
    state = checkpoint.read_state(ckpt)
    model = PicoDecoder(ModelDims(**state["model_dims"]))
    checkpoint.load_weights(ckpt, model)
    folder = dynamics.step_folder(root, 4)
    weights = torch.load(folder / "train_weights.pt", weights_only=True)
    assert torch.equal(weights["layers.1.swiglu.w_2"], model.layers[1].swiglu.w_2.weight)
    rows_used = yaml.safe_load((folder / dynamics.ROWS_FILE).read_text())["train"]
    # the trainer's order: the rows step 5 trains on (after 4 steps of 8 rows), micro-batch by micro-batch
    rows, _ = TokensDir(captured.data.tokens_dir).open_rows(32)
    order = GlobalRowOrder(len(rows), captured.training.seed, True)
    assert rows_used == np.concatenate([np.sort(order.indices(32 + j * 4, 4)) for j in range(2)]).tolist()

    batch = torch.from_numpy(np.asarray(rows[rows_used], dtype=np.int64))
    got = {}
    h = model.layers[0].attention.v_proj.register_forward_hook(lambda m, i, o: got.update(v=o[:, -1, :]))
    model.eval()
    model(batch[:, :-1], batch[:, 1:]).backward()  # learning_dynamics.batch_size 8: one sub-batch
    h.remove()
    acts = torch.load(folder / "train_activations.pt", weights_only=True)
    grads = torch.load(folder / "train_gradients.pt", weights_only=True)
    torch.testing.assert_close(acts["layers.0.attention.v_proj"], got["v"].detach())
    torch.testing.assert_close(grads["layers.0.attention.o_proj"], model.layers[0].attention.o_proj.weight.grad)


def test_capture_does_not_change_the_run(captured_run, tmp_path):
    """A run with capture on trains exactly the same bits as one without."""
    captured, raw, root = captured_run
    p = copy.deepcopy(raw)
    p["learning_dynamics"]["enabled"] = False
    p["training"]["checkpoint_dir"] = str(tmp_path / "plain_checkpoints")
    p["training"]["metrics_dir"] = str(tmp_path / "plain_metrics")
    train.run(parse_params(p), progress=False)
    a = checkpoint.step_dir(Path(captured.training.checkpoint_dir), 12) / checkpoint.WEIGHTS
    b = checkpoint.step_dir(tmp_path / "plain_checkpoints", 12) / checkpoint.WEIGHTS
    from safetensors.torch import load_file

    wa, wb = load_file(str(a)), load_file(str(b))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (root / "metrics/train.csv").read_text() == (tmp_path / "plain_metrics/train.csv").read_text()


def test_export_is_a_pico_analyze_run_and_its_metrics_compute(captured, tmp_path):
    out, steps = export_analysis(captured.training.checkpoint_dir, tmp_path / "analysis")
    assert steps == [0, 4, 8, 12]
    config = yaml.safe_load((out / "training_config.yaml").read_text())
    assert config["model"]["d_model"] == 24 and config["model"]["attention_n_heads"] == 12
    assert config["model"]["attention_n_kv_heads"] == 4 and config["checkpointing"]["run_name"] == "test run"
    early, late = load_like_pico_analyze(out, 4, "val"), load_like_pico_analyze(out, 8, "val")
    assert set(early) == set(dynamics.KINDS)
    prefix = os.path.commonprefix(list(early["activations"]))
    for i in range(captured.model.n_layers):
        key = f"{prefix}{i}.swiglu.w_2"
        cka_same = feature_space_linear_cka(early["activations"][key].numpy(), early["activations"][key].numpy())
        cka = feature_space_linear_cka(early["activations"][key].numpy(), late["activations"][key].numpy())
        assert cka_same == pytest.approx(1.0, abs=1e-5) and 0.0 < cka < 1.0
        kappa = condition_number(early["weights"][f"{prefix}{i}.attention.o_proj"])
        assert np.isfinite(kappa) and kappa > 1.0
    # the final step holds val only, and step 0 the initial weights
    assert set(load_like_pico_analyze(out, 12, "train")) == set()
    assert not torch.equal(
        load_like_pico_analyze(out, 0, "val")["weights"][f"{prefix}0.swiglu.w_2"],
        early["weights"][f"{prefix}0.swiglu.w_2"],
    )
    # exporting again refreshes the links; a folder holding anything else is refused
    export_analysis(captured.training.checkpoint_dir, tmp_path / "analysis")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds other files"):
        export_analysis(captured.training.checkpoint_dir, tmp_path / "other")


def test_val_subset_spreads_over_sources(prepared):
    windows = EvalWindows(prepared.data.tokens_dir)
    ids = dynamics.val_subset(windows, 6)
    assert len(ids) == 6 and list(ids) == sorted(ids)
    assert len(set(windows.table["source"][ids].tolist())) == len(windows.sources)
    assert len(dynamics.val_subset(windows, None)) == len(windows)


def test_unknown_layer_suffix_fails_before_training(params_dict, prepared):
    p = copy.deepcopy(params_dict)
    p["learning_dynamics"] = {"enabled": True, "layer_suffixes": ["mlp.c_fc"]}
    with pytest.raises(ValueError, match="match no layer"):
        train.run(parse_params(p), progress=False)


@pytest.mark.parametrize(
    "suffixes, width, what",
    [
        (
            ["attention.v_proj", "attention.o_proj", "swiglu.w_2"],
            12 * 96,
            "OV circuit of layers.0 (n_heads 12 x d_model 96)",
        ),
        (["swiglu.w_2"], 96, "layers.0.swiglu.w_2 (96 outputs)"),
        (["swiglu.w_0"], 384, "layers.0.swiglu.w_0 (384 outputs)"),
        (["attention.v_proj"], 4 * 8, "layers.0.attention.v_proj (32 outputs)"),
    ],
)
def test_pwcca_width_is_what_pico_analyze_compares(suffixes, width, what):
    """tiny's shape: the demo config's PWCCA over the OV circuit concatenates 12 heads of d_model 96."""
    with torch.device("meta"):
        model = PicoDecoder(ModelDims(vocab_size=320, d_model=96, hidden_dim=384, n_layers=2))
    got = dynamics.pwcca_width(model, suffixes, n_heads=12)
    assert got[0] == width and what in got[1]
    assert dynamics.pwcca_shortfall(width + 1, got) is None
    line = dynamics.pwcca_shortfall(width, got)
    assert f"the val split has {width} rows" in line and f"= {width}" in line and "\n" not in line


def test_a_run_whose_val_split_is_too_small_for_pwcca_says_so_first(params_dict, prepared, capsys):
    p = copy.deepcopy(params_dict)
    p["learning_dynamics"] = {"enabled": True, "val_windows": 10}
    p["training"]["max_steps"] = p["optim"]["warmup_steps"] = 1
    train.run(parse_params(p), progress=False)
    m = parse_params(p).model
    out = capsys.readouterr().out.splitlines()
    assert out[2].startswith("learning dynamics: the val split has 10 rows"), out  # before any step
    assert f"(n_heads {m.n_heads} x d_model {m.d_model}) = {m.n_heads * m.d_model}" in out[2]


def test_the_default_val_split_is_every_evaluation_window_and_enough_for_pwcca(params_dict, prepared, capsys):
    p = copy.deepcopy(params_dict)
    p["learning_dynamics"] = {"enabled": True}
    p["training"]["max_steps"] = p["optim"]["warmup_steps"] = 1
    train.run(parse_params(p), progress=False)
    assert "PWCCA" not in capsys.readouterr().out
    rows = yaml.safe_load(
        (dynamics.step_folder(Path(p["training"]["checkpoint_dir"]), 0) / dynamics.ROWS_FILE).read_text()
    )
    assert rows["val"] == list(range(len(EvalWindows(prepared.data.tokens_dir))))


def test_captures_move_aside_with_their_run(tmp_path):
    root = tmp_path / "ckpt"
    for step in (4, 8):
        (root / f"step_{step:08d}").mkdir(parents=True)
    folder = dynamics.step_folder(root, 4)
    folder.mkdir(parents=True)
    (folder / "val_weights.pt").write_bytes(b"x")
    dest = runfolder.move_aside(root, "oldrun")
    assert (dest / "learning_dynamics" / "step_00000004" / "val_weights.pt").is_file()
    assert not dynamics.store(root).exists()


def test_export_analysis_command(tmp_path, capsys):
    from pico.cli import main as cli_main

    (tmp_path / "params.yaml").write_text("{}\n")
    empty = tmp_path / "ckpt"
    empty.mkdir()
    assert (
        cli_main(
            [
                "--params",
                str(tmp_path / "params.yaml"),
                "export-analysis",
                str(tmp_path / "out"),
                "--checkpoint-dir",
                str(empty),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "learning_dynamics.enabled: true" in err
    assert not (tmp_path / "out").exists()


def test_plan_counts_the_captures_and_their_size(captured):
    from pico.plan import make_plan

    plan = make_plan(captured, calibrate_s=None)
    assert plan.dynamics_captures == 4
    actual = sum(f.stat().st_size for f in dynamics.step_folder(captured.training.checkpoint_dir, 4).glob("*.pt"))
    assert 0.6 < actual / plan.dynamics_bytes < 1.6  # tensor bytes planned; torch.save's zip adds headers
    assert any(line.startswith("plan: learning dynamics: 4 captures") for line in plan.lines())


def test_checkpoints_command_lists_the_captures(captured):
    text = folders.describe_folders(captured.training.checkpoint_dir)
    assert "learning_dynamics  4 capture(s) at steps 0, 4, 8, 12" in text
