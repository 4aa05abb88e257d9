"""Exported checkpoints load in plain `transformers` as LlamaForCausalLM and compute our logits."""

import json
from pathlib import Path

import pytest
import torch

from pico import checkpoint
from pico.cli import main
from pico.model import ModelDims, PicoDecoder

transformers = pytest.importorskip("transformers")


def save_random_checkpoint(root: Path, dims: ModelDims, tok_dir: Path) -> Path:
    torch.manual_seed(0)
    model = PicoDecoder(dims)
    with torch.no_grad():  # non-trivial norm gains, so a mis-mapped norm would show
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    meta = json.loads((tok_dir / "tokenizer_meta.json").read_text())
    state = {
        "fingerprint": "test",
        "position": 0,
        "history": {},
        "model_dims": dims.to_dict(),
        "tokenizer_sha256": meta["sha256"],
        "config": {"tokenizer": {"out_dir": str(tok_dir), "eos_token": "<|endoftext|>", "pad_token": "<|padding|>"}},
    }
    return checkpoint.save(root, 1, model, opt, sched, state, keep=1)


# The tolerance, stated: within 1e-5 absolute up to ~512 positions; at the full 2,048-token context
# the two differ by more (2.5e-5 here with init_std 0.1; 1.5e-5-4.7e-5 seen on trained weights)
# because transformers builds its RoPE tables in float32 and we build ours in float64 (then cast),
# so the angles drift apart at large positions. The bound at 2,048 is 1e-4 absolute and 5e-5
# relative to the largest logit; the argmax (the next-token choice) is the same everywhere.
@pytest.mark.parametrize(
    "preset_dims, seq_len, atol",
    [
        (dict(d_model=96, hidden_dim=384), 50, 1e-5),  # tiny's shape (12 layers, 12/4 heads)
        (dict(d_model=192, hidden_dim=512, n_layers=3), 50, 1e-5),  # another shape: head_dim 16
        (dict(d_model=96, hidden_dim=384, init_std=0.1), 2048, 1e-4),  # tiny at the full context, larger weights
    ],
)
def test_logits_match(prepared, tmp_path, preset_dims, seq_len, atol):
    dims = ModelDims(vocab_size=320, max_seq_len=max(64, seq_len), **preset_dims)
    ckpt = save_random_checkpoint(tmp_path / "ck", dims, Path(prepared.tokenizer.out_dir))
    assert main(["export-hf", str(ckpt), str(tmp_path / "hf")]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", torch_dtype=torch.float32)
    assert type(hf).__name__ == "LlamaForCausalLM"
    ours = PicoDecoder(dims)
    checkpoint.load_weights(ckpt, ours)
    ours.eval(), hf.eval()
    ids = torch.randint(0, 320, (2, seq_len), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = ours(ids), hf(ids).logits
    diff = (a - b).abs().max().item()
    assert diff < atol
    assert diff / a.abs().max().item() < 5e-5
    assert torch.equal(a.argmax(-1), b.argmax(-1))
    assert sum(p.numel() for p in hf.parameters()) == ours.num_parameters()


def test_exported_model_reproduces_our_eval_metrics(prepared, tmp_path):
    from pico import evaluate, train

    train.run(prepared, progress=False)
    ours = evaluate.run(prepared)
    assert main(["export-hf", ours["checkpoint"], str(tmp_path / "hf")]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", torch_dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok.eos_token == "<|endoftext|>"

    from pico.data.eval_windows import EvalWindows

    ev = EvalWindows(prepared.data.tokens_dir)
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(len(ev)):
            w = torch.from_numpy(ev.window(i)).unsqueeze(0)
            logits = hf(w[:, :-1]).logits
            total += torch.nn.functional.cross_entropy(logits[0].double(), w[0, 1:], reduction="sum").item()
            count += w.shape[1] - 1
    assert count == ours["overall"]["tokens"]
    assert total / count == pytest.approx(ours["overall"]["loss"], rel=1e-5)


def test_export_never_replaces_a_folder_it_did_not_write(prepared, tmp_path):
    dims = ModelDims(vocab_size=320, d_model=24, hidden_dim=48, n_layers=1, max_seq_len=64)
    ckpt = save_random_checkpoint(tmp_path / "ck", dims, Path(prepared.tokenizer.out_dir))
    data = tmp_path / "mine"
    data.mkdir()
    (data / "precious.txt").write_text("keep me")
    assert main(["export-hf", str(ckpt), str(data)]) == 1
    assert (data / "precious.txt").read_text() == "keep me"
    assert main(["export-hf", str(ckpt), str(tmp_path / "hf")]) == 0
    assert main(["export-hf", str(ckpt), str(tmp_path / "hf")]) == 0  # an earlier export is replaced
