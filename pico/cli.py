"""`pico <command>`: the entry points `dvc.yaml` calls (and the Prefect flows, through DVC), and the
tools around them.

One boundary for all of them. Every command reads the params file through the one validated model
first, so a bad key or value fails before any work. Handlers raise or return an exit code; ``main``
alone turns what a user can cause into one line on stderr: a params problem exits 2, the
pipeline's expected failures (bad input files, a diverged run, a failed rerun) exit 1, a stopped
trainer exits 128 + the signal. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pico import numerics
from pico.codedeps import STAGE_MODULES
from pico.config import ConfigError, Params, load_params
from pico.errors import PipelineError, TrainingInterrupted

# What a user's input can make a command fail with; the message names the file, key or value.
EXPECTED = (PipelineError, OSError, ValueError, KeyError)

Handler = Callable[[argparse.Namespace, "Params | None"], "int | None"]


@dataclass(frozen=True)
class Command:
    run: Handler
    help: str
    arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None
    # False: the command works without a params file (it still validates one that exists)
    needs_params: bool = True


def _stage(module: str) -> Handler:
    """A DVC stage: ``run(params)`` of its module. Imported on use: ``pico report`` never loads torch."""

    def call(args: argparse.Namespace, params: Params) -> None:
        numerics.apply(params.training.numerics)  # before the stage imports torch
        importlib.import_module(module).run(params)

    return call


def _train(args: argparse.Namespace, params: Params) -> None:
    """The train stage, announcing the run's plan once the trainer knows its model. SIGTERM/SIGINT
    are taken over before torch loads (seconds, on a loaded machine), so a run signalled while it
    starts still stops in one line (pico.preempt)."""
    from pico.preempt import StopRequest

    numerics.apply(params.training.numerics)
    stop = StopRequest(params.training.stop_grace_s).install()
    from pico import launch, plan

    launch.main(params, args.params, on_start=plan.announce, stop=stop)


def _plan(args: argparse.Namespace, params: Params) -> None:
    numerics.apply(params.training.numerics)  # calibrate with the numerics the run will use
    from pico import plan

    try:
        plan.run(params, args.device)
    except FileNotFoundError as err:
        raise PipelineError(
            f"{describe(err)} (the plan needs the tokenize stage's output: `dvc repro tokenize`)"
        ) from None


def _checkpoints(args: argparse.Namespace, params: Params) -> None:
    from pico.folders import describe_folders, remove_set_aside
    from pico.runstore import store_root

    root, store = params.training.checkpoint_dir, store_root(params)
    if args.remove:
        print(f"deleted {remove_set_aside(root, args.remove, store)}")
    else:
        print(describe_folders(root, store))


def _queue(args: argparse.Namespace, params: Params | None) -> int:
    from pico import queue

    return queue.run(Path("."), args.clean)


def _preset(args: argparse.Namespace, params: Params) -> int:
    from pico import presets

    return presets.run(args.name, Path(args.params), args.queue, args.dry_run, args.exp_name)


def _fork(args: argparse.Namespace, params: Params) -> int:
    from pico import fork

    return fork.run(args, Path(args.params))


def _ablate(args: argparse.Namespace, params: Params) -> None:
    from pico.ablate import ablate

    ablate(args.a, args.b, args.seeds, args.leave_one_out, args.at_step, args.budget, not args.no_run)


def _reproduce(args: argparse.Namespace, params: Params | None) -> int:
    from pico.reproduce import reproduce

    r = reproduce(args.ref, ".", args.from_stage, args.noise_seeds, args.out, args.keep)
    print(r.markdown.split("\n", 1)[0].removeprefix("# "))
    for v in r.verdicts:
        print(f"  {v.label}: {v.verdict}")
    print(f"  first difference: {r.first_difference}")
    if r.replay:
        print(f"  cannot replay exactly: {r.replay}")
    return 0 if r.ok else 1


def _compare(args: argparse.Namespace, params: Params | None) -> None:
    from pico.compare import compare

    print(f"wrote {compare(args.run_a, args.run_b, args.out)}")


def _export_hf(args: argparse.Namespace, params: Params | None) -> None:
    from pico.export_hf import export

    out = export(args.checkpoint, args.out_dir, args.tokenizer_dir)
    print(f"exported {args.checkpoint} -> {out} (LlamaForCausalLM)")


def _publish(args: argparse.Namespace, params: Params) -> None:
    from pico.publish import publish

    commits = publish(params, args.repo_id, args.branch, args.private, args.dry_run)
    print(f"{'planned' if args.dry_run else 'published'}: {len(commits)} commits for {args.repo_id}")


def _export_analysis(args: argparse.Namespace, params: Params) -> None:
    from pico.export_analysis import export_analysis

    out, steps = export_analysis(args.checkpoint_dir or params.training.checkpoint_dir, args.out_dir)
    print(
        f"exported learning dynamics of steps {', '.join(map(str, steps))} -> {out} "
        f"(pico-analyze: analyze --config_path CONFIG --run_path {out})"
    )


def _import_pico(args: argparse.Namespace, params: Params) -> None:
    from pico.import_pico import import_pico

    path = import_pico(args.source, args.out or params.training.checkpoint_dir, params)
    print(
        f"imported {args.source} -> {path}; `pico evaluate` scores it on data.tokens_dir "
        "(which must be tokenized with the model's tokenizer)"
    )


def _args_plan(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="project from a stored figure for this device (h100, h200, a100, l4) instead")


def _args_checkpoints(p: argparse.ArgumentParser) -> None:
    p.add_argument("--remove", metavar="NAME", help="delete a set-aside or quarantined folder (as listed)")


def _args_queue(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clean", action="store_true", help="have DVC mark them failed and remove them from the queue")


def _args_preset(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="v1, v2, v1-full, v2-full, ...")
    p.add_argument("--queue", action="store_true", help="queue the experiment (run later with `dvc queue start`)")
    p.add_argument("--dry-run", action="store_true", help="print the dvc command only")
    p.add_argument("-n", "--exp-name", help="experiment name (default: the preset's name)")


def _args_fork(p: argparse.ArgumentParser) -> None:
    p.add_argument("parent", help="the DVC experiment (or git revision) whose run to fork")
    p.add_argument("--step", type=int, required=True, help="a step the parent kept a checkpoint of")
    p.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE", help="a changed param (repeatable)")
    p.add_argument("-n", "--exp-name", help="experiment name (default: <parent>-fork<step>)")
    p.add_argument("--queue", action="store_true", help="queue the experiment (run later with `dvc queue start`)")
    p.add_argument("--dry-run", action="store_true", help="print the dvc command only")


def _args_ablate(p: argparse.ArgumentParser) -> None:
    p.add_argument("a", help="a preset, params file, git revision or DVC experiment")
    p.add_argument("b", help="the same kinds: the configuration the changes lead to")
    p.add_argument("--seeds", type=int, default=2, help="seeds per rung (default 2)")
    p.add_argument("--leave-one-out", action="store_true", help="also B minus each change (reveals interactions)")
    p.add_argument("--at-step", type=int, help="also judge the eval loss at this step")
    p.add_argument("--budget", type=float, help="refuse a ladder over this many device-hours")
    p.add_argument("--no-run", action="store_true", help="price and queue the ladder, run nothing")


def _args_reproduce(p: argparse.ArgumentParser) -> None:
    p.add_argument("ref", help="a git revision (HEAD, a tag, a commit) or a DVC experiment name")
    p.add_argument("--from", dest="from_stage", help="rerun from this stage on (earlier outputs from the DVC cache)")
    p.add_argument(
        "--noise-seeds",
        type=int,
        default=1,
        help="extra runs with seeds +1..+N that measure run-to-run noise (default 1; 0 = none)",
    )
    p.add_argument("--out", help="markdown report (default: reproductions/<REF>-<commit>.md)")
    p.add_argument("--keep", action="store_true", help="keep the scratch clone")


def _args_compare(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_a")
    p.add_argument("run_b")
    p.add_argument("--out", help="markdown file (default: comparisons/<A>-vs-<B>/compare.md, plots beside it)")


def _args_export_hf(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a checkpoint folder, e.g. checkpoints/step_00000200")
    p.add_argument("out_dir")
    p.add_argument("--tokenizer-dir", help="default: the tokenizer folder recorded in the checkpoint")


def _args_publish(p: argparse.ArgumentParser) -> None:
    p.add_argument("repo_id", help="the hub repository, e.g. my-org/pico-decoder-tiny")
    p.add_argument("--branch", help="default: report.run_name (pico-train's branch is the run name)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--dry-run", action="store_true", help="print the commits, push nothing")


def _args_export_analysis(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir", help="a new folder (or an earlier export), used as pico-analyze's --run_path")
    p.add_argument(
        "--checkpoint-dir",
        help="the run's checkpoint folder (default: training.checkpoint_dir; "
        "a run in the store: .pico/runs/<fingerprint>)",
    )


def _args_import_pico(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "source",
        help="pico-train's runs/<run>/checkpoints/step_<N> (or latest), or an HF "
        "checkpoint folder (config.json + model.safetensors / pytorch_model.bin)",
    )
    p.add_argument("--out", help="checkpoint folder to write into (default: training.checkpoint_dir)")


COMMANDS: dict[str, Command] = {
    # the DVC stages, in pipeline order
    "build-embedded": Command(
        _stage(STAGE_MODULES["embedded_data"]),
        "build the offline default corpus (Dolma + Paloma format) from CPython's own docs",
    ),
    "tokenizer": Command(_stage(STAGE_MODULES["tokenizer"]), "train or fetch the tokenizer"),
    "tokenize": Command(
        _stage(STAGE_MODULES["tokenize"]), "pack training documents into rows and evaluation documents into windows"
    ),
    "train": Command(_train, "train (resumes from the newest checkpoint of the same run)"),
    "evaluate": Command(_stage(STAGE_MODULES["evaluate"]), "Paloma-style metrics of the final checkpoint"),
    "report": Command(_stage(STAGE_MODULES["report"]), "Markdown report with plots"),
    # around the stages
    "check-params": Command(lambda args, params: print("params OK"), "validate params.yaml and exit"),
    "plan": Command(
        _plan,
        "what the run will cost: tokens, epochs, FLOPs, projected wall time, disk, "
        "device-hours (calibrated on this machine)",
        _args_plan,
    ),
    "checkpoints": Command(
        _checkpoints, "list the run's checkpoints and the runs in the run store; remove one of those", _args_checkpoints
    ),
    "queue": Command(
        _queue,
        "the DVC experiment queue's stale rows (running with no process, failed); "
        "--clean drops them (their runs continue when queued again)",
        _args_queue,
        False,
    ),
    "preset": Command(_preset, "run a named preset (presets/*.yaml) as a DVC experiment", _args_preset),
    "fork": Command(
        _fork, "a new DVC experiment from another's checkpoint at a step, under changed params", _args_fork
    ),
    "ablate": Command(
        _ablate,
        "the one-change-at-a-time ladder from A to B over seeds, as DVC experiments; "
        "a verdict per change against seed noise",
        _args_ablate,
    ),
    "reproduce": Command(
        _reproduce,
        "rerun a past run (git revision or DVC experiment) in a scratch clone "
        "and report, per metric, how close it came",
        _args_reproduce,
        False,
    ),
    "compare": Command(
        _compare, "the training log of two runs (git revisions or DVC experiments) side by side", _args_compare, False
    ),
    "export-hf": Command(
        _export_hf, "write a checkpoint as a Hugging Face LlamaForCausalLM folder", _args_export_hf, False
    ),
    "publish": Command(
        _publish, "push the run's checkpoints to the hub as pico-train does (one commit each)", _args_publish
    ),
    "export-analysis": Command(
        _export_analysis,
        "lay a run's learning dynamics out for pico-analyze "
        "(OUT/checkpoints/step_<N>/learning_dynamics, "
        "OUT/training_config.yaml)",
        _args_export_analysis,
    ),
    "import-pico": Command(
        _import_pico,
        "a pico-train run folder or Hugging Face checkpoint as a checkpoint of "
        "this pipeline, for `pico evaluate` and the report",
        _args_import_pico,
    ),
}


def describe(err: BaseException) -> str:
    """An error as one line that is never empty: the message, or the error's kind when it has none."""
    if isinstance(err, KeyError) and len(err.args) == 1:
        text = str(err.args[0])  # str(KeyError) is the repr of its key
    else:
        text = str(err).strip()
    if isinstance(err, OSError) and err.filename and err.strerror and text.startswith("[Errno"):
        text = f"{err.filename}: {err.strerror.lower()}"  # not "[Errno 2] No such file or directory: 'x'"
    elif isinstance(err, OSError) and err.filename and str(err.filename) not in text:
        text = f"{err.filename}: {text}"
    return text or f"{type(err).__name__} (no message)"


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="pico", description="pico pipeline stages and tools")
    top.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        command.arguments(sub.add_parser(name, help=command.help))
    return top


def _params(args: argparse.Namespace, command: Command) -> Params | None:
    if not command.needs_params and not Path(args.params).exists():
        return None
    return load_params(args.params)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    command = COMMANDS[args.command]
    try:
        return command.run(args, _params(args, command)) or 0
    except ConfigError as err:
        print(f"error in {args.command}: {describe(err)}", file=sys.stderr)
        return 2
    except TrainingInterrupted as err:  # stopped on request, progress saved: not an error, not a success
        print(f"train: {err}", file=sys.stderr)
        return err.exit_code
    except EXPECTED as err:
        print(f"error in {args.command}: {describe(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{args.command}: interrupted", file=sys.stderr)
        return 130


def console() -> None:
    """The ``pico`` command (and ``python -m pico.cli``, which torchrun starts per rank)."""
    code = main()
    # interpreter shutdown would garbage-collect torch's and pydantic's objects one by one, ~0.5 s of
    # CPU per command: what is frozen is left to the process's end
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    console()
