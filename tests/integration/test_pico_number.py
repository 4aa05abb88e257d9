"""pico-train's Paloma number (pico.pico_number) against the procedure of Hugging Face evaluate's
perplexity metric, run on the exported model in plain transformers with transformers' tokenizer:
tokenize without special tokens, truncate to max_length, pad, score tokens 2..n, exp of the mean
per text, the mean over texts. (compat/pico_train_number.py runs the metric's own code and
pico-train's own model.)"""

import json
import math

import numpy as np
import pytest
import torch

from pico import evaluate, train
from pico.cli import main
from pico.config import parse_params
from pico.data.documents import iter_documents
from pico.data.eval_windows import EvalWindows
from pico.model import ModelDims, PicoDecoder
from pico.pico_number import document_ids, pico_train_number

transformers = pytest.importorskip("transformers")


def metric_procedure(model, tokenizer, texts, max_length, batch_size=4):
    """The metric's steps (add_start_token=False): a text of under two tokens would fail its assertion."""
    enc = tokenizer(
        texts, add_special_tokens=False, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert torch.all(mask.sum(1) >= 2)
    ppls = []
    loss = torch.nn.CrossEntropyLoss(reduction="none")
    for b in range(0, len(ids), batch_size):
        batch, m = ids[b : b + batch_size], mask[b : b + batch_size]
        with torch.no_grad():
            logits = model(batch, attention_mask=m).logits
        shift_m = m[..., 1:]
        nll = (loss(logits[..., :-1, :].transpose(1, 2), batch[..., 1:]) * shift_m).sum(1) / shift_m.sum(1)
        ppls += torch.exp(nll).tolist()
    return np.array(ppls)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from pico.data import tokenize as tokenize_stage
    from pico.data import tokenizer
    from tests.helpers import make_corpus, tiny_params

    root = tmp_path_factory.mktemp("pico_number")
    raw = tiny_params(root, make_corpus(root / "corpus"))
    raw["model"]["max_seq_len"] = 512
    raw["evaluation"]["pico_max_length"] = 160  # some documents are longer, some shorter
    params = parse_params(raw)
    tokenizer.run(params)
    tokenize_stage.run(params, progress=False)
    train.run(params, progress=False)
    return params, root


def test_documents_are_rebuilt_from_their_windows(trained):
    params, _ = trained
    from pico.data import tokenizer

    tok, _ = tokenizer.load(params.tokenizer.out_dir)
    docs, _ = document_ids(EvalWindows(params.data.tokens_dir))
    texts = [d.text for d in iter_documents(params.data.eval_paths)]
    assert len(docs) == len(texts)
    assert all(list(d) == tok.encode(t, add_special_tokens=False).ids for d, t in zip(docs, texts))


def test_pico_number_is_the_metrics_on_the_hf_export(trained, tmp_path, capsys):
    params, root = trained
    result = evaluate.run(params)
    pico = result["pico_train_paloma"]
    assert main(["export-hf", result["checkpoint"], str(tmp_path / "hf")]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", torch_dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    docs = list(iter_documents(params.data.eval_paths))
    want = metric_procedure(hf, hf_tok, [d.text for d in docs], max_length=160)

    lengths = [len(hf_tok(d.text, add_special_tokens=False)["input_ids"]) for d in docs]
    assert pico["max_length"] == 160 and pico["documents"] == len(docs)
    assert 0 < pico["truncated"] == sum(n > 160 for n in lengths) < len(docs)  # both kinds are in the set
    assert pico["mean_perplexity"] == pytest.approx(float(np.mean(want)), rel=1e-6)
    for name in ("alpha", "beta"):
        picked = [p for p, d in zip(want, docs) if d.source == name]
        assert pico["sources"][name] == pytest.approx(float(np.mean(picked)), rel=1e-6)
    assert "pico-train's Paloma number" in capsys.readouterr().out
    # the report labels it and the headline (dvc exp show) carries it beside our statistic
    from pico import report

    md = report.run(params).read_text()
    assert "pico-train's Paloma number, as pico-train computes it" in md
    head = json.loads((root / "metrics" / "headline.json").read_text())
    assert head["pico_train_ppl"] == pytest.approx(pico["mean_perplexity"], rel=1e-3)
    assert head["window_mean_ppl"] == pytest.approx(result["macro"]["pico_mean_seq_perplexity"], rel=1e-3)


def test_per_document_values_and_short_documents(trained):
    params, _ = trained
    from pico import checkpoint

    ckpt = checkpoint.latest_checkpoint(params.training.checkpoint_dir)
    state = checkpoint.read_state(ckpt)
    model = PicoDecoder(ModelDims(**state["model_dims"]))
    checkpoint.load_weights(ckpt, model)
    windows = EvalWindows(params.data.tokens_dir)
    full = pico_train_number(model, windows, max_length=2048, max_seq_len=512, batch_size=8)
    assert full["max_length"] == 512  # never beyond the model's context
    one = pico_train_number(model, windows, max_length=2, max_seq_len=512, batch_size=8)
    # two tokens: one scored token per document, its perplexity the model's 1/p of the second token
    docs, _ = document_ids(windows)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([[int(d[0])] for d in docs])), dim=-1)
    expected = [math.exp(-float(logp[i, -1, int(d[1])])) for i, d in enumerate(docs)]
    assert one["mean_perplexity"] == pytest.approx(math.fsum(expected) / len(expected), rel=1e-6)
    assert one["truncated"] == len(docs) and one["skipped_short"] == 0
