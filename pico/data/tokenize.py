"""The tokenize stage: Dolma documents -> packed training rows; Paloma documents -> eval windows.

Outputs in ``data.tokens_dir`` (``pico.data.tokens_dir`` owns the layout): ``train.bin`` +
``train_manifest.json`` and ``eval.bin`` + ``eval_windows.npy`` + ``eval_manifest.json``. Same
inputs and tokenizer => identical bytes. (``pico.data.pretokenized`` is the other way in: pico's
published, already tokenized rows.)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

from pico.config import Params
from pico.data import contamination, pretokenized
from pico.data import tokenizer as tokenizer_stage
from pico.data.budgets import Budgets
from pico.data.documents import HF_PREFIX, Document, ReadStats, expand_paths, iter_documents
from pico.data.eval_windows import EvalWindows, write_eval_windows
from pico.data.packing import write_train_tokens
from pico.data.parallel import pack_shards_parallel
from pico.data.tokens_dir import TokenLayout, TokensDir


def run(params: Params, progress: bool | None = None) -> dict:
    progress = sys.stderr.isatty() if progress is None else progress
    tok, info = tokenizer_stage.load(params.tokenizer.out_dir)
    d = params.data
    out = TokensDir(d.tokens_dir)
    out.path.mkdir(parents=True, exist_ok=True)
    layout = TokenLayout.of(d.seq_len, info)

    if d.pretokenized_train:
        train = pretokenized.write_train_rows(d.pretokenized_train, out, layout, d.pretokenized_max_rows)
        print(f"train: {train['rows']} pretokenized rows of {train['row_len']} from {d.pretokenized_train}")
    else:
        train = _tokenize_train(params, tok, out, layout, progress)

    if d.pretokenized_eval:
        ev = pretokenized.write_eval_rows(d.pretokenized_eval, out, layout)
    else:
        stats = ReadStats()
        docs = iter_documents(d.eval_paths, stats, strict=d.strict)
        ev = write_eval_windows(docs, stats, tok, out, layout, d.encode_batch_size, progress)
    print(
        f"eval: {ev['documents']} documents, {len(ev['sources'])} sources -> {ev['windows']} windows, "
        f"{ev['predicted_tokens']:,} predicted tokens, {ev['bytes']:,} bytes, skipped {ev['skipped']}"
    )
    rows, _ = out.open_rows(d.seq_len)
    windows = EvalWindows(out)
    found = contamination.count(rows, windows.tokens, windows.table, windows.sources)
    out.write_contamination(found)
    print(
        f"contamination: {found['contaminated_documents']} of {found['documents']} evaluation documents share a "
        f"{found['ngram']}-token n-gram with the training rows"
    )
    return {"train": train, "eval": ev, "contamination": found}


def _passes(params: Params, stats: ReadStats, passes: int) -> Iterator[Document]:
    """The training documents, ``passes`` times (a budget weight above 1 repeats a source one whole
    corpus later); read problems are counted on the first pass only."""
    d = params.data
    for k in range(passes):
        for doc in iter_documents(
            d.train_paths, stats if k == 0 else ReadStats(), strict=d.strict, max_documents=d.max_documents
        ):
            doc.copy = k
            yield doc


def _tokenize_train(params: Params, tok, out: TokensDir, layout: TokenLayout, progress: bool) -> dict:
    d = params.data
    files = expand_paths(d.train_paths)
    use_dask = d.tokenize_executor == "dask"
    parallel = (
        (d.tokenize_workers > 1 or use_dask)
        and d.max_documents is None
        and not d.budgets
        and not any(f.startswith(HF_PREFIX) for f in files)
    )
    if parallel:
        tokenizer_file = str(Path(params.tokenizer.out_dir) / tokenizer_stage.TOKENIZER_FILE)
        train = pack_shards_parallel(
            files,
            tokenizer_file,
            out,
            layout,
            min(d.tokenize_workers, len(files)),
            d.strict,
            d.encode_batch_size,
            use_dask=use_dask,
            dask_address=d.dask_address or os.environ.get("PICO_DASK_ADDRESS"),
        )
    else:  # one stream (also for hub datasets, max_documents and budgets, which need a single reader)
        stats = ReadStats()
        budgets = Budgets(d.budgets, d.budget_seed)
        train = write_train_tokens(
            _passes(params, stats, budgets.passes), stats, tok, out, layout, d.encode_batch_size, progress, budgets
        )
        for name in budgets.unknown_sources():
            print(f"warning: data.budgets.{name}: no training document has source {name!r}")
    print(
        f"train: {train['documents']} documents from {len(train['files'])} files -> {train['tokens']:,} tokens, "
        f"{train['rows']} rows of {train['row_len']}, skipped {train['skipped']}"
    )
    return train
