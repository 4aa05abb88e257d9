"""``pico reproduce REF``: rerun a past run in a scratch checkout and say how close it came, and why.

REF is a git revision or a DVC experiment name. The run is redone from what REF recorded — its
params.yaml, dvc.yaml and code — in a fresh clone at another path (so the rerun also checks that
nothing depends on where a checkout lives), with ``dvc repro --force --no-commit`` (every stage
reruns; nothing is added to the DVC cache). ``--from STAGE`` reruns only STAGE and what follows,
taking the earlier stages' outputs from this repository's DVC cache by their recorded hashes.

Then, per headline metric: the committed value, the rerun's, the difference and a verdict —
*identical* (the same bits), *within noise* (no further than the rerun moves when only the seed
changes: ``--noise-seeds N`` trains and evaluates N more times with seeds +1…+N to measure that, and
records the spread in ``reproductions/noise.json`` for comparisons of single runs, pico.noise), or
*not reproduced* — and the first output that differs, in pipeline order: a stage output's hash
(the tokens? the tokenizer?), then the first logged training loss that differs (which step). The
machines of both runs (``metrics/run_info.json``) are set side by side, since CPU numerics differ
across processors unless ``training.numerics`` is ``portable``. Written as markdown
(``reproductions/<REF>-<commit>.md`` by default, outside every stage's outputs); the scratch
clone is removed afterwards unless ``--keep``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pico import noise, runs, train_metrics
from pico.config import parse_params
from pico.errors import PipelineError
from pico.fsutil import atomic_write_text
from pico.train_metrics import parse_csv

# (label, file kind, key path): the figures a verdict is given for
HEADLINE = (
    ("macro token perplexity", "eval", ("macro", "token_perplexity")),
    ("macro bits per byte", "eval", ("macro", "bits_per_byte")),
    ("macro eval loss", "eval", ("macro", "loss")),
    ("pico per-seq mean (macro)", "eval", ("macro", "pico_mean_seq_perplexity")),
    ("final train loss (interval mean)", "summary", ("final_loss_mean",)),
    ("best eval loss", "summary", ("best_eval_loss",)),
)


class ReproduceError(PipelineError):
    """The rerun could not be made (the message says which command failed and where)."""


@dataclass
class Verdict:
    label: str
    committed: float | None
    rerun: float | None
    noise: float | None
    verdict: str = field(init=False)

    def __post_init__(self) -> None:
        a, b = self.committed, self.rerun
        if a is None or b is None:
            self.verdict = "missing"
        elif a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)):
            self.verdict = "identical"
        elif self.noise is not None and abs(b - a) <= self.noise:
            self.verdict = "within noise"
        else:
            self.verdict = "not reproduced"


@dataclass
class Reproduction:
    ref: str
    commit: str
    verdicts: list[Verdict]
    first_difference: str
    stages: list[tuple[str, str]]  # (stage, identical | differs | ...)
    machines: tuple[dict, dict]
    noise_seeds: int
    seconds: float
    markdown: str = ""
    replay: str | None = None  # why the rerun cannot replay the committed run exactly (its code lineage), if so

    @property
    def ok(self) -> bool:
        return all(v.verdict in ("identical", "within noise") for v in self.verdicts)


def _run(cmd: list[str], cwd: Path, what: str) -> str:
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise ReproduceError(f"{what} failed in {cwd}: `{' '.join(cmd)}` exited {proc.returncode}: {tail[0]}")
    return proc.stdout


def resolve(repo: Path, ref: str) -> str:
    """REF as a commit: a git revision, or a DVC experiment (refs/exps/…/<name>)."""
    try:
        return runs.commit_of(runs.resolve_revision(ref, repo), repo)
    except ValueError as err:
        raise ReproduceError(str(err)) from None


def _reader(folder: Path) -> Any:
    return lambda p: runs.read_file(p, None, folder)


def _lookup(data: dict | None, keys: tuple[str, ...]) -> float | None:
    for k in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(k)
    return data if isinstance(data, (int, float)) and not isinstance(data, bool) else None


@dataclass
class RunFiles:
    """The records of one run, as text: what is compared."""

    lock: dict
    eval: dict
    summary: dict
    train: list[dict]
    run_info: dict

    @classmethod
    def read(cls, get: Any, params: dict) -> RunFiles:
        p = parse_params(params, "params.yaml")
        m = Path(p.training.metrics_dir)

        def js(path: Path | str) -> dict:
            text = get(str(path))
            try:
                return json.loads(text) if text else {}
            except ValueError:
                return {}

        return cls(
            lock=yaml.safe_load(get("dvc.lock") or "{}") or {},
            eval=js(p.evaluation.out),
            summary=js(train_metrics.summary_path(m)),
            train=parse_csv(get(str(m / train_metrics.TRAIN_CSV))),
            run_info=js(m / train_metrics.RUN_INFO_JSON),
        )


def stage_hashes(lock: dict) -> dict[str, dict[str, str]]:
    """Per stage (in dvc.lock's order, the pipeline's), each output's hash."""
    return {
        name: {o["path"]: o.get("md5") or o.get("hash", "") for o in stage.get("outs", [])}
        for name, stage in (lock.get("stages") or {}).items()
    }


