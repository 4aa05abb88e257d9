"""What a person watching the flow in the Prefect UI sees: the train stage's live view (its log
lines, a progress artifact, the training log after each evaluation), the report and metrics
artifacts at the end, and the events automations react to. Publishing never stops a run."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from pico.config import Params, load_params
from pico.train_metrics import TrainSummary, parse_eval, parse_progress, read_summary


class LiveView:
    """The train stage's output, as it is printed, turned into what a person watching the run in
    the Prefect UI needs: every line in the task's log; a progress artifact (``pico-train-progress``:
    step / max_steps, tokens/s, ETA) updated at each of the trainer's log intervals; and the
    training log (``pico-training-log``, ``pico.live``) published anew after each evaluation. A
    failure to publish is logged and never stops the stage."""

    def __init__(self, repo: Path, logger: Any):
        self.repo, self.logger = repo, logger
        self.progress_id = None
        self.log_published = False
        self.diminishing_said = False  # the event is emitted once per run

    def __call__(self, line: str) -> None:
        self.logger.info(line)
        progress = parse_progress(line)
        if progress is not None:
            self._publish(self._progress, progress)
        elif parse_eval(line) is not None:  # the trainer writes the evaluation's row before this line
            self._publish(self._training_log)

    def close(self) -> None:
        """After the stage succeeded: the log once more, with how it ended (completed, early-stopped).
        Not after a failure or a stop: the flow's own state says that, and a stopping service
        (SIGTERM) must not wait on the server."""
        if self.log_published:
            self._publish(self._training_log)

    def _publish(self, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception as err:  # the run matters more than its artifacts
            self.logger.warning("could not publish a live artifact: %s", str(err).splitlines()[0][:200])

    def _progress(self, p: dict[str, Any]) -> None:
        done = round(100.0 * p["step"] / p["max_steps"], 2)
        text = (
            f"step {p['step']:,} of {p['max_steps']:,} · {p['tokens_per_s']:,.0f} tokens/s · ETA {p['eta']} · "
            f"training loss {p['loss']:.4f}"
        )
        if self.progress_id is None:
            self.progress_id = create_progress_artifact(done, key="pico-train-progress", description=text)
        else:
            update_progress_artifact(self.progress_id, done, description=text)

    def _training_log(self) -> None:
        from pico.live import training_log

        self.log_published = True
        params = load_params(self.repo / "params.yaml")
        # the metric files' paths are relative to the repository, not to this process's folder (which
        # stays put: other threads of the flow may rely on it)
        params = params.model_copy(
            update={
                "training": params.training.model_copy(
                    update={"metrics_dir": str(self.repo / params.training.metrics_dir)}
                )
            }
        )
        md = training_log(params)
        create_markdown_artifact(md, key="pico-training-log", description="training log, refreshed at each evaluation")
        self._diminishing_returns(params)

    def _diminishing_returns(self, params: Params) -> None:
        """``pico.training.diminishing-returns``, once per run, when the forecast says finishing
        gains less than ``forecast.min_gain`` (pico.forecast)."""
        from pico import forecast

        made = forecast.read(params.training.metrics_dir)
        latest = (made or {}).get("latest") or {}
        if self.diminishing_said or not latest.get("diminishing_returns"):
            return
        self.diminishing_said = True
        summary = read_summary(params.training.metrics_dir)
        final = latest["targets"][0]
        emit(
            "pico.training.diminishing-returns",
            summary,
            params,
            at_step=latest["step"],
            predicted_final_loss=final["loss"],
            gain_of_finishing=latest["gain_of_finishing"],
            min_gain=params.forecast.min_gain,
            cost_left=latest.get("cost_left", {}).get("max_steps"),
        )
        self.logger.warning("diminishing returns: %s", forecast.line(latest))


@task(name="publish", cache_policy=NO_CACHE)
def publish(repo: str, params: Params, outcome: dict[str, str], experiment: str | None) -> None:
    """The report (plots embedded, since the UI cannot resolve the report's relative image links)
    and the final metrics as a rounded table."""
    root = Path(repo)
    report = root / params.report.out_dir / "report.md"
    if report.exists():
        create_markdown_artifact(
            embed_images(report.read_text(), report.parent),
            key="pico-report",
            description=f"training report{f' of {experiment}' if experiment else ''}",
        )
    eval_path = root / params.evaluation.out
    if eval_path.exists():
        ev = json.loads(eval_path.read_text())
        table = [
            {
                "source": name,
                "token perplexity": _round(m["token_perplexity"]),
                "bits per byte": _round(m["bits_per_byte"]),
                "pico per-seq mean perplexity": _round(m["pico_mean_seq_perplexity"]),
                "tokens": m.get("tokens"),
            }
            for name, m in [*ev["sources"].items(), ("macro (mean over sources)", ev["macro"])]
        ]
        stages = ", ".join(f"{k} {v}" for k, v in outcome.items())
        create_table_artifact(
            table,
            key="pico-metrics",
            description=f"checkpoint step {ev['step']} ({ev.get('checkpoint_kind', 'latest')}); {stages}",
        )


def _round(x: Any, digits: int = 4) -> Any:
    try:
        return float(f"{float(x):.{digits}g}")
    except (TypeError, ValueError):
        return x


def embed_images(markdown: str, folder: Path) -> str:
    """Relative PNG links (``![x](plots/loss.png)``) as data URIs, so the markdown shows its plots
    where the files are not reachable (the Prefect UI)."""

    def inline(m: re.Match) -> str:
        path = folder / m["path"]
        if not path.is_file():
            return m[0]
        return f"![{m['alt']}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"

    return re.sub(r"!\[(?P<alt>[^\]]*)\]\((?P<path>[^):]+\.png)\)", inline, markdown)


def emit(kind: str, summary: TrainSummary | None, params: Params, **payload: Any) -> None:
    """A Prefect event about the run (``pico.training.diverged`` / ``completed`` / ``early-stopped``,
    ``pico.metric.pathology``) for automations to react to; Prefect relates it to this flow run and
    its deployment. The run is the resource, named by its fingerprint."""
    fingerprint = summary.fingerprint if summary else "unknown"
    body = {
        **(
            {
                "step": summary.step,
                "max_steps": summary.max_steps,
                "reason": summary.reason,
                "last_good_checkpoint": summary.last_good_checkpoint,
            }
            if summary
            else {}
        ),
        **payload,
    }
    emit_event(
        event=kind,
        resource={"prefect.resource.id": f"pico.run.{fingerprint}", "prefect.resource.name": params.report.run_name},
        payload=body,
    )
