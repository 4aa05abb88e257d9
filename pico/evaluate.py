"""The evaluate stage: Paloma-style metrics that tell the truth.

Per source and per subdomain, from the summed negative log-likelihood (nats) of every window:

- ``token_perplexity`` = exp(Σ NLL / Σ predicted tokens)  -- the honest, token-weighted figure;
- ``bits_per_byte``   = Σ NLL / (ln 2 · Σ UTF-8 bytes)      -- comparable across tokenizers;
- ``pico_mean_seq_perplexity`` = mean over windows of exp(mean NLL of the window) -- what
  pico-train reports as Paloma perplexity (HF ``evaluate``'s ``mean_perplexity``). By Jensen's
  inequality it is >= exp(mean window loss), so >= the token-level figure when windows are
  equally long (pico's 2048-token chunks); an exponential averaged over windows lets a few bad
  ones blow it up. It is shown beside the honest figure (with their ratio), never instead of it.

``macro`` averages each figure over sources (Paloma's convention); ``overall`` pools all tokens.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pico import checkpoint
from pico.config import Params
from pico.data import tokenizer
from pico.data.eval_windows import EvalWindows
from pico.data.tokens_dir import TokensDir
from pico.fsutil import atomic_open, atomic_write_json
from pico.model import ModelDims, PicoDecoder
from pico.train_metrics import read_summary

LN2 = math.log(2.0)


def _exp(x: float) -> float:
    return math.exp(x) if x < 709.0 else math.inf


@torch.no_grad()
def window_nll(
    model: torch.nn.Module,
    windows: EvalWindows,
    indices: np.ndarray,
    batch_size: int,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Summed NLL (nats, float64) of each selected window's predicted tokens."""
    was_training = model.training
    model.eval()
    lengths = windows.table["length"][indices]
    order = indices[np.argsort(-lengths, kind="stable")]  # similar lengths together: less padding
    out = np.zeros(len(windows.table), dtype=np.float64)
    for b in range(0, len(order), batch_size):
        chunk = order[b : b + batch_size]
        seqs = [windows.window(int(i)) for i in chunk]
        width = max(len(s) for s in seqs)
        ids = torch.zeros((len(seqs), width), dtype=torch.long)
        labels = torch.full((len(seqs), width - 1), -100, dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, : len(s)] = torch.from_numpy(s)
            labels[r, : len(s) - 1] = torch.from_numpy(s[1:])
        # per-token NLL through the chunked loss: never the batch's full logits (pico.loss)
        nll = model(ids[:, :-1].to(device), labels.to(device), reduction="none")
        out[chunk] = nll.double().sum(dim=1).cpu().numpy()
    model.train(was_training)
    return out[indices]


def summarize(nll: np.ndarray, n_tokens: np.ndarray, n_bytes: np.ndarray) -> dict[str, Any]:
    """Metrics of one group of windows (see the module docstring)."""
    total_nll, tokens, nbytes = float(nll.sum()), int(n_tokens.sum()), int(n_bytes.sum())
    loss = total_nll / tokens
    per_window_loss = nll / n_tokens
    token_ppl = _exp(loss)
    seq_ppls = [_exp(float(x)) for x in per_window_loss]
    seq_mean = math.fsum(seq_ppls) / len(seq_ppls)
    return {
        "loss": loss,
        "token_perplexity": token_ppl,
        "bits_per_byte": total_nll / (LN2 * nbytes) if nbytes else math.nan,
        "pico_mean_seq_perplexity": seq_mean,
        "seq_mean_over_token_ratio": seq_mean / token_ppl if math.isfinite(seq_mean) else math.inf,
        "max_window_loss": float(per_window_loss.max()),
        "windows": int(len(nll)),
        "tokens": tokens,
        "bytes": nbytes,
    }


