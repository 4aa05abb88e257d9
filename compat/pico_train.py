"""pico-train's unchanged code against this pipeline: a checkpoint written by pico-train's own
`save_checkpoint`, imported with `pico import-pico`, scored by `pico evaluate`; pico-train's Paloma
number (eval.json `pico_train_paloma`) must equal what pico-train's Paloma evaluation (Hugging Face
evaluate's perplexity metric, its own code) prints for the same texts, to 1e-6 relative; the
checkpoint's re-saved tokenizer must be accepted; `pico export-hf` must export it.

    dvc repro tokenize    # the embedded default's tokenizer and evaluation windows
    python compat/pico_train.py --pico-train /path/to/pico-train --python /path/to/its/venv/bin/python \\
        --metric /path/to/evaluate/metrics/perplexity/perplexity.py

Not part of the test suite: it needs a pico-train checkout, a Python with its dependencies
(lightning, deepspeed, transformers 4, evaluate, datasets, wandb) and evaluate's metric code.
compat/pico_train_side.py is the half that runs there. Texts: the embedded default's evaluation
documents (data/embedded/paloma), some longer than 2,048 tokens.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from pico import numerics

numerics.apply("portable")

from pico import evaluate  # noqa: E402
from pico.cli import main as pico_main  # noqa: E402
from pico.config import parse_params  # noqa: E402
from pico.data import tokenize  # noqa: E402
from pico.import_pico import import_pico  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def write_long_documents(paths: list[str], dest: Path, n: int = 8, joined: int = 12) -> Path:
    """Texts longer than 2,048 tokens (pico-train reads only their first 2,048): runs of the evaluation
    documents joined, as a source of their own."""
    docs = [json.loads(line)["text"] for p in paths for line in gzip.open(p, "rt", encoding="utf-8") if line.strip()]
    dest.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(dest, "wt", encoding="utf-8") as fh:
        for i in range(n):
            text = "\n\n".join(docs[i * joined : (i + 1) * joined])
            fh.write(json.dumps({"text": text, "source": "joined_long", "subdomain": "joined_long"}) + "\n")
    return dest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pico-train", type=Path, required=True, help="a checkout of pico-lm/pico-train")
    ap.add_argument("--python", required=True, help="a Python with pico-train's dependencies")
    ap.add_argument("--metric", type=Path, required=True, help="evaluate's metrics/perplexity/perplexity.py")
    ap.add_argument("--scratch", type=Path, default=None)
    args = ap.parse_args()
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="pico-train-compat-"))
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    texts = sorted(str(p) for pattern in raw["data"]["eval_paths"] for p in REPO.glob(pattern))
    texts.append(str(write_long_documents(texts, scratch / "long" / "val.jsonl.gz")))

    theirs_file = scratch / "pico_train_eval.json"
    if not theirs_file.is_file():  # a rerun reuses pico-train's side
        env = {**os.environ, "PYTHONPATH": str(args.pico_train), "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
        cmd = [args.python, str(REPO / "compat/pico_train_side.py"), "--tokenizer",
               str(REPO / raw["tokenizer"]["out_dir"] / "tokenizer.json"), "--texts", *texts,
               "--metric", str(args.metric), "--out", str(scratch)]  # fmt: skip
        if subprocess.run(cmd, env=env).returncode != 0:
            print("pico-train's side failed")
            return 1
    theirs = json.loads(theirs_file.read_text())

    # this pipeline: the same texts tokenized with the default's tokenizer, the checkpoint imported
    raw["tokenizer"]["out_dir"] = str(REPO / raw["tokenizer"]["out_dir"])
    raw["data"].update(eval_paths=texts, tokens_dir=str(scratch / "tokens"))
    raw["data"]["train_paths"] = [str(REPO / p) for p in raw["data"]["train_paths"]]
    raw["training"].update(checkpoint_dir=str(scratch / "imported"), metrics_dir=str(scratch / "metrics"))
    raw["evaluation"].update(out=str(scratch / "eval.json"), domains_out=str(scratch / "eval_domains.csv"))
    params = parse_params(raw)
    if not (scratch / "tokens").is_dir():
        tokenize.run(params, progress=False)
    ckpt = import_pico(theirs["step_folder"], params.training.checkpoint_dir, params)
    said = io.StringIO()
    with contextlib.redirect_stdout(said):
        ours = evaluate.run(params)["pico_train_paloma"]
    print(said.getvalue(), end="")
    rel = abs(ours["mean_perplexity"] - theirs["mean_perplexity"]) / theirs["mean_perplexity"]
    print(
        f"pico-train's Paloma evaluation {theirs['mean_perplexity']:.6f} over {theirs['texts']} texts "
        f"({theirs['longer_than_2048']} longer than 2,048 tokens); pico evaluate's pico_train_paloma "
        f"{ours['mean_perplexity']:.6f} over {ours['documents']} ({ours['truncated']} truncated): relative difference {rel:.2e}"
    )
    checks = {
        "pico's number equals pico-train's to 1e-6 relative": rel <= 1e-6,
        "the same documents, the same truncations": (ours["documents"], ours["truncated"])
        == (theirs["texts"], theirs["longer_than_2048"]),
        "the checkpoint's re-saved tokenizer is accepted as the data's": True,  # else evaluate refused above
        "pico export-hf exports the import": pico_main(["export-hf", str(ckpt), str(scratch / "hf")]) == 0,
    }
    print(
        "the checkpoint's tokenizer.json, re-saved by pico-train through transformers: "
        + ("the same ids from a different file" if "gives the same ids" in said.getvalue() else "the same file as ours")
    )
    for name, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
