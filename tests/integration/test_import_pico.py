"""`pico import-pico`: a pico-train checkpoint (written here, offline, in pico-train's own format)
becomes a checkpoint this pipeline evaluates, and its logits are pico-train's formula's."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from pico import checkpoint, evaluate
from pico.cli import main as cli_main
from pico.config import parse_params
from pico.data import tokenizer as tokenizer_stage
from pico.import_pico import import_pico
from pico.model import ModelDims, PicoDecoder
from tests.helpers import REPO

CONFIG = {
    "model_type": "pico_decoder",
    "d_model": 24,
    "n_layers": 2,
    "vocab_size": 320,
    "batch_size": 4,
    "max_seq_len": 64,
    "attention_n_heads": 12,
    "attention_n_kv_heads": 4,
    "activation_hidden_dim": 48,
    "norm_eps": 1e-6,
    "position_emb_theta": 10000.0,
}


def pico_init_state(seed: int) -> dict[str, torch.Tensor]:
    """pico-train's initialisation: PyTorch's module defaults, drawn in the order its modules are built."""
    torch.manual_seed(seed)
    d, h, v, n_kv = (
        CONFIG["d_model"],
        CONFIG["activation_hidden_dim"],
        CONFIG["vocab_size"],
        CONFIG["attention_n_kv_heads"],
    )
    head = d // CONFIG["attention_n_heads"]
    sd = {"embedding_proj.weight": torch.nn.Embedding(v, d).weight.data}
    for i in range(CONFIG["n_layers"]):
        p = f"layers.{i}."
        for name, (o, inp) in {
            "attention.q_proj": (d, d),
            "attention.k_proj": (n_kv * head, d),
            "attention.v_proj": (n_kv * head, d),
            "attention.o_proj": (d, d),
            "swiglu.w_0": (h, d),
            "swiglu.w_1": (h, d),
            "swiglu.w_2": (d, h),
        }.items():
            sd[p + name + ".weight"] = torch.nn.Linear(inp, o, bias=False).weight.data
        sd[p + "attention_norm.weight"] = torch.ones(d)
        sd[p + "swiglu_norm.weight"] = torch.ones(d)
    sd["output_norm.weight"] = torch.ones(d)
    sd["de_embedding_proj.weight"] = torch.nn.Linear(d, v, bias=False).weight.data
    return sd


def pico_logits(sd: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """pico-train's PicoDecoder.forward, transcribed: complex RoPE over adjacent pairs, GQA through SDPA
    with an additive -inf mask, fp32 RMSNorm, SwiGLU, untied head, float logits."""
    c = CONFIG
    d, nh, nkv = c["d_model"], c["attention_n_heads"], c["attention_n_kv_heads"]
    hd, (b, t) = d // nh, ids.shape

    def rms(x, w):
        return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + c["norm_eps"])).type_as(x) * w

    freqs = 1.0 / (c["position_emb_theta"] ** (torch.arange(0, hd, 2)[: hd // 2].float() / hd))
    cis = torch.polar(torch.ones(t, hd // 2), torch.outer(torch.arange(t), freqs)).view(1, t, 1, hd // 2)

    def rope(x):
        return torch.view_as_real(torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2)) * cis).flatten(3)

    mask = torch.triu(torch.full((t, t), float("-inf")), diagonal=1)
    h = sd["embedding_proj.weight"][ids]
    for i in range(c["n_layers"]):
        p = f"layers.{i}."
        x = rms(h, sd[p + "attention_norm.weight"])
        q = (x @ sd[p + "attention.q_proj.weight"].T).view(b, t, nh, hd)
        k = (x @ sd[p + "attention.k_proj.weight"].T).view(b, t, nkv, hd)
        v = (x @ sd[p + "attention.v_proj.weight"].T).view(b, t, nkv, hd)
        q, k = rope(q), rope(k)
        att = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, enable_gqa=True
        )
        h = h + att.transpose(1, 2).reshape(b, t, d) @ sd[p + "attention.o_proj.weight"].T
        x = rms(h, sd[p + "swiglu_norm.weight"])
        mlp = F.silu(x @ sd[p + "swiglu.w_0.weight"].T) * (x @ sd[p + "swiglu.w_1.weight"].T)
        h = h + mlp @ sd[p + "swiglu.w_2.weight"].T
    return (rms(h, sd["output_norm.weight"]) @ sd["de_embedding_proj.weight"].T).float()


def write_pico_train_run(root, sd, step, tokenizer_json=None, weights_format="safetensors"):
    """What pico-train leaves in runs/<run>/checkpoints/step_<N>/: the HF wrapper's files."""
    folder = root / "checkpoints" / f"step_{step}"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(CONFIG))
    wrapped = {f"pico_decoder.{k}": v.clone() for k, v in sd.items()}
    if weights_format == "safetensors":
        save_file(wrapped, str(folder / "model.safetensors"))
    else:
        torch.save(wrapped, folder / "pytorch_model.bin")
    if tokenizer_json:
        (folder / "tokenizer.json").write_text(tokenizer_json)
    (root / "checkpoints" / "latest").symlink_to(f"step_{step}")
    return folder