def aggregate(nll: np.ndarray, table: np.ndarray, sources: list[str], subdomains: list[str]) -> dict[str, Any]:
    """Per-source, per-subdomain, macro (the mean of each figure over sources, and over
    subdomains: Paloma's domain macro) and overall metrics from per-window NLL sums."""
    n_tokens = table["length"].astype(np.int64) - 1
    n_bytes = table["n_bytes"].astype(np.int64)
    per_source = {}
    for s, name in enumerate(sources):
        m = table["source"] == s
        if m.any():
            per_source[name] = summarize(nll[m], n_tokens[m], n_bytes[m])
    per_sub = {}
    for s, name in enumerate(subdomains):
        m = table["subdomain"] == s
        if m.any():
            per_sub[name] = summarize(nll[m], n_tokens[m], n_bytes[m])
    keys = ("loss", "token_perplexity", "bits_per_byte", "pico_mean_seq_perplexity")
    dominant = dominant_windows(nll, n_tokens, table, sources, subdomains)
    macro = {k: math.fsum(v[k] for v in per_source.values()) / len(per_source) for k in keys}
    macro["seq_mean_over_token_ratio"] = macro["pico_mean_seq_perplexity"] / macro["token_perplexity"]
    # Paloma's own convention averages over domains (subdomains), so a source with many small
    # domains weighs by its domains; the source macro above stays the pipeline's headline
    domains = {k: math.fsum(v[k] for v in per_sub.values()) / len(per_sub) for k in keys} if per_sub else {}
    return {
        "macro": macro,
        "macro_domains": {**domains, "domains": len(per_sub)},
        "overall": summarize(nll, n_tokens, n_bytes),
        "sources": per_source,
        "subdomains": per_sub,
        "per_sequence_dominance": dominant,
    }


def dominant_windows(
    nll: np.ndarray, n_tokens: np.ndarray, table: np.ndarray, sources: list[str], subdomains: list[str], top: int = 5
) -> dict[str, Any]:
    """Which windows (and sources) make up the per-sequence mean: each window's share of
    Σ exp(window loss). A share near 1 for a handful of windows is the metric pathology."""
    losses = nll / n_tokens
    ppl = np.array([_exp(float(x)) for x in losses])
    finite = np.isfinite(ppl)
    total = math.fsum(ppl[finite]) if finite.all() else math.inf
    order = np.argsort(-losses, kind="stable")[:top]
    windows = [
        {
            "window": int(i),
            "doc": int(table["doc"][i]),
            "source": sources[int(table["source"][i])],
            "subdomain": subdomains[int(table["subdomain"][i])],
            "loss": float(losses[i]),
            "tokens": int(n_tokens[i]),
            "perplexity": float(ppl[i]),
            "share": float(ppl[i] / total) if math.isfinite(total) else (1.0 if not finite[i] else 0.0),
        }
        for i in order
    ]
    by_source = {}
    for s, name in enumerate(sources):
        m = table["source"] == s
        if m.any():
            part = math.fsum(ppl[m & finite]) if (finite | ~m).all() else math.inf
            by_source[name] = part / total if math.isfinite(total) and total > 0 else float(not math.isfinite(part))
    return {"top_windows": windows, "top_share": math.fsum(w["share"] for w in windows), "source_share": by_source}


def evaluate_model(
    model: torch.nn.Module,
    windows: EvalWindows,
    batch_size: int,
    max_per_source: int | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    indices = windows.select(max_per_source)
    nll = window_nll(model, windows, indices, batch_size, device)
    return aggregate(nll, windows.table[indices], windows.sources, windows.subdomains)


@torch.no_grad()
def rows_loss(
    model: torch.nn.Module, rows: Any, indices: Any, batch_size: int, device: torch.device, autocast: Any
) -> float:
    """Mean token loss of training rows ``indices`` in eval mode (the trainer's seen-rows sample:
    already-trained rows scored without dropout, beside the held-out windows)."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    for i in range(0, len(indices), batch_size):
        batch = torch.from_numpy(np.asarray(rows[indices[i : i + batch_size]], dtype=np.int64)).to(device)
        with autocast:
            total += model(batch[:, :-1], batch[:, 1:]).double() * len(batch)
    model.train(was_training)
    return float(total) / len(indices)


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
    return result
