"""Static PNG plots of a run (they render offline, unlike `dvc plots show` HTML, whose JavaScript
comes from a CDN). Saved without a version stamp, so equal data gives equal bytes."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pico.fsutil import atomic_open  # noqa: E402


def _save(fig, path: Path) -> None:
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100, metadata={"Software": None})  # no version stamp: stable bytes
    plt.close(fig)


def make_plots(train: list[dict], evals: list[dict], out_dir: Path) -> list[str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    made = []
    if train:
        steps = [r["step"] for r in train]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(steps, [r["loss_mean"] for r in train], label="train loss (mean over log interval)")
        if evals:
            ax.plot([r["step"] for r in evals], [r["loss"] for r in evals], "o-", label="eval loss (token-level, macro)")
        ax.set_xlabel("step"), ax.set_ylabel("cross-entropy (nats/token)"), ax.legend(), ax.grid(alpha=0.3)
        _save(fig, out_dir / "loss.png")
        made.append("loss.png")
        for key, label, log in (("lr", "learning rate", False), ("grad_norm", "gradient norm (pre-clip)", True)):
            fig, ax = plt.subplots(figsize=(7, 3))
            ax.plot(steps, [r[key] for r in train])
            if key == "grad_norm":
                ax.plot(steps, [r["grad_norm_max"] for r in train], alpha=0.5, label="max over interval")
                ax.legend()
            ax.set_xlabel("step"), ax.set_ylabel(label), ax.grid(alpha=0.3)
            if log:
                ax.set_yscale("log")
            _save(fig, out_dir / f"{key}.png")
            made.append(f"{key}.png")
    if evals:
        fig, ax = plt.subplots(figsize=(7, 4))
        steps = [r["step"] for r in evals]
        for key in sorted(k for k in evals[0] if k.startswith("token_perplexity/")):
            ax.plot(steps, [r[key] for r in evals], "o-", label=key.split("/", 1)[1])
        ax.plot(steps, [r["token_perplexity"] for r in evals], "k--", label="macro")
        ax.set_xlabel("step"), ax.set_ylabel("token-level perplexity"), ax.set_yscale("log")
        ax.legend(), ax.grid(alpha=0.3)
        _save(fig, out_dir / "eval_perplexity.png")
        made.append("eval_perplexity.png")
    return made
