"""`pico <stage>`: the entry points `dvc.yaml` calls (and the Prefect flows, through DVC).

Every stage loads params through the one validated model first, so a bad key or value fails
before any work. Expected failures (bad params, bad input files, a diverged run) print one clear
message and exit non-zero instead of a traceback from deep inside a library.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from pico.config import ConfigError, Params, load_params
from pico.errors import BadDocumentError, TrainingDiverged, TrainingFailed


def _embedded(params: Params) -> None:
    from pico.data import embedded

    embedded.build(params.embedded)


def _tokenizer(params: Params) -> None:
    from pico.data import tokenizer

    tokenizer.run(params)


def _tokenize(params: Params) -> None:
    from pico import pretokenize

    pretokenize.run(params)


def _train(params: Params, params_path: str = "params.yaml") -> None:
    from pico import distributed, train

    if params.training.nproc > 1 and not distributed.under_torchrun():
        code = distributed.launch(params_path, params.training.nproc)
        if code != 0:
            raise TrainingFailed(f"{params.training.nproc} training processes ended with exit code {code}")
        return
    summary = train.run(params)
    print(f"train: {summary['status']} at step {summary['step']}, final loss {summary['final_loss']:.4f}")


def _evaluate(params: Params) -> None:
    from pico import evaluate

    evaluate.run(params)


def _report(params: Params) -> None:
    from pico import report

    report.run(params)


def _check(params: Params) -> None:
    print("params OK")


STAGES: dict[str, tuple[Callable[[Params], None], str]] = {
    "build-embedded": (_embedded, "build the offline default corpus (Dolma + Paloma format) from CPython's own docs"),
    "tokenizer": (_tokenizer, "train or fetch the tokenizer"),
    "tokenize": (_tokenize, "pack training documents into rows and evaluation documents into windows"),
    "train": (_train, "train (resumes from the newest checkpoint of the same run)"),
    "evaluate": (_evaluate, "Paloma-style metrics of the final checkpoint"),
    "report": (_report, "Markdown report with plots"),
    "check-params": (_check, "validate params.yaml and exit"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pico", description="pico pipeline stages")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, (_, help_text) in STAGES.items():
        sub.add_parser(name, help=help_text)
    exp = sub.add_parser("export-hf", help="write a checkpoint as a Hugging Face LlamaForCausalLM folder")
    exp.add_argument("checkpoint", help="a checkpoint folder, e.g. checkpoints/step_00000200")
    exp.add_argument("out_dir")
    exp.add_argument("--tokenizer-dir", help="default: the tokenizer folder recorded in the checkpoint")
    cmp_ = sub.add_parser("compare", help="the training log of two runs (git revisions or DVC experiments) side by side")
    cmp_.add_argument("run_a")
    cmp_.add_argument("run_b")
    cmp_.add_argument("--out", default="reports/compare.md")
    pre = sub.add_parser("preset", help="run a named preset (presets/*.yaml) as a DVC experiment")
    pre.add_argument("name", help="v1, v2, v1-full, v2-full, ...")
    pre.add_argument("--queue", action="store_true", help="queue the experiment (run later with `dvc queue start`)")
    pre.add_argument("--dry-run", action="store_true", help="print the dvc command only")
    pre.add_argument("-n", "--exp-name", help="experiment name (default: the preset's name)")
    args = parser.parse_args(argv)

    if args.stage == "preset":
        from pathlib import Path

        from pico import presets

        try:
            return presets.run(args.name, Path(args.params), args.queue, args.dry_run, args.exp_name)
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    if args.stage == "compare":
        from pico.report import compare

        try:
            print(f"wrote {compare(args.run_a, args.run_b, args.out)}")
        except (OSError, ValueError, ConfigError) as err:
            print(f"error in compare: {err}", file=sys.stderr)
            return 1
        return 0
    if args.stage == "export-hf":
        from pico.export_hf import export

        try:
            out = export(args.checkpoint, args.out_dir, args.tokenizer_dir)
        except (OSError, ValueError, KeyError) as err:
            print(f"error in export-hf: {err}", file=sys.stderr)
            return 1
        print(f"exported {args.checkpoint} -> {out} (LlamaForCausalLM)")
        return 0

    try:
        params = load_params(args.params)
        if args.stage == "train":
            _train(params, args.params)
        else:
            STAGES[args.stage][0](params)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (BadDocumentError, OSError, TrainingDiverged, TrainingFailed, ValueError) as err:
        print(f"error in stage '{args.stage}': {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