def perturbed(sd):
    """Trained-looking weights: non-unit norms, so a misplaced gain would show."""
    g = torch.Generator().manual_seed(1)
    return {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in sd.items()}


def test_pico_init_is_pico_trains(tmp_path):
    dims = ModelDims(vocab_size=320, d_model=24, hidden_dim=48, n_layers=2, max_seq_len=64, init="pico")
    torch.manual_seed(42)
    ours = PicoDecoder(dims).state_dict()
    ref = pico_init_state(42)
    assert set(ours) == set(ref)
    assert all(torch.equal(ours[k], ref[k]) for k in ref)
    # pico's N(0, 1) embedding: the first loss starts above ln(vocab) (the training log's 10.98 > ln 50,304),
    # while the normal init starts at it
    ids = torch.randint(0, 320, (4, 33), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pico_loss = float(PicoDecoder(dims)(ids[:, :-1], ids[:, 1:]))
        normal_loss = float(
            PicoDecoder(ModelDims(vocab_size=320, d_model=24, hidden_dim=48, n_layers=2, max_seq_len=64))(
                ids[:, :-1], ids[:, 1:]
            )
        )
    assert pico_loss > math.log(320) + 0.05 and normal_loss == pytest.approx(math.log(320), abs=0.02)


def test_imported_checkpoint_gives_pico_formula_logits_and_evaluates(prepared, tmp_path):
    sd = perturbed(pico_init_state(7))
    tok_json = (tmp_path / "data/tokenizer" / "tokenizer.json").read_text()
    run = tmp_path / "runs" / "seed-run"
    write_pico_train_run(run, sd, step=2000, tokenizer_json=tok_json)

    out = tmp_path / "imported"
    path = import_pico(run, out, prepared)  # the run folder: its checkpoints/latest
    assert path.name == "step_00002000"
    state = checkpoint.verify(path)
    assert state["status"] == "imported" and state["model_dims"]["init"] == "pico"
    model = PicoDecoder(ModelDims(**state["model_dims"]))
    checkpoint.load_weights(path, model)
    model.eval()
    ids = torch.randint(0, 320, (3, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), pico_logits(sd, ids), rtol=1e-5, atol=1e-5)

    # pico evaluate scores it (honest token-level figures beside pico's per-sequence mean)
    p = prepared.model_dump(mode="json")
    p["training"]["checkpoint_dir"] = str(out)
    p["evaluation"].update(out=str(tmp_path / "imported_eval.json"), domains_out=str(tmp_path / "imported.csv"))
    result = evaluate.run(parse_params(p))
    assert result["step"] == 2000 and result["fingerprint"].startswith("pico-train-")
    assert math.isfinite(result["macro"]["token_perplexity"])
    assert result["macro"]["pico_mean_seq_perplexity"] >= result["macro"]["token_perplexity"] * 0.99
    # the report says what it is: an imported checkpoint's evaluation, no training history of its own
    from pico import report

    md = report.run(parse_params(p)).read_text()
    assert md.startswith("# Evaluation of an imported checkpoint") and "| alpha |" in md
    assert "What happened" not in md and "What we did" not in md  # no training here to diagnose


def test_import_refuses_foreign_tokenizer_data_and_keeps_what_was_there(prepared, tmp_path, capsys):
    sd = perturbed(pico_init_state(7))
    other_tok = json.loads((tmp_path / "data/tokenizer" / "tokenizer.json").read_text())
    other_tok["model"]["vocab"]["zzzz-not-ours"] = 319  # another tokenizer: another hash
    src = write_pico_train_run(
        tmp_path / "runs" / "r", sd, step=5, tokenizer_json=json.dumps(other_tok), weights_format="bin"
    )
    out = tmp_path / "ckpts"
    (out / "step_00000003").mkdir(parents=True)
    (out / "step_00000003" / "state.json").write_text(json.dumps({"fingerprint": "earlier", "step": 3}))
    path = import_pico(src, out, prepared)
    assert (tmp_path / "ckpts.superseded" / "earlier" / "step_00000003" / "state.json").is_file()
    p = prepared.model_dump(mode="json")
    p["training"]["checkpoint_dir"] = str(out)
    p["evaluation"].update(out=str(tmp_path / "e.json"), domains_out=str(tmp_path / "e.csv"))
    with pytest.raises(ValueError, match="tokenizer"):
        evaluate.run(parse_params(p))
    assert path.is_dir()


def test_import_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    bad = tmp_path / "nothing"
    bad.mkdir()
    assert (
        cli_main(["--params", str(tmp_path / "params.yaml"), "import-pico", str(bad), "--out", str(tmp_path / "o")])
        == 1
    )
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no config.json" in err
    folder = tmp_path / "half" / "checkpoints" / "step_1"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({**CONFIG, "d_model": 48}))
    save_file({f"pico_decoder.{k}": v for k, v in pico_init_state(0).items()}, str(folder / "model.safetensors"))
    assert (
        cli_main(["--params", str(tmp_path / "params.yaml"), "import-pico", str(folder), "--out", str(tmp_path / "o")])
        == 1
    )
    assert "do not fit" in capsys.readouterr().err


