"""How far the forecast (pico.forecast) can be trusted: for each finished run, the forecast made at
50 % of training from its own evaluations, against the eval loss it ended at — is the final value
inside the 95 % interval, and is the forecast nearer than the naive one (no further progress)?

    python benchmarks/forecast_backtest.py [REVISION_OR_EXPERIMENT ...] [--prefix abl-] [--at 0.5]

With no names, every DVC experiment of this repository (filtered by ``--prefix``) and HEAD. Reads
each run's committed eval_history.csv, params and summary (pico.runs); trains nothing. The forecast
is recomputed from the evaluations, so a run made before forecast.json existed back-tests too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pico import forecast, runs  # noqa: E402


def experiments(prefix: str) -> list[str]:
    names = sorted({r.rsplit("/", 1)[-1] for r in runs.experiment_refs(REPO) if r.count("/") >= 4})
    return [n for n in names if n.startswith(prefix)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="git revisions or DVC experiment names (default: all + HEAD)")
    ap.add_argument("--prefix", default="", help="only experiments whose name starts with this")
    ap.add_argument("--at", type=float, default=0.5, help="the fraction of training the forecast is made at")
    args = ap.parse_args()
    names = args.names or ["HEAD", *experiments(args.prefix)]
    checks = {}
    for name in names:
        record = runs.load_run(name)
        if record.summary is None or record.summary.status != "completed" or not record.evals:
            print(f"{name}: skipped (no finished run)", file=sys.stderr)
            continue
        o = record.params.optim
        label = f"{name} (lr {o.lr:g} {o.schedule}, {len(record.evals)} evals)"
        checks[label] = forecast.backtest_run(
            record.evals, record.params, record.summary.effective_batch_tokens, args.at
        )
    print("\n".join(forecast.backtest_table(checks, args.at)))


if __name__ == "__main__":
    main()