def first_difference(before: RunFiles, after: RunFiles) -> tuple[str, list[tuple[str, str]]]:
    """The first output that differs, in pipeline order, and each stage's outcome."""
    old, new = stage_hashes(before.lock), stage_hashes(after.lock)
    stages, first = [], None
    for name, outs in old.items():
        changed = [p for p, h in outs.items() if new.get(name, {}).get(p) != h]
        stages.append((name, "identical" if not changed else f"differs: {', '.join(changed)}"))
        if changed and first is None:
            first = f"stage `{name}`: {', '.join(f'`{p}`' for p in changed)}"
    steps = {int(r["step"]): r for r in before.train}
    for row in after.train:
        old_row = steps.get(int(row["step"]))
        if old_row is not None and old_row.get("loss") != row.get("loss"):
            where = (
                f"the first logged training loss that differs is at step {int(row['step'])} "
                f"({old_row['loss']!r} committed, {row['loss']!r} rerun)"
            )
            return (f"{first}; {where}" if first else where), stages
    if first:
        return first, stages
    return "none: every output hash and every logged loss is the same", stages


def _noise_runs(scratch: Path, params: dict, seeds: int, runner: Any) -> list[RunFiles]:
    """Train and evaluate again with seeds +1…+N beside the rerun (same data, own folders)."""
    found = []
    for k in range(1, seeds + 1):
        raw = copy.deepcopy(params)
        folder = f"noise/seed_plus_{k}"
        raw["training"].update(
            seed=raw["training"].get("seed", 0) + k,
            checkpoint_dir=f"{folder}/checkpoints",
            metrics_dir=f"{folder}/metrics",
        )
        raw.setdefault("evaluation", {})["out"] = f"{folder}/eval.json"
        path = scratch / f"{folder}.params.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        for stage in ("train", "evaluate"):
            runner(
                [sys.executable, "-m", "pico.cli", "--params", str(path), stage],
                scratch,
                f"noise run (seed +{k}) {stage}",
            )
        found.append(RunFiles.read(_reader(scratch), raw))
    return found


def curve_verdict(committed: list[dict], rerun: list[dict], noise: list[list[dict]]) -> Verdict:
    """The logged training loss at every step, judged at the step where the two runs differ most."""

    def losses(rows: list[dict]) -> dict[int, float]:
        return {int(r["step"]): r["loss"] for r in rows if "loss" in r}

    old, new, others = losses(committed), losses(rerun), [losses(n) for n in noise]
    common = sorted(set(old) & set(new))
    label = "training loss, every logged step (largest difference)"
    if not common:
        return Verdict(label, None, None, None)
    worst = max(common, key=lambda k: abs(new[k] - old[k]))
    spreads = [abs(other[k] - new[k]) for other in others for k in common if k in other]
    return Verdict(f"{label}: step {worst}", old[worst], new[worst], max(spreads) if spreads else None)


def _value(files: RunFiles, kind: str, keys: tuple[str, ...]) -> float | None:
    return _lookup(files.eval if kind == "eval" else files.summary, keys)