def test_tokenizer_hash_matches_between_import_and_tokenize(prepared, tmp_path):
    _, info = tokenizer_stage.load(prepared.tokenizer.out_dir)
    sd = pico_init_state(0)
    src = write_pico_train_run(
        tmp_path / "runs" / "x", sd, step=1, tokenizer_json=(tmp_path / "data/tokenizer" / "tokenizer.json").read_text()
    )
    path = import_pico(src, tmp_path / "c", prepared)
    assert checkpoint.read_state(path)["tokenizer_sha256"] == info.sha256


def resaved_by_transformers(tok_dir, dest):
    """The tokenizer.json pico-train's checkpoints hold: ours, re-saved through transformers."""
    transformers = pytest.importorskip("transformers")
    transformers.PreTrainedTokenizerFast(tokenizer_file=str(tok_dir / "tokenizer.json")).save_pretrained(dest)
    return (dest / "tokenizer.json").read_text()


def test_a_pico_train_checkpoints_resaved_tokenizer_is_accepted(prepared, tmp_path, capsys):
    tok_dir = tmp_path / "data/tokenizer"
    resaved = resaved_by_transformers(tok_dir, tmp_path / "resaved")
    assert resaved != (tok_dir / "tokenizer.json").read_text()
    src = write_pico_train_run(tmp_path / "runs" / "r", perturbed(pico_init_state(7)), step=9, tokenizer_json=resaved)
    out = tmp_path / "imported"
    import_pico(src, out, prepared)
    p = prepared.model_dump(mode="json")
    p["training"]["checkpoint_dir"] = str(out)
    p["evaluation"].update(out=str(tmp_path / "e.json"), domains_out=str(tmp_path / "e.csv"))
    assert evaluate.run(parse_params(p))["step"] == 9
    assert "gives the same ids" in capsys.readouterr().out


