"""`pico <stage>`: the entry points `dvc.yaml` calls (and the Prefect flows, through DVC).

Every stage loads params through the one validated model first, so a bad key or value fails
before any work. Expected failures (bad params, bad input files, a diverged run) print one clear
message and exit non-zero instead of a traceback from deep inside a library.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from pico import numerics
from pico.codedeps import STAGE_MODULES
from pico.config import ConfigError, Params, load_params
from pico.errors import BadDocumentError, TrainingDiverged, TrainingFailed, TrainingInterrupted


def _stage(module: str) -> Callable[[Params, str], None]:
    """The stage's entry point: ``run(params)`` of its module (``main(params, path)`` for train,
    which may relaunch itself under torchrun). Imported on use: ``pico report`` never loads torch."""
    def call(params: Params, params_path: str) -> None:
        mod = importlib.import_module(module)
        if hasattr(mod, "main"):
            mod.main(params, params_path)
        else:
            mod.run(params)
    return call


def _train(params: Params, params_path: str) -> None:
    """``pico train``: the train stage, announcing the run's plan once the trainer knows its model.
    SIGTERM/SIGINT are taken over before torch loads (seconds, on a loaded machine), so a run
    signalled while it starts still stops in one line (pico.preempt)."""
    from pico.preempt import StopRequest

    stop = StopRequest(params.training.stop_grace_s).install()
    from pico import plan, train

    train.main(params, params_path, on_start=plan.announce, stop=stop)


STAGES: dict[str, tuple[Callable[[Params, str], None], str]] = {
    "build-embedded": (_stage(STAGE_MODULES["embedded_data"]),
                       "build the offline default corpus (Dolma + Paloma format) from CPython's own docs"),
    "tokenizer": (_stage(STAGE_MODULES["tokenizer"]), "train or fetch the tokenizer"),
    "tokenize": (_stage(STAGE_MODULES["tokenize"]),
                 "pack training documents into rows and evaluation documents into windows"),
    "train": (_train, "train (resumes from the newest checkpoint of the same run)"),
    "evaluate": (_stage(STAGE_MODULES["evaluate"]), "Paloma-style metrics of the final checkpoint"),
    "report": (_stage(STAGE_MODULES["report"]), "Markdown report with plots"),
    "check-params": (lambda params, path: print("params OK"), "validate params.yaml and exit"),
}


def describe(err: BaseException) -> str:
    """An error as one line that is never empty: the message, or the error's kind when it has none."""
    text = str(err).strip()
    if isinstance(err, OSError) and err.filename and str(err.filename) not in text:
        text = f"{err.filename}: {text}"
    return text or f"{type(err).__name__} (no message)"


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
    cmp_.add_argument("--out", help="markdown file (default: comparisons/<A>-vs-<B>/compare.md, plots beside it)")
    pre = sub.add_parser("preset", help="run a named preset (presets/*.yaml) as a DVC experiment")
    pre.add_argument("name", help="v1, v2, v1-full, v2-full, ...")
    pre.add_argument("--queue", action="store_true", help="queue the experiment (run later with `dvc queue start`)")
    pre.add_argument("--dry-run", action="store_true", help="print the dvc command only")
    pre.add_argument("-n", "--exp-name", help="experiment name (default: the preset's name)")
    rep = sub.add_parser("reproduce", help="rerun a past run (git revision or DVC experiment) in a scratch clone "
                                           "and report, per metric, how close it came")
    rep.add_argument("ref", help="a git revision (HEAD, a tag, a commit) or a DVC experiment name")
    rep.add_argument("--from", dest="from_stage", help="rerun from this stage on (earlier outputs from the DVC cache)")
    rep.add_argument("--noise-seeds", type=int, default=1,
                     help="extra runs with seeds +1..+N that measure run-to-run noise (default 1; 0 = none)")
    rep.add_argument("--out", help="markdown report (default: reproductions/<REF>-<commit>.md)")
    rep.add_argument("--keep", action="store_true", help="keep the scratch clone")
    pl = sub.add_parser("plan", help="what the run will cost: tokens, epochs, FLOPs, projected wall time, disk, "
                                     "device-hours (calibrated on this machine)")
    pl.add_argument("--device", help="project from a stored figure for this device (h100, h200, a100, l4) instead")
    ck = sub.add_parser("checkpoints", help="list the run's checkpoints and the runs moved aside; remove one of those")
    ck.add_argument("--remove", metavar="NAME", help="delete a set-aside or quarantined folder (as listed)")
    qu = sub.add_parser("queue", help="the DVC experiment queue's stale rows (running with no process, failed); "
                                      "--clean drops them (their runs continue when queued again)")
    qu.add_argument("--clean", action="store_true", help="have DVC mark them failed and remove them from the queue")
    ea = sub.add_parser("export-analysis", help="lay a run's learning dynamics out for pico-analyze "
                                               "(OUT/checkpoints/step_<N>/learning_dynamics, OUT/training_config.yaml)")
    ea.add_argument("out_dir", help="a new folder (or an earlier export), used as pico-analyze's --run_path")
    ea.add_argument("--checkpoint-dir", help="the run's checkpoint folder (default: training.checkpoint_dir; "
                                             "a set-aside run: checkpoints.superseded/<fingerprint>)")
    imp = sub.add_parser("import-pico", help="a pico-train run folder or Hugging Face checkpoint as a checkpoint of "
                                             "this pipeline, for `pico evaluate` and the report")
    imp.add_argument("source", help="pico-train's runs/<run>/checkpoints/step_<N> (or latest), or an HF "
                                    "checkpoint folder (config.json + model.safetensors / pytorch_model.bin)")
    imp.add_argument("--out", help="checkpoint folder to write into (default: training.checkpoint_dir)")
    args = parser.parse_args(argv)

    if args.stage == "export-analysis":
        from pico.dynamics import export_analysis

        try:
            root = args.checkpoint_dir or load_params(args.params).training.checkpoint_dir
            out, steps = export_analysis(root, args.out_dir)
        except (ConfigError, OSError, ValueError) as err:
            print(f"error in export-analysis: {describe(err)}", file=sys.stderr)
            return 1
        print(f"exported learning dynamics of steps {', '.join(map(str, steps))} -> {out} "
              f"(pico-analyze: analyze --config_path CONFIG --run_path {out})")
        return 0
    if args.stage == "import-pico":
        from pico.import_pico import import_pico

        try:
            params = load_params(args.params)
            path = import_pico(args.source, args.out or params.training.checkpoint_dir, params)
        except (ConfigError, OSError, ValueError, KeyError) as err:
            print(f"error in import-pico: {describe(err)}", file=sys.stderr)
            return 1
        print(f"imported {args.source} -> {path}; `pico evaluate` scores it on data.tokens_dir "
              "(which must be tokenized with the model's tokenizer)")
        return 0

    if args.stage == "plan":
        try:
            params = load_params(args.params)
            numerics.apply(params.training.numerics)  # calibrate with the numerics the run will use
            from pico import plan

            plan.run(params, args.device)
        except ConfigError as err:
            print(f"error: {describe(err)}", file=sys.stderr)
            return 2
        except (OSError, ValueError) as err:
            print(f"error in plan: {describe(err)} (the plan needs the tokenize stage's output: "
                  "`dvc repro tokenize`)", file=sys.stderr)
            return 1
        return 0
    if args.stage == "checkpoints":
        from pico.folders import describe_folders, remove_set_aside
        from pico.runstore import store_root

        try:
            params = load_params(args.params)
            root, store = params.training.checkpoint_dir, store_root(params)
            if args.remove:
                print(f"deleted {remove_set_aside(root, args.remove, store)}")
            else:
                print(describe_folders(root, store))
        except (ConfigError, OSError, ValueError) as err:
            print(f"error: {describe(err)}", file=sys.stderr)
            return 2
        return 0
    if args.stage == "queue":
        from pathlib import Path

        from pico import queue

        return queue.run(Path("."), args.clean)

    if args.stage == "reproduce":
        from pico.reproduce import ReproduceError, reproduce

        try:
            r = reproduce(args.ref, ".", args.from_stage, args.noise_seeds, args.out, args.keep)
        except (ReproduceError, OSError, ValueError, ConfigError) as err:
            print(f"error in reproduce: {describe(err)}", file=sys.stderr)
            return 2
        print(r.markdown.split("\n", 1)[0].removeprefix("# "))
        for v in r.verdicts:
            print(f"  {v.label}: {v.verdict}")
        print(f"  first difference: {r.first_difference}")
        if r.replay:
            print(f"  cannot replay exactly: {r.replay}")
        return 0 if r.ok else 1

    if args.stage == "preset":
        from pathlib import Path

        from pico import presets

        try:
            return presets.run(args.name, Path(args.params), args.queue, args.dry_run, args.exp_name)
        except ConfigError as err:
            print(f"error: {describe(err)}", file=sys.stderr)
            return 2
    if args.stage == "compare":
        from pico.report import compare

        try:
            print(f"wrote {compare(args.run_a, args.run_b, args.out)}")
        except (OSError, ValueError, ConfigError) as err:
            print(f"error in compare: {describe(err)}", file=sys.stderr)
            return 1
        return 0
    if args.stage == "export-hf":
        from pico.export_hf import export

        try:
            out = export(args.checkpoint, args.out_dir, args.tokenizer_dir)
        except (OSError, ValueError, KeyError) as err:
            print(f"error in export-hf: {describe(err)}", file=sys.stderr)
            return 1
        print(f"exported {args.checkpoint} -> {out} (LlamaForCausalLM)")
        return 0

    try:
        params = load_params(args.params)
        numerics.apply(params.training.numerics)  # before any stage imports torch
        STAGES[args.stage][0](params, args.params)
    except ConfigError as err:
        print(f"error: {describe(err)}", file=sys.stderr)
        return 2
    except TrainingInterrupted as err:  # stopped on request, progress saved: not an error, not a success
        print(f"train: {err}", file=sys.stderr)
        return err.exit_code
    except (BadDocumentError, OSError, TrainingDiverged, TrainingFailed, ValueError) as err:
        print(f"error in stage '{args.stage}': {describe(err)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
