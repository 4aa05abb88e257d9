"""The evaluate stage: a checkpoint scored on the evaluation windows (pico.eval_metrics: token
perplexity, bits per byte, per source and domain), pico-train's own Paloma number beside them
(pico.pico_number), written to ``evaluation.out`` and ``evaluation.domains_out``."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from pico import checkpoint
from pico.config import Params
from pico.data import tokenizer
from pico.data.eval_windows import EvalWindows
from pico.data.tokens_dir import TokensDir
from pico.eval_metrics import evaluate_model
from pico.fsutil import atomic_open, atomic_write_json
from pico.model import ModelDims, PicoDecoder
from pico.pico_number import pico_train_number
from pico.train_metrics import read_summary


def json_safe(obj: Any) -> Any:
    """Infinite or NaN values as strings: strict JSON readers (and DVC) reject bare Infinity."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def pick_checkpoint(params: Params) -> tuple[Path, str, str | None]:
    """The checkpoint to evaluate: the best one when training stopped early (evaluation.checkpoint
    auto), else the newest. Returns (path, "best" | "latest", the trainer's status)."""
    root = Path(params.training.checkpoint_dir)
    summary = read_summary(params.training.metrics_dir)
    status = summary.status if summary else None
    kind = params.evaluation.checkpoint
    if kind == "auto":
        kind = "best" if status == "early_stopped" else "latest"
        if kind == "best" and not (root / checkpoint.BEST / checkpoint.STATE).is_file():
            # early stopping turned on mid-run (a continued plan) after the best evaluation: not kept
            print(
                f"evaluate: no best checkpoint in {root} (early stopping was enabled after the best "
                "evaluation); evaluating the latest"
            )
            kind = "latest"
    if kind == "best":
        if not (root / checkpoint.BEST / checkpoint.STATE).is_file():
            raise FileNotFoundError(f"no best checkpoint in {root} (it is kept when early_stop.enabled is true)")
        return root / checkpoint.BEST, kind, status
    latest = checkpoint.latest_checkpoint(root)
    if latest is None:
        raise FileNotFoundError(f"no checkpoint in {root}; run the train stage first")
    return latest, kind, status


def check_tokenizer(
    ckpt: Path, state: dict[str, Any], windows: EvalWindows, tokens_dir: str, tokenizer_dir: str
) -> None:
    """Scores mean something only on data tokenized with the model's own tokenizer: the same file,
    or (a pico-train checkpoint's re-saved copy) one that gives the same ids."""
    want, have = state.get("tokenizer_sha256"), windows.manifest.get("tokenizer_sha256")
    if want and have and want != have:
        theirs = state.get("tokenizer_behaviour")
        if theirs and theirs == tokenizer.recorded_behaviour(have, tokenizer_dir):
            print(
                f"evaluate: {ckpt}'s tokenizer file ({want[:12]}) differs from the data's ({have[:12]}) "
                "but gives the same ids (vocabulary, merges, a probe text): the same tokenizer"
            )
            return
        raise ValueError(
            f"{ckpt} was trained with tokenizer {want[:12]} but {tokens_dir} is tokenized with "
            f"{have[:12]}; tokenize the evaluation data with the model's tokenizer (tokenizer.source)"
        )
    vocab = state["model_dims"]["vocab_size"]
    top = int(windows.tokens.max()) if len(windows.tokens) else 0
    if top >= vocab:
        raise ValueError(
            f"{tokens_dir} holds token id {top}, beyond the vocabulary of {ckpt} ({vocab}); "
            "tokenize the evaluation data with the model's tokenizer"
        )


DOMAIN_COLUMNS = (
    "level",
    "source",
    "domain",
    "windows",
    "tokens",
    "bytes",
    "loss",
    "token_perplexity",
    "bits_per_byte",
    "pico_mean_seq_perplexity",
)


def write_domain_table(path: Path, metrics: dict[str, Any]) -> Path:
    """Every Paloma domain (subdomain) and source, then both macros, as one CSV with fixed columns,
    sorted by source and domain, numbers to 6 significant digits: a table to diff and paste."""

    def fmt(v: Any) -> str:
        return format(v, ".6g") if isinstance(v, float) else str(v)

    rows = []
    for name, m in sorted(metrics["sources"].items()):
        rows.append({"level": "source", "source": name, "domain": "", **m})
    for name, m in sorted(metrics["subdomains"].items()):
        source, _, domain = name.partition("/")
        rows.append({"level": "domain", "source": source, "domain": domain, **m})
    rows.sort(key=lambda r: (r["source"], r["level"] == "domain", r["domain"]))
    rows.append({"level": "macro_sources", "source": "", "domain": "", **metrics["macro"]})
    if metrics.get("macro_domains", {}).get("domains"):
        rows.append({"level": "macro_domains", "source": "", "domain": "", **metrics["macro_domains"]})
    with atomic_open(path, "w") as fh:
        out = csv.writer(fh, lineterminator="\n")
        out.writerow(DOMAIN_COLUMNS)
        out.writerows([fmt(r.get(c, "")) for c in DOMAIN_COLUMNS] for r in rows)
    return path


def run(params: Params) -> dict[str, Any]:
    ckpt, kind, train_status = pick_checkpoint(params)
    state = checkpoint.verify(ckpt)  # a damaged file is named, not scored
    model = PicoDecoder(ModelDims(**state["model_dims"]))  # the checkpoint says what it holds
    checkpoint.load_weights(ckpt, model)
    windows = EvalWindows(params.data.tokens_dir)
    check_tokenizer(ckpt, state, windows, params.data.tokens_dir, params.tokenizer.out_dir)
    print(
        f"evaluate: {kind} checkpoint {ckpt} (step {state['step']}) on {len(windows)} windows from {len(windows.sources)} sources"
    )
    metrics = evaluate_model(model, windows, params.evaluation.batch_size)
    ev = params.evaluation
    pico = (
        pico_train_number(model, windows, ev.pico_max_length, state["model_dims"]["max_seq_len"], ev.batch_size)
        if ev.pico_max_length
        else None
    )
    result = {
        "step": state["step"],
        "checkpoint": str(ckpt),
        "checkpoint_kind": kind,
        "train_status": train_status,
        "fingerprint": state["fingerprint"],
        "code_version": state.get("code_version"),
        **({"imported_from": state["imported_from"]} if state.get("imported_from") else {}),
        "model_dims": state["model_dims"],
        **metrics,
        "pico_train_paloma": pico,
        "contamination": TokensDir(params.data.tokens_dir).contamination(),
    }
    atomic_write_json(Path(params.evaluation.out), json_safe(result))
    write_domain_table(Path(params.evaluation.domains_out), metrics)
    for name, m in metrics["sources"].items():
        print(
            f"  {name}: token ppl {m['token_perplexity']:.3f}, bits/byte {m['bits_per_byte']:.4f}, "
            f"pico per-seq mean ppl {m['pico_mean_seq_perplexity']:.4g} ({m['seq_mean_over_token_ratio']:.3g}x)"
        )
    mac = metrics["macro"]
    print(f"  macro: token ppl {mac['token_perplexity']:.3f}, bits/byte {mac['bits_per_byte']:.4f}")
    if pico:
        print(
            f"  pico-train's Paloma number (mean of per-document perplexities, first {pico['max_length']} tokens, "
            f"{pico['documents']} documents): {pico['mean_perplexity']:.4g}"
        )
    return result