@pytest.mark.parametrize("with_params", [True, False], ids=["with params", "without params"])
def test_an_imported_checkpoint_exports_to_hf(prepared, tmp_path, capsys, with_params):
    transformers = pytest.importorskip("transformers")
    tok_dir = tmp_path / "data/tokenizer"
    sd = perturbed(pico_init_state(7))
    src = write_pico_train_run(
        tmp_path / "runs" / "r", sd, step=9, tokenizer_json=resaved_by_transformers(tok_dir, tmp_path / "resaved")
    )
    ckpt = import_pico(src, tmp_path / "imported", prepared if with_params else None)
    # the step folder pico-train wrote (tokenizer.json, no tokenizer_meta.json) or our own folder
    for given in ([], ["--tokenizer-dir", str(src)], ["--tokenizer-dir", str(tok_dir)]):
        hf_dir = tmp_path / f"hf{len(given)}-{given[-1][-4:] if given else ''}"
        assert cli_main(["export-hf", str(ckpt), str(hf_dir), *given]) == 0, capsys.readouterr().err
        hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()
        ids = torch.randint(0, 320, (2, 40), generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            torch.testing.assert_close(hf(ids).logits, pico_logits(sd, ids), rtol=1e-5, atol=2e-5)
        assert transformers.AutoTokenizer.from_pretrained(hf_dir).eos_token == "<|endoftext|>"


def test_an_import_without_a_tokenizer_exports_with_the_one_named(prepared, tmp_path, capsys):
    src = write_pico_train_run(tmp_path / "runs" / "r", pico_init_state(1), step=3)
    ckpt = import_pico(src, tmp_path / "imported", None)
    assert cli_main(["export-hf", str(ckpt), str(tmp_path / "hf")]) == 1
    assert "pass --tokenizer-dir" in capsys.readouterr().err
    tok_dir = tmp_path / "data/tokenizer"
    assert cli_main(["export-hf", str(ckpt), str(tmp_path / "hf"), "--tokenizer-dir", str(tok_dir)]) == 0
    assert "records no tokenizer" in capsys.readouterr().out and (tmp_path / "hf" / "tokenizer.json").is_file()
    # a tokenizer whose ids do not fit the model is refused, naming both sizes
    big = json.loads((tok_dir / "tokenizer.json").read_text())
    big["model"]["vocab"].update({f"zz{i}": 400 + i for i in range(10)})
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "tokenizer.json").write_text(json.dumps(big))
    assert cli_main(["export-hf", str(ckpt), str(tmp_path / "hf2"), "--tokenizer-dir", str(tmp_path / "big")]) == 1
    assert "more than" in capsys.readouterr().err and not (tmp_path / "hf2").exists()


@pytest.mark.parametrize("scale, atol", [(0.0, 1e-5), (0.1, 1e-4)], ids=["trained-like", "std-0.1 weights"])
def test_logits_at_the_full_context_within_the_stated_bound(prepared, tmp_path, monkeypatch, scale, atol):
    """At 2,048 positions: within 1e-5 of pico-train's forward for weights like a trained model's,
    within 1e-4 for larger ones (std 0.1) — pico-train builds its RoPE angles in float32, we in
    float64, and the angles drift apart at far positions (here, 2 layers: 1.4e-6 and 1.2e-5; 12 layers
    of std-0.1 weights: 8.3e-5; docs/evaluation.md)."""
    for key, value in {"max_seq_len": 2048, "d_model": 96, "activation_hidden_dim": 384}.items():
        monkeypatch.setitem(CONFIG, key, value)  # tiny's head_dim 8: four RoPE frequencies
    sd = perturbed(pico_init_state(7))
    g = torch.Generator().manual_seed(2)
    sd = {k: v + scale * torch.randn(v.shape, generator=g) if v.dim() == 2 else v for k, v in sd.items()}
    path = import_pico(write_pico_train_run(tmp_path / "r", sd, step=1), tmp_path / "c", prepared)
    model = PicoDecoder(ModelDims(**checkpoint.read_state(path)["model_dims"]))
    checkpoint.load_weights(path, model)
    ids = torch.randint(0, 320, (1, 2048), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        diff = (model.eval()(ids) - pico_logits(sd, ids)).abs().max().item()
    assert diff < atol
