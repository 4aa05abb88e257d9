"""Static PNG plots of a run, and of several runs together (``pico compare``). They render offline,
unlike `dvc plots show` HTML, whose JavaScript comes from a CDN, and are saved without a version
stamp, so equal data gives equal bytes.

Every plot carries a title with the run's name, a legend for each line, labels that are not
clipped (tight bounding box), and a second x axis in tokens where steps are the unit, since runs
with different batch sizes compare per token, not per step. The gradient-norm plot draws the
clipping threshold.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from pico.fsutil import atomic_open


def _save(fig, path: Path) -> None:
    with atomic_open(path, "wb") as fh:  # no version stamp: stable bytes; tight box: no clipped labels
        fig.savefig(fh, format="png", dpi=100, metadata={"Software": None}, bbox_inches="tight")


def _figure(width: float, height: float):
    """A figure and its axes without pyplot: no global figure registry to close, no GUI backend
    chosen, and ~0.4 s less start-up per report (savefig renders PNG with Agg)."""
    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()


def _tokens_axis(ax, tokens_per_step: float | None) -> None:
    """A second x axis on top in tokens seen (steps x tokens per step)."""
    if tokens_per_step:
        top = ax.secondary_xaxis("top", functions=(lambda s: s * tokens_per_step, lambda t: t / tokens_per_step))
        top.set_xlabel("tokens seen")


def make_plots(
    train: list[dict],
    evals: list[dict],
    out_dir: Path,
    run_name: str = "",
    tokens_per_step: float | None = None,
    clip: float | None = None,
) -> list[str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    made = []
    who = f" — {run_name}" if run_name else ""
    if train:
        steps = [r["step"] for r in train]
        fig, ax = _figure(7, 4)
        ax.plot(steps, [r["loss_mean"] for r in train], label="train loss (mean over log interval, dropout on)")
        if evals:
            ax.plot(
                [r["step"] for r in evals], [r["loss"] for r in evals], "o-", label="eval loss (token-level, macro)"
            )
            seen = [r for r in evals if "seen_loss" in r]
            if seen:
                ax.plot(
                    [r["step"] for r in seen],
                    [r["seen_loss"] for r in seen],
                    "s--",
                    label="already-seen training rows (eval mode)",
                )
        ax.set_title(f"Loss{who}"), ax.set_xlabel("optimizer step"), ax.set_ylabel("cross-entropy (nats/token)")
        ax.legend(), ax.grid(alpha=0.3)
        _tokens_axis(ax, tokens_per_step)
        _save(fig, out_dir / "loss.png")
        made.append("loss.png")

        for name, title, ylabel in (
            ("lr", "Learning rate", "learning rate"),
            ("grad_norm", "Gradient norm", "L2 norm"),
        ):
            fig, ax = _figure(7, 3)
            if name == "lr":
                ax.plot(steps, [r["lr"] for r in train], label="learning rate (at the logged step)")
            else:
                ax.plot(steps, [r["grad_norm"] for r in train], label="gradient norm before clipping (logged step)")
                ax.plot(steps, [r["grad_norm_max"] for r in train], alpha=0.5, label="max over the log interval")
                if clip is not None:
                    ax.axhline(clip, color="red", linestyle="--", linewidth=1, label=f"clipping threshold ({clip:g})")
                ax.set_yscale("log")
            ax.set_title(f"{title}{who}"), ax.set_xlabel("optimizer step"), ax.set_ylabel(ylabel)
            ax.legend(), ax.grid(alpha=0.3)
            _tokens_axis(ax, tokens_per_step)
            _save(fig, out_dir / f"{name}.png")
            made.append(f"{name}.png")
    if evals:
        fig, ax = _figure(7, 4)
        steps = [r["step"] for r in evals]
        for key in sorted(k for k in evals[0] if k.startswith("token_perplexity/")):
            ax.plot(steps, [r[key] for r in evals], "o-", label=f"source {key.split('/', 1)[1]}")
        ax.plot(steps, [r["token_perplexity"] for r in evals], "k--", label="macro (mean over sources)")
        ax.set_title(f"Evaluation perplexity{who}"), ax.set_xlabel("optimizer step")
        ax.set_ylabel("token-level perplexity"), ax.set_yscale("log"), ax.legend(), ax.grid(alpha=0.3)
        _tokens_axis(ax, tokens_per_step)
        _save(fig, out_dir / "eval_perplexity.png")
        made.append("eval_perplexity.png")
    return made


def compare_plots(runs: list[tuple[str, list[dict], list[dict], float]], out_dir: Path) -> list[str]:
    """Several runs' curves together, by tokens seen: ``runs`` = (name, train rows, eval rows,
    tokens per step) each."""
    out_dir.mkdir(parents=True, exist_ok=True)
    made = []
    for name, title, pick, ylabel, log in (
        ("loss.png", "Training and evaluation loss by tokens seen", None, "cross-entropy (nats/token)", False),
        (
            "eval_perplexity.png",
            "Evaluation perplexity (macro) by tokens seen",
            "token_perplexity",
            "token-level perplexity",
            True,
        ),
    ):
        fig, ax = _figure(8, 4.5)
        for i, (run, train, evals, per_step) in enumerate(runs):
            color = f"C{i}"
            if pick is None and train:
                ax.plot(
                    [r["step"] * per_step for r in train],
                    [r["loss_mean"] for r in train],
                    color=color,
                    alpha=0.6,
                    label=f"{run}: train loss (interval mean)",
                )
            if evals:
                key = pick or "loss"
                ax.plot(
                    [r["step"] * per_step for r in evals],
                    [r[key] for r in evals],
                    "o-",
                    color=color,
                    label=f"{run}: eval {'loss' if pick is None else 'perplexity'}",
                )
        ax.set_title(title), ax.set_xlabel("tokens seen"), ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.legend(fontsize=8), ax.grid(alpha=0.3)
        _save(fig, out_dir / name)
        made.append(name)
    return made
