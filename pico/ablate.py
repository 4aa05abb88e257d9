"""``pico ablate A B``: which of the changes from A to B made the difference, told apart from seed noise.

A and B are presets (``presets/*.yaml``), params files, git revisions or DVC experiments. The
params that differ are the changes (coupled keys count as one: micro-batch and accumulation are
the effective batch, dropout and attention dropout are dropout; ``report.*`` and output paths are
not changes). The ladder is A, A + each single change, B and, with ``--leave-one-out``, B − each
change; every rung with ``--seeds N`` seeds (``training.seed`` + 0…N−1). Each rung-seed is a DVC
experiment named by its params (``abl-<hash>-s<i>``), so two rungs with the same params (B − c is
A + the other change when there are two) are one run, an experiment that already exists is never
rerun, and a ladder killed mid-way continues where it stopped when run again (the unfinished runs
continue from their checkpoints in the run store). They are queued (``dvc exp run --queue``) and
run by one ``dvc queue start`` worker, so ``dvc queue status`` and the Prefect flow see them.

Written: ``reports/ablation-<A>-<B>.md`` and ``.csv``: per change, its effect on the headline
figures (token perplexity, bits per byte, final training loss; ``--at-step K``: the eval loss at
step K) with the seed spread and a verdict — *helps*, *hurts*, *inside seed noise* — by the one
rule of pico.noise, the seed noise pooled over the whole ladder; and, from the leave-one-out pass,
whether a change's effect depends on the others (an interaction). Before anything runs, the
ladder is priced (``pico plan``'s calibration per distinct speed: device-hours and their price)
and ``--budget H`` refuses a ladder over H device-hours.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pico import forecast, lineage, noise, presets, runs
from pico.config import Params, flatten, parse_params, with_overrides
from pico.errors import ConfigError, PipelineError
from pico.fsutil import atomic_write_json, atomic_write_text, file_name
from pico.paramsfile import read_params_file
from pico.queue import dvc_command

# keys that move together: one change
GROUPS = {
    "effective batch": ("training.micro_batch_size", "training.grad_accum_steps"),
    "dropout": ("model.dropout", "model.attention_dropout"),
}
Progress = Callable[[int, int], None]  # (runs finished, runs to finish): the Prefect flow's progress bar
NOT_CHANGES = (*lineage.NOT_CHANGES, "training.seed")  # a rung's seeds are the ladder's own axis
PREFIX = "abl-"
EVALUATE = "evaluate"  # the last stage a rung needs


@dataclass
class Change:
    name: str
    values: dict[str, Any]  # key -> B's value
    before: dict[str, Any]  # key -> A's value

    def describe(self) -> str:
        return ", ".join(f"{k} {json.dumps(self.before[k])} -> {json.dumps(v)}" for k, v in self.values.items())


@dataclass
class Rung:
    label: str  # "A", "A + lr", "B", "B - lr"
    kind: str  # base | single | target | leave-one-out
    change: str | None
    overrides: dict[str, Any]  # on top of A
    names: list[str] = field(default_factory=list)  # its experiments, one per seed


def resolve(source: str, workspace_raw: dict, where: Path = Path(".")) -> Params:
    """A preset name, a params file, a git revision or a DVC experiment, as params."""
    if (presets.presets_dir() / f"{source}.yaml").is_file():
        return with_overrides(workspace_raw, presets.load(source)["overrides"], f"preset {source}")[1]
    try:
        return parse_params(runs.load_params_at(source), f"params of {source}")
    except ValueError as err:
        raise ConfigError(f"pico ablate: {source}: not a preset ({', '.join(presets.available())}), {err}") from None


def changes_between(a: Params, b: Params) -> list[Change]:
    fa, fb = flatten(a.model_dump(mode="json")), flatten(b.model_dump(mode="json"))
    keys = [k for k in fb if fa.get(k) != fb[k] and not k.startswith(NOT_CHANGES)]
    out = []
    for name, members in GROUPS.items():
        if any(k in keys for k in members):
            out.append(Change(name, {k: fb[k] for k in members}, {k: fa[k] for k in members}))
            keys = [k for k in keys if k not in members]
    out += [Change(k.split(".", 1)[1], {k: fb[k]}, {k: fa[k]}) for k in keys]
    return out


def ladder(changes: list[Change], leave_one_out: bool) -> list[Rung]:
    every = {k: v for c in changes for k, v in c.values.items()}
    rungs = [Rung("A", "base", None, {})]
    rungs += [Rung(f"A + {c.name}", "single", c.name, dict(c.values)) for c in changes]
    rungs.append(Rung("B", "target", None, every))
    if leave_one_out and len(changes) > 1:
        for c in changes:
            rest = {k: v for k, v in every.items() if k not in c.values}
            rungs.append(Rung(f"B - {c.name}", "leave-one-out", c.name, rest))
    return rungs


def experiment_name(params: Params, seed: int) -> str:
    """Named by what the run computes (its params but the report's and the output paths): equal
    params, one experiment, whichever ladder asks for it."""
    dump = params.model_dump(mode="json")
    dump.pop("report")
    for section, key in (("training", "checkpoint_dir"), ("training", "metrics_dir"), ("evaluation", "out")):
        dump[section].pop(key)
    digest = hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest()[:10]
    return f"{PREFIX}{digest}-s{seed}"


@dataclass
class Ladder:
    a: str
    b: str
    seeds: int
    changes: list[Change]
    rungs: list[Rung]
    params: dict[str, Params]  # experiment name -> its params
    overrides: dict[str, dict[str, Any]]  # experiment name -> -S overrides against the workspace
    reused: dict[str, str] = field(default_factory=dict)  # experiment name -> the commit whose run it is (HEAD)

    @property
    def slug(self) -> str:
        return f"{file_name(Path(self.a).stem)}-{file_name(Path(self.b).stem)}"


def build(a: str, b: str, seeds: int, leave_one_out: bool, params_path: Path = Path("params.yaml")) -> Ladder:
    raw = read_params_file(params_path)
    workspace = parse_params(raw, str(params_path))
    pa, pb = resolve(a, raw), resolve(b, raw)
    changes = changes_between(pa, pb)
    if not changes:
        raise ConfigError(f"pico ablate: {a} and {b} have the same params: nothing to ablate")
    rungs = ladder(changes, leave_one_out)
    base = presets.overrides_between(workspace, pa)
    by_name: dict[str, Params] = {}
    overrides: dict[str, dict[str, Any]] = {}
    for rung in rungs:
        for i in range(seeds):
            wanted = {**base, **rung.overrides, "training.seed": pa.training.seed + i}
            wanted = {k: v for k, v in wanted.items() if not k.startswith("report.")}
            params = with_overrides(raw, wanted, f"ablation rung {rung.label}")[1]
            name = experiment_name(params, i)
            rung.names.append(name)
            by_name[name] = params
            overrides[name] = presets.overrides_between(workspace, params)
    return Ladder(a, b, seeds, changes, rungs, by_name, overrides, reuse_head(by_name))


def reuse_head(by_name: dict[str, Params]) -> dict[str, str]:
    """A rung-seed whose params are HEAD's, which HEAD ran and evaluated: that committed run."""
    try:
        head = parse_params(runs.load_params_at("HEAD"), "params.yaml at HEAD")
        evaluated = runs.read_file(head.evaluation.out, "HEAD")
    except (ValueError, ConfigError):
        return {}
    if not evaluated:
        return {}
    key = experiment_name(head, 0).rsplit("-s", 1)[0]
    return {name: "HEAD" for name in by_name if name.rsplit("-s", 1)[0] == key}


# ---- running ----
def finished(repo: Path = Path(".")) -> set[str]:
    """Experiments DVC has saved (git refs refs/exps/…/<name>): a finished rung-seed."""
    return {r.rsplit("/", 1)[-1] for r in runs.experiment_refs(repo)}


def queued(repo: Path = Path(".")) -> dict[str, str]:
    """Names in the DVC queue -> their status (Queued, Running, Failed, ...)."""
    out = dvc_command(repo, "queue", "status").stdout
    rows = {}
    for line in out.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 4 and not line.startswith("Worker"):
            rows[parts[1]] = parts[-1] if parts[-1] in ("Queued", "Running", "Failed", "Success") else parts[-2]
    return rows


def run_ladder(
    lad: Ladder, repo: Path = Path("."), run: bool = True, poll_s: float = 1.0, progress: Progress | None = None
) -> list[str]:
    """Queue each rung-seed not yet finished (nor queued and alive), start one worker and wait for
    them all (``progress(done, of)`` at each one finished); returns the names queued now."""
    from pico.queue import stale_tasks

    done = finished(repo) | set(lad.reused)
    # only this ladder's own dead or failed tasks: other queue rows are left to their owners (`pico queue`)
    stale = {t.name for t in stale_tasks(repo) if t.name in lad.params}
    if stale:
        dvc_command(repo, "queue", "remove", *sorted(stale))  # their runs continue from the store when queued again
    waiting = {n for n, s in queued(repo).items() if s in ("Queued", "Running")} - stale
    names = sorted(lad.params, key=lambda n: list(lad.params).index(n))
    todo = [n for n in names if n not in done and n not in waiting]
    for i, name in enumerate(todo, 1):
        print(f"queueing {name} ({i}/{len(todo)}): {_describe(lad.overrides[name])}", flush=True)
        # up to the evaluate stage: the ladder reads train and evaluate's metrics, not the report
        cmd = ["exp", "run", "--queue", "-n", name, *presets.set_args(lad.overrides[name]), EVALUATE]
        proc = dvc_command(repo, *cmd)
        if proc.returncode != 0:
            raise PipelineError(f"pico ablate: queueing {name} failed: {_last_line(proc)}")
    left = [n for n in names if n not in done]
    if not run or not left:
        return todo
    print(f"running {len(left)} experiments with one queue worker (`dvc queue status` shows them)", flush=True)
    with open(Path(repo) / ".dvc" / "tmp" / "ablate-worker.log", "ab") as log:  # the worker inherits it
        subprocess.run(["dvc", "queue", "start"], cwd=repo, stdout=log, stderr=log, check=False)
    _wait(lad, repo, left, poll_s, progress)
    return todo


def _wait(lad: Ladder, repo: Path, names: list[str], poll_s: float, progress: Progress | None) -> None:
    asked, said = time.time(), 0
    while True:
        done = finished(repo)
        missing = [n for n in names if n not in done]
        if len(names) - len(missing) > said:
            said = len(names) - len(missing)
            print(f"ablation: {said}/{len(names)} experiments done", flush=True)
            if progress:
                progress(said, len(names))
        if not missing:
            return
        if time.time() - asked > 20:  # `dvc queue status` costs ~1.5 s of CPU: asked now and then
            asked, status = time.time(), queued(repo)
            failed = [n for n in missing if status.get(n) == "Failed"]
            if failed:
                raise PipelineError(
                    f"pico ablate: {', '.join(failed)} failed (`dvc queue logs {failed[0]}`); rerun "
                    "`pico ablate` with the same arguments to continue the ladder"
                )
            if not any(status.get(n) in ("Queued", "Running") for n in missing):
                subprocess.run(["dvc", "queue", "start"], cwd=repo, capture_output=True, check=False)
        time.sleep(poll_s)


# ---- results ----
def figures(record: runs.RunRecord, at_step: int | None) -> dict[str, float | None]:
    values = noise.headline_values(record)
    if at_step is not None:
        row = next((e for e in record.evals if int(e["step"]) == at_step), None)
        values["loss_at_step"] = float(row["loss"]) if row else None
    return values


def metrics(at_step: int | None) -> list[tuple[str, str]]:
    out = [(label, key) for label, key, _ in noise.HEADLINE if key != "loss"]
    return out + ([(f"eval loss at step {at_step}", "loss_at_step")] if at_step is not None else [])


@dataclass
class Effect:
    change: str
    metric: str
    judged: noise.Judgement
    last: noise.Judgement | None = None  # B against B − change (leave-one-out)
    interaction: str | None = None


def analyse(lad: Ladder, values: dict[str, dict[str, float | None]], at_step: int | None) -> list[Effect]:
    by_rung = {r.label: r for r in lad.rungs}
    effects = []
    for label, key in metrics(at_step):
        log = noise.METRICS.get(key, (True, False))[1]
        groups = [[values[n][key] for n in r.names if values[n][key] is not None] for r in lad.rungs]
        unique = {tuple(r.names): g for r, g in zip(lad.rungs, groups)}  # a run counted once
        pooled = noise.SeedNoise.pooled(list(unique.values()), log)

        def seeds(rung: str, key: str = key) -> list[float | None]:
            return [values[n][key] for n in by_rung[rung].names]

        rows = [(c.name, "A", f"A + {c.name}") for c in lad.changes] + [("all changes (A -> B)", "A", "B")]
        for change, base, with_it in rows:
            judged = noise.judge(key, seeds(base), seeds(with_it), pooled)
            effect = Effect(change, label, judged)
            if f"B - {change}" in by_rung:
                effect.last = noise.judge(key, seeds(f"B - {change}"), seeds("B"), pooled)
                effect.interaction = _interaction(
                    [seeds(base), seeds(with_it), seeds(f"B - {change}"), seeds("B")], log, pooled
                )
            effects.append(effect)
    return effects


def _interaction(groups: list[list[float | None]], log: bool, pooled: noise.SeedNoise | None) -> str:
    """Does the change do on A what it does on B without it? A difference of differences — (A + c −
    A) − (B − (B − c)) — against the same pooled seed noise."""
    xs = [[math.log(v) if log else v for v in g if v is not None and (v > 0 or not log)] for g in groups]
    if pooled is None or any(not g for g in xs):
        return "not measured"
    m = [sum(g) / len(g) for g in xs]
    dd = (m[1] - m[0]) - (m[3] - m[2])
    margin = noise.t975(pooled.df) * pooled.sd * math.sqrt(sum(1 / len(g) for g in xs))
    return "additive (inside seed noise)" if abs(dd) <= margin else f"interacts ({dd:+.3g} beyond ±{margin:.3g})"


def render(
    lad: Ladder, effects: list[Effect], values: dict, price: list[str], date: str, checks: dict | None = None
) -> tuple[str, str]:
    lines = [
        f"# Ablation: {lad.a} -> {lad.b}",
        "",
        f"- **Date**: {date}; {lad.seeds} seeds per rung; {len(lad.params)} runs "
        f"({len(lad.rungs)} rungs, rungs with equal params share their runs)",
        *price,
        "",
        "## The changes",
        "",
        *[f"- **{c.name}**: {c.describe()}" for c in lad.changes],
        "",
        "## Effects, one change at a time (on A), against seed noise",
        "",
        "| change | metric | A | with the change | effect | verdict | added last (B vs B − it) | interaction |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in effects:
        j = e.judged
        last = e.last.describe() if e.last else "—"
        lines.append(
            f"| {e.change} | {e.metric} | {noise._num(j.a)} | {noise._num(j.b)} | {noise._change_text(j)} | "
            f"**{j.verdict}** | {last} | {e.interaction or '—'} |"
        )
    basis = next((e.judged.basis for e in effects if e.judged.margin is not None), "none")
    lines += [
        "",
        f"Verdicts: pico.noise's rule — a two-sided t-test at 95 % on the means over seeds (perplexities as "
        f"logs), the seed noise pooled over every rung of the ladder ({basis}). *Inside seed noise* means "
        "changing only the seed moves the figure as much; it does not prove the change does nothing.",
        "",
        "## Runs",
        "",
        "| rung | experiments |",
        "|---|---|",
        *[f"| {r.label} | {', '.join(_run_name(lad, n) for n in r.names)} |" for r in lad.rungs],
    ]
    if checks:
        lines += [
            "",
            "## The forecast, back-tested on every run of the ladder",
            "",
            "Each run's forecast (pico.forecast, from its own evaluations) made half-way, against where it ended.",
            "",
            *forecast.backtest_table({_run_name(lad, n): c for n, c in checks.items()}),
        ]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["change", "metric", "a_mean", "b_mean", "delta", "relative", "noise_margin", "verdict", "noise_basis",
                "added_last_verdict", "interaction"])  # fmt: skip
    for e in effects:
        j = e.judged
        w.writerow([e.change, e.metric, j.a, j.b, j.delta, j.relative, j.margin, j.verdict, j.basis,
                    e.last.verdict if e.last else "", e.interaction or ""])  # fmt: skip
    return "\n".join(lines) + "\n", buf.getvalue()


def price_ladder(lad: Ladder, done: set[str]) -> dict[str, Any]:
    """Device-hours of the runs still to train, from ``pico plan``'s calibration on this machine
    (one calibration per distinct speed: model, batch, precision, compile, dropout)."""
    from pico.plan import make_plan

    hours, cache = 0.0, {}
    todo = [n for n in lad.params if n not in done]
    for name in todo:
        p = lad.params[name]
        key = json.dumps(
            [p.model.model_dump(mode="json"), p.training.micro_batch_size, p.training.grad_accum_steps,
             p.training.precision, p.training.compile, p.training.max_steps], sort_keys=True,
        )  # fmt: skip
        if key not in cache:
            cache[key] = make_plan(p).device_hours or 0.0
        hours += cache[key]
    price = next(iter(lad.params.values())).report.device_hour_price
    cost = f" (${hours * price:,.2f} at {price}/device-hour)" if price else ""
    line = f"{len(todo)} runs to train of {len(lad.params)}: {hours:.3g} device-hours on this machine{cost}"
    return {"runs": len(todo), "device_hours": hours, "cost": hours * price if price else None, "line": line}


def ablate(
    a: str,
    b: str,
    seeds: int = 2,
    leave_one_out: bool = False,
    at_step: int | None = None,
    budget: float | None = None,
    run: bool = True,
    out_dir: Path = Path("reports"),
    date: str | None = None,
    progress: Progress | None = None,
) -> Path | None:
    """The ladder from ``a`` to ``b``: priced, queued, run (unless ``run`` is false) and judged;
    returns the report's path (None: queued only). ``progress(done, of)``: each run finished."""
    if seeds < 1:
        raise ConfigError("pico ablate: --seeds must be at least 1")
    lad = build(a, b, seeds, leave_one_out)
    print(f"{len(lad.changes)} changes from {a} to {b}:")
    for c in lad.changes:
        print(f"  {c.name}: {c.describe()}")
    done = finished() | set(lad.reused)
    for name, rev in lad.reused.items():
        print(f"{name}: the run {rev} holds (same params)")
    price = price_ladder(lad, done)
    print(f"ladder: {len(lad.rungs)} rungs x {seeds} seeds; {price['line']}")
    priced = _first_price(lad, price)
    if budget is not None and price["device_hours"] > budget:
        raise PipelineError(
            f"pico ablate: the ladder needs {price['device_hours']:.3g} device-hours, over --budget {budget:g}; "
            "fewer seeds, fewer changes or a larger budget"
        )
    run_ladder(lad, run=run, progress=progress)
    if not run and set(lad.params) - finished() - set(lad.reused):
        print("queued; `dvc queue start` runs them, then `pico ablate` again with the same arguments writes the report")
        return None
    records = {name: runs.load_run(lad.reused.get(name, name)) for name in lad.params}
    values = {name: figures(r, at_step) for name, r in records.items()}
    effects = analyse(lad, values, at_step)
    checks = {name: _backtest(r) for name, r in records.items()}
    price_lines = [f"- **Priced before it ran**: {priced['line']} ({priced['date']})"] if priced else []
    trained = [r for name, r in records.items() if name not in lad.reused]
    hours = sum(i.get("wall_s") or 0.0 for r in trained for i in r.run_info.get("invocations", [])) / 3600
    price_lines.append(f"- **Took**: {hours:.3g} device-hours of training wall time over its {len(trained)} runs")
    md, table = render(lad, effects, values, price_lines, date or time.strftime("%Y-%m-%d"), checks)
    path = out_dir / f"ablation-{lad.slug}.md"
    atomic_write_text(path, md)
    atomic_write_text(path.with_suffix(".csv"), table)
    print(f"wrote {path} and {path.with_suffix('.csv')}")
    return path


def _backtest(record: runs.RunRecord) -> dict[str, Any] | None:
    if record.summary is None or not record.params.forecast.enabled:
        return None
    return forecast.backtest_run(record.evals, record.params, record.summary.effective_batch_tokens)


def _first_price(lad: Ladder, price: dict[str, Any]) -> dict[str, Any] | None:
    """The price of the ladder when its runs were first queued (kept in ``.dvc/tmp``, DVC's scratch
    folder, beside the queue): a rerun prices only what is left, the report shows the first."""
    path = Path(".dvc") / "tmp" / f"ablation-{lad.slug}-price.json"
    try:
        first = json.loads(path.read_text())
        if first["runs_of"] == sorted(lad.params):
            return first
    except (OSError, ValueError, KeyError):
        pass
    if price["runs"] < len(set(lad.params) - set(lad.reused)):  # some ran before this price: not the ladder's
        return None
    first = {**price, "runs_of": sorted(lad.params), "date": time.strftime("%Y-%m-%d %H:%M")}
    atomic_write_json(path, first)
    return first


def _run_name(lad: Ladder, name: str) -> str:
    return f"`{lad.reused[name]}` (same params as `{name}`)" if name in lad.reused else f"`{name}`"


def _describe(overrides: dict[str, Any]) -> str:
    shown = {k: v for k, v in overrides.items() if not k.startswith(("report.", "training.restart_from"))}
    return ", ".join(f"{k}={v}" for k, v in shown.items()) or "the workspace's params"


def _last_line(proc: subprocess.CompletedProcess) -> str:
    return ((proc.stderr or proc.stdout).strip().splitlines() or ["no output"])[-1]
