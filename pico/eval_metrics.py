"""Paloma-style metrics that tell the truth, from per-window NLL (the evaluate stage and the
trainer's in-training evaluations both compute them here).

Per source and per subdomain, from the summed negative log-likelihood (nats) of every window:

- ``token_perplexity`` = exp(Σ NLL / Σ predicted tokens)  -- the honest, token-weighted figure;
- ``bits_per_byte``   = Σ NLL / (ln 2 · Σ UTF-8 bytes)      -- comparable across tokenizers;
- ``pico_mean_seq_perplexity`` = mean over windows of exp(mean NLL of the window) -- pico-train's
  *statistic* (HF ``evaluate``'s ``mean_perplexity``) over this pipeline's windows, not its number
  (pico.pico_number computes that exactly: whole documents truncated, first tokens unscored). By Jensen's
  inequality it is >= exp(mean window loss), so >= the token-level figure when windows are
  equally long (pico's 2048-token chunks); an exponential averaged over windows lets a few bad
  ones blow it up. It is shown beside the honest figure (with their ratio), never instead of it.

``macro`` averages each figure over sources (Paloma's convention); ``overall`` pools all tokens.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from pico.data.eval_windows import EvalWindows

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