def reproduce(
    ref: str,
    repo: str | Path = ".",
    from_stage: str | None = None,
    noise_seeds: int = 1,
    out: str | Path | None = None,
    keep: bool = False,
    runner: Any = _run,
) -> Reproduction:
    repo = Path(repo).resolve()
    started = time.perf_counter()
    commit = resolve(repo, ref)
    params = yaml.safe_load(runs.read_file("params.yaml", commit, repo) or "null")
    if not isinstance(params, dict):
        raise ReproduceError(f"{ref} has no params.yaml")
    committed = RunFiles.read(lambda p: runs.read_file(p, commit, repo), params)
    if not committed.lock:
        raise ReproduceError(f"{ref} has no dvc.lock: nothing was recorded to reproduce")
    made = Path(tempfile.mkdtemp(prefix="pico-reproduce-"))
    scratch = made / "checkout"
    try:
        runner(["git", "clone", "--quiet", "--no-checkout", "--shared", str(repo), str(scratch)], made, "git clone")
        runner(["git", "checkout", "--quiet", "--detach", commit], scratch, "git checkout")
        cache = _run(["dvc", "cache", "dir"], repo, "dvc cache dir").strip()
        runner(["dvc", "cache", "dir", "--local", cache], scratch, "dvc cache dir")
        if from_stage:
            earlier = list(stage_hashes(committed.lock))
            if from_stage not in earlier:
                raise ReproduceError(f"--from {from_stage}: not a stage of {ref} ({', '.join(earlier)})")
            before = earlier[: earlier.index(from_stage)]
            if before:
                runner(["dvc", "checkout", *before], scratch, f"restoring {', '.join(before)} from the DVC cache")
            runner(["dvc", "repro", "--force", "--no-commit", "--downstream", from_stage], scratch, "dvc repro")
        else:
            runner(["dvc", "repro", "--force", "--no-commit"], scratch, "dvc repro")
        rerun = RunFiles.read(_reader(scratch), params)
        noise_runs = _noise_runs(scratch, params, noise_seeds, runner) if noise_seeds else []
    finally:
        if not keep:
            shutil.rmtree(made, ignore_errors=True)  # only the scratch folder this call made
    verdicts = []
    for label, kind, keys in HEADLINE:
        base = _value(rerun, kind, keys)
        spread = [
            abs(v - base) for v in (_value(n, kind, keys) for n in noise_runs) if v is not None and base is not None
        ]
        verdicts.append(Verdict(label, _value(committed, kind, keys), base, max(spread) if spread else None))
    verdicts.append(curve_verdict(committed.train, rerun.train, [n.train for n in noise_runs]))
    if noise_runs:  # the seed noise of this configuration, for comparisons of single runs (pico.noise)
        values = {
            keys[-1]: [v for v in (_value(f, kind, keys) for f in (rerun, *noise_runs)) if v is not None]
            for _, kind, keys in HEADLINE
        }
        noise.record(repo / noise.NOISE_JSON, ref, time.strftime("%Y-%m-%d"), noise_seeds, values)
    first, stages = first_difference(committed, rerun)
    result = Reproduction(
        ref,
        commit,
        verdicts,
        first,
        stages,
        (committed.run_info.get("machine", {}), rerun.run_info.get("machine", {})),
        noise_seeds,
        time.perf_counter() - started,
        replay=replay_limit(committed.summary.get("code_lineage") or [], ref),
    )
    result.markdown = render(result, str(made) if keep else None)
    path = Path(out) if out else repo / "reproductions" / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', ref)}-{commit[:10]}.md"
    atomic_write_text(path, result.markdown)
    return result


def replay_limit(segments: list[dict], ref: str) -> str | None:
    """Why a rerun at ``ref`` cannot replay a run that a pipeline upgrade continued (pico.lineage):
    every step of the rerun trains under the code at ``ref``, the last segment's."""
    if len(segments) < 2:
        return None
    earlier = ", ".join(f"`{seg['code_version']}` from step {seg['step']}" for seg in segments[:-1])
    return (
        f"the committed run trained under {len(segments)} versions of the training code ({earlier}; "
        f"`{segments[-1]['code_version']}` from step {segments[-1]['step']}); this rerun trains every step under "
        f"the code at {ref}, so it cannot replay steps before {segments[-1]['step'] + 1} exactly: a difference "
        "there may be the upgrade's, not irreproducibility"
    )


def _num(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.6g}" if abs(x) < 1e5 else f"{x:.4e}"


def _machine(m: dict) -> str:
    if not m:
        return "not recorded"
    return (
        f"{m.get('cpu')}, {m.get('cores')} cores, torch {m.get('torch')}, ATen {m.get('aten_cpu_capability')}, "
        f"MKL_CBWR {m.get('mkl_cbwr') or 'unset'}, numerics {m.get('numerics')}, device {m.get('device')}"
    )


def render(r: Reproduction, kept: str | None) -> str:
    verdict = "reproduced" if r.ok else "NOT reproduced"
    lines = [
        f"# Reproduction of {r.ref} (`{r.commit[:10]}`): {verdict}",
        "",
        f"- **Reran**: every stage from {r.ref}'s params, code and data recipe, in a fresh clone at another path "
        f"({r.seconds / 60:.1f} min on this machine)",
        f"- **First difference**: {r.first_difference}",
        *([f"- **Cannot replay exactly**: {r.replay}"] if r.replay else []),
        f"- **Committed on**: {_machine(r.machines[0])}",
        f"- **Rerun on**: {_machine(r.machines[1])}",
        "",
    ]
    lines += [
        "| metric | committed | rerun | difference | noise (seed spread) | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for v in r.verdicts:
        diff = (v.rerun - v.committed) if v.rerun is not None and v.committed is not None else None
        rel = f" ({diff / v.committed:+.2%})" if diff and v.committed else ""
        lines.append(
            f"| {v.label} | {_num(v.committed)} | {_num(v.rerun)} | {_num(diff)}{rel} | "
            f"{_num(v.noise) if v.noise is not None else 'not measured'} | **{v.verdict}** |"
        )
    lines += ["", "## Stage outputs (hashes in dvc.lock)", ""] + [f"- `{s}`: {o}" for s, o in r.stages]
    lines += [
        "",
        "Verdicts: *identical* = the same bits; *within noise* = the rerun differs from the committed "
        f"value by no more than it differs from {r.noise_seeds} rerun(s) with another seed "
        "(training is chaotic: any rounding difference grows like a change of seed); otherwise *not reproduced*.",
    ]
    if r.noise_seeds == 0:
        lines.append("No noise was measured (`--noise-seeds 0`), so any difference reads *not reproduced*.")
    if kept:
        lines += ["", f"The scratch checkout was kept: `{kept}`."]
    return "\n".join(lines) + "\n"
