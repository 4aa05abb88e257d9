"""pico-train's Paloma number, computed exactly as pico-train computes it.

pico-train (``src/evaluation/tasks/paloma.py``) hands the evaluation texts to Hugging Face
``evaluate``'s perplexity metric (the ``pico-lm/perplexity`` fork) with ``add_start_token=False``
and ``max_length=2048``. That metric tokenizes each text without special tokens, keeps its first
``max_length`` tokens (one sequence per text, the rest is never read), scores tokens 2..n (the
first has no context: nothing is put before it), takes exp(mean NLL) per text and returns the mean
over the whole set. A text of fewer than two tokens stops it with an assertion; here it is passed
over and counted.

This is that computation on this pipeline's evaluation documents, rebuilt from the windows
(pico.data.eval_windows: ``[EOS] + ids`` cut into windows overlapping by one token), so it is the
number pico-train would print for this model on these texts. It is *not* the honest figure: a mean
of exponentials that a few bad documents dominate, over truncated documents. ``pico evaluate``
shows it beside the token-weighted perplexity and bits per byte, labelled as pico-train's.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from pico.data.eval_windows import EvalWindows


def document_ids(windows: EvalWindows) -> tuple[list[np.ndarray], np.ndarray]:
    """Each evaluation document's token ids (no EOS) and its source index, in reading order. A
    pretokenized row (pico.data.pretokenized) is one window holding the whole text's ids."""
    table = windows.table
    skip = 0 if windows.manifest.get("source") == "pretokenized" else 1
    order = np.argsort(table["doc"], kind="stable")  # a document's windows are consecutive, in order
    docs: list[np.ndarray] = []
    sources: list[int] = []
    parts: list[np.ndarray] = []
    for k, i in enumerate(order):
        parts.append(windows.window(int(i))[skip:])  # the first token is context: EOS, or the overlap
        last = k + 1 == len(order) or table["doc"][order[k + 1]] != table["doc"][i]
        if last:
            docs.append(np.concatenate(parts))
            sources.append(int(table["source"][i]))
            parts = []
    return docs, np.asarray(sources, dtype=np.int64)


@torch.no_grad()
def sequence_perplexities(
    model: torch.nn.Module, docs: list[np.ndarray], max_length: int, batch_size: int, device: torch.device | str
) -> np.ndarray:
    """exp(mean NLL of tokens 2..n) of each document's first ``max_length`` tokens (NaN where
    fewer than two tokens remain)."""
    was_training = model.training
    model.eval()
    seqs = [d[:max_length] for d in docs]
    out = np.full(len(seqs), np.nan)
    scored = [i for i, s in enumerate(seqs) if len(s) >= 2]
    scored.sort(key=lambda i: -len(seqs[i]))  # similar lengths together: less padding
    for b in range(0, len(scored), batch_size):
        chunk = scored[b : b + batch_size]
        width = max(len(seqs[i]) for i in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        labels = torch.full((len(chunk), width - 1), -100, dtype=torch.long)
        for r, i in enumerate(chunk):
            s = torch.from_numpy(seqs[i].astype(np.int64))
            ids[r, : len(s)] = s
            labels[r, : len(s) - 1] = s[1:]
        # right padding changes nothing before it (causal attention); padded labels are ignored
        nll = model(ids[:, :-1].to(device), labels.to(device), reduction="none").double().cpu()
        counts = (labels != -100).sum(dim=1).double()
        out[chunk] = torch.exp(nll.sum(dim=1) / counts).numpy()
    model.train(was_training)
    return out


def pico_train_number(
    model: torch.nn.Module,
    windows: EvalWindows,
    max_length: int,
    max_seq_len: int,
    batch_size: int,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """pico-train's Paloma number on these documents, with what it is made of: the mean over the
    whole set and, for reading it, over each source; how many documents were truncated and how many
    passed over (fewer than two tokens)."""
    length = min(max_length, max_seq_len)  # pico-train's model reads no more than its context
    docs, sources = document_ids(windows)
    ppl = sequence_perplexities(model, docs, length, batch_size, device)
    ok = ~np.isnan(ppl)

    def mean(mask: np.ndarray) -> float:
        vals = ppl[mask & ok]
        return math.fsum(vals.tolist()) / len(vals) if len(vals) else math.nan

    return {
        "mean_perplexity": mean(np.ones(len(docs), dtype=bool)),
        "sources": {name: mean(sources == s) for s, name in enumerate(windows.sources) if (sources == s).any()},
        "documents": int(ok.sum()),
        "truncated": int(sum(len(d) > length for d in docs)),
        "skipped_short": int((~ok).sum()),
        "max_length": length,
    }
