import copy
import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pico import checkpoint, evaluate, report, train
from pico.config import parse_params
from pico.errors import TrainingDiverged
from pico.optim import EagerAdamW
from tests.helpers import REPO, write_params


def read_csv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_train_evaluate_report_end_to_end(prepared, tmp_path):
    summary = train.run(prepared, progress=False)
    assert summary.status == "completed" and summary.step == 12
    assert summary.effective_batch_rows == 8 and summary.processes == 1 and summary.parallelism == "single"
    rows = read_csv(tmp_path / "metrics/train.csv")
    assert [int(r["step"]) for r in rows] == [2, 4, 6, 8, 10, 12]
    assert float(rows[0]["lr"]) > 0
    assert float(rows[-1]["loss_mean"]) < float(rows[0]["loss_mean"])
    evals = read_csv(tmp_path / "metrics/eval_history.csv")
    assert [int(r["step"]) for r in evals] == [0, 6, 12]
    assert "token_perplexity/alpha" in evals[0]
    ckpts = checkpoint.list_checkpoints(tmp_path / "checkpoints")
    assert [p.name for p in ckpts] == ["step_00000008", "step_00000012"]  # keep_checkpoints 2
    state = checkpoint.read_state(ckpts[-1])
    assert state["position"] == 12 * 8 and state["config"]["optim"]["lr"] == prepared.optim.lr

    result = evaluate.run(prepared)
    assert result["step"] == 12
    assert set(result["sources"]) == {"alpha", "beta"}
    final_eval_loss = float(evals[-1]["loss"])
    assert result["macro"]["loss"] == pytest.approx(final_eval_loss, rel=1e-9)  # same code, same numbers
    for m in result["sources"].values():
        assert m["seq_mean_over_token_ratio"] == pytest.approx(m["pico_mean_seq_perplexity"] / m["token_perplexity"])

    md = report.run(prepared).read_text()
    assert "# Training log: test run" in md
    assert "token perplexity" in md and "| alpha |" in md
    for section in ("## What we did", "## The result", "## What happened", "## What we do next"):
        assert section in md
    for plot in ("loss", "lr", "grad_norm", "eval_perplexity"):
        assert (tmp_path / "reports/plots" / f"{plot}.png").stat().st_size > 1000
        assert f"plots/{plot}.png" in md


def test_gradient_clipping_is_real(params_dict, prepared, tmp_path):
    train.run(prepared, progress=False)
    unclipped = (tmp_path / "checkpoints/step_00000012/model.safetensors").read_bytes()
    raw = copy.deepcopy(params_dict)
    raw["optim"]["max_grad_norm"] = 1.0e-3
    raw["training"]["checkpoint_dir"] = str(tmp_path / "ck2")
    raw["training"]["metrics_dir"] = str(tmp_path / "m2")
    train.run(parse_params(raw), progress=False)
    assert (tmp_path / "ck2/step_00000012/model.safetensors").read_bytes() != unclipped
    logged = [float(r["grad_norm"]) for r in read_csv(tmp_path / "m2/train.csv")]
    assert min(logged) > 1.0e-3  # the pre-clip norm is what is logged


def test_same_params_same_bytes(params_dict, prepared, tmp_path):
    train.run(prepared, progress=False)
    raw = copy.deepcopy(params_dict)
    raw["training"]["checkpoint_dir"] = str(tmp_path / "again")
    raw["training"]["metrics_dir"] = str(tmp_path / "again-metrics")
    train.run(parse_params(raw), progress=False)
    for name in ("model.safetensors", "trainer.pt"):
        assert (tmp_path / "checkpoints/step_00000012" / name).read_bytes() == (
            tmp_path / "again/step_00000012" / name
        ).read_bytes()
    for name in ("train.csv", "eval_history.csv", "train_summary.json"):
        assert (tmp_path / "metrics" / name).read_bytes() == (tmp_path / "again-metrics" / name).read_bytes()


def test_other_run_is_never_resumed_and_changing_back_finds_the_first(params_dict, prepared, tmp_path, capsys):
    first = train.run(prepared, progress=False)
    raw = copy.deepcopy(params_dict)
    raw["optim"]["lr"] = 1.0e-3
    summary = train.run(parse_params(raw), progress=False)
    out = capsys.readouterr().out
    assert f"showed run {first.fingerprint} (step 12); it stays in the run store" in out, out
    assert "dvc exp apply EXP" in out and f"This run ({summary.fingerprint}) starts at step 0" in out
    assert summary.step == 12
    state = checkpoint.read_state(checkpoint.latest_checkpoint(tmp_path / "checkpoints"))
    assert state["config"]["optim"]["lr"] == 1.0e-3
    assert [int(r["step"]) for r in read_csv(tmp_path / "metrics/train.csv")] == [2, 4, 6, 8, 10, 12]
    assert checkpoint.latest_checkpoint(tmp_path / ".pico/runs" / first.fingerprint).name == "step_00000012"
    # the first params again: their run is in the store, finished; nothing is trained twice
    again = train.run(prepared, progress=False)
    assert "this run already ended (completed)" in capsys.readouterr().out
    assert again.fingerprint == first.fingerprint
    assert (
        checkpoint.read_state(checkpoint.latest_checkpoint(tmp_path / "checkpoints"))["fingerprint"]
        == first.fingerprint
    )


def test_finished_run_is_a_no_op_and_partial_checkpoints_are_removed(prepared, tmp_path, capsys):
    train.run(prepared, progress=False)
    before = (tmp_path / "checkpoints/step_00000012/model.safetensors").read_bytes()
    partial = tmp_path / "checkpoints/.tmp-step_00000016-999"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    (tmp_path / "metrics/train.csv").unlink()  # DVC deletes non-persistent outputs before a rerun
    train.run(prepared, progress=False)
    out = capsys.readouterr().out
    assert "removed an incomplete checkpoint" in out and "resuming from" in out
    assert not partial.exists()
    assert (tmp_path / "checkpoints/step_00000012/model.safetensors").read_bytes() == before
    assert len(read_csv(tmp_path / "metrics/train.csv")) == 6  # rebuilt from the checkpoint's history


def test_checkpoint_loads_without_pickle(prepared, tmp_path):
    train.run(prepared, progress=False)
    path = checkpoint.latest_checkpoint(tmp_path / "checkpoints")
    blob = torch.load(path / "trainer.pt", weights_only=True)
    assert set(blob) >= {"optimizer", "scheduler", "torch_rng"}


def test_bf16_autocast_path_and_mfu_column(params_dict, prepared, tmp_path):
    raw = copy.deepcopy(params_dict)
    raw["training"].update(precision="bf16", peak_flops=1.0e11)
    summary = train.run(parse_params(raw), progress=False)
    assert summary.status == "completed" and math.isfinite(summary.final_loss)
    perf = read_csv(tmp_path / "metrics/perf.csv")
    assert all(0 < float(r["mfu"]) < 1 for r in perf)
    assert all(float(r["model_flops_per_s"]) > 0 for r in perf)
    assert all(r["gpu_peak_allocated_mib"] == r["gpu_peak_reserved_mib"] == "" for r in perf)  # no GPU here


# ---- the GPU hot loop, exercised on CPU: reads only when due, non-finite steps skipped on the device ----


def _deferred(monkeypatch, params_dict, **training):
    """Params and a Trainer patched to use fused AdamW (as on a GPU), so losses are read only when due."""
    monkeypatch.setattr(train.Trainer, "fused_optimizer", staticmethod(lambda device: True))
    raw = copy.deepcopy(params_dict)
    raw["training"].update(training)
    return parse_params(raw)


def test_hot_loop_reads_the_host_only_when_something_is_due(monkeypatch, params_dict, prepared):
    params = _deferred(monkeypatch, params_dict, log_every=5, eval_every=10, checkpoint_every=10, eval_at_start=False)
    reads, steps = [], []
    real_read, real_fb = train.Interval.read, train.Trainer.forward_backward

    def read(self, watch):
        reads.append(self.pending[-1][0] if self.pending else None)
        return real_read(self, watch)

    def forbidden(*a, **k):
        raise AssertionError("host sync in the hot loop")

    def forward_backward(self):  # no .item()/.tolist()/float()/bool() of a tensor while computing a step
        steps.append(1)
        with monkeypatch.context() as m:
            for name in ("item", "tolist", "__float__", "__bool__"):
                m.setattr(torch.Tensor, name, forbidden)
            return real_fb(self)

    monkeypatch.setattr(train.Interval, "read", read)
    monkeypatch.setattr(train.Trainer, "forward_backward", forward_backward)
    summary = train.run(params, progress=False)
    assert summary.status == "completed" and len(steps) == 12
    assert reads == [5, 10, 12]
    rows = read_csv(Path(params.training.metrics_dir) / "train.csv")
    assert [int(r["step"]) for r in rows] == [5, 10, 12] and all(math.isfinite(float(r["loss"])) for r in rows)


def test_a_nan_read_late_was_never_applied(monkeypatch, params_dict, prepared):
    """NaN at step 6, read at step 8: fused AdamW skipped step 6 on the device, so the diverged run's
    weights are those of a run whose step 6 did nothing (asserted through the optimizer's step count)."""
    params = _deferred(monkeypatch, params_dict, log_every=4, eval_every=100, checkpoint_every=4)
    monkeypatch.setenv("PICO_FAULT_NAN_AT_STEP", "6")
    seen = {}
    real_diverge = train.Trainer.diverge

    def diverge(self, why):
        seen["adam_steps"] = {int(st["step"]) for st in self.optimizer.state.values()}
        seen["step"] = self.state.step
        return real_diverge(self, why)

    monkeypatch.setattr(train.Trainer, "diverge", diverge)
    with pytest.raises(TrainingDiverged, match="training loss is nan at step 6"):
        train.run(params, progress=False)
    assert seen["step"] == 7 and seen["adam_steps"] == {6}  # steps 1-7 ran, AdamW applied 6 of them
    summary = json.loads((Path(params.training.metrics_dir) / "train_summary.json").read_text())
    assert summary["status"] == "diverged" and summary["last_good_checkpoint"] == "step_00000004"


@pytest.mark.parametrize("adamw", [torch.optim.AdamW, EagerAdamW])
def test_nonfinite_guard_skips_a_fused_adamw_step(adamw):
    p = torch.nn.Parameter(torch.ones(3))
    opt = adamw([p], lr=0.1, weight_decay=0.1, fused=True)
    p.grad = torch.full((3,), math.nan)
    opt.found_inf = train.nonfinite(torch.tensor(math.nan, dtype=torch.float64), torch.tensor(1.0))
    opt.step()
    assert torch.equal(p.detach(), torch.ones(3))
    p.grad = torch.ones(3)
    opt.found_inf = train.nonfinite(torch.tensor(2.0, dtype=torch.float64), torch.tensor(1.0))
    opt.step()
    assert (p.detach() < 1).all()


def test_compiled_trunk_trains_like_eager_with_unchanged_checkpoints(params_dict, prepared, tmp_path):
    """training.compile: the trunk is one compiled graph, the loss stays eager, evaluation runs eager
    (its shapes vary), and the checkpoint's parameter names are the eager model's. One block: the
    test's cost is inductor's cold compile, which grows with the trunk."""
    raw = copy.deepcopy(params_dict)
    raw["model"]["n_layers"] = 1
    eager = train.run(parse_params(raw), progress=False)
    eager_rows = read_csv(tmp_path / "metrics/train.csv")
    raw["training"].update(
        compile=True, checkpoint_dir=str(tmp_path / "ckpt_compiled"), metrics_dir=str(tmp_path / "metrics_compiled")
    )
    compiled = train.run(parse_params(raw), progress=False)
    assert compiled.status == eager.status == "completed"
    rows = read_csv(tmp_path / "metrics_compiled/train.csv")
    for a, b in zip(rows, eager_rows):
        assert math.isclose(float(a["loss"]), float(b["loss"]), rel_tol=1e-3)
    from safetensors import safe_open

    keys = lambda d: set(safe_open(str(d / "step_00000012/model.safetensors"), "pt").keys())  # noqa: E731
    assert keys(tmp_path / "ckpt_compiled") == keys(tmp_path / "checkpoints")


@pytest.mark.parametrize("damage", ["flipped_weights", "truncated_trainer", "state_not_json", "every_checkpoint"])
def test_a_damaged_checkpoint_falls_back_to_the_last_sound_one_and_ends_identical(prepared, tmp_path, capsys, damage):
    first = train.run(prepared, progress=False)  # 12 steps; checkpoints 8 and 12 are kept
    ckpts = tmp_path / "checkpoints"  # hard links to the run's folder in the store: damage reaches both
    store = tmp_path / ".pico/runs" / first.fingerprint
    want_weights = (ckpts / "step_00000012/model.safetensors").read_bytes()
    want_csv = (tmp_path / "metrics/train.csv").read_text()
    newest = ckpts / "step_00000012"
    if damage == "flipped_weights":
        data = bytearray((newest / "model.safetensors").read_bytes())
        data[-200:-136] = bytes(b ^ 0xFF for b in data[-200:-136])
        (newest / "model.safetensors").write_bytes(bytes(data))
    elif damage == "truncated_trainer":
        (newest / "trainer.pt").write_bytes((newest / "trainer.pt").read_bytes()[:1000])
    elif damage == "state_not_json":
        (newest / "state.json").write_text('{"step": 12, "fingerp')
    else:
        for p in (newest, ckpts / "step_00000008"):
            (p / "trainer.pt").write_bytes(b"")
    capsys.readouterr()
    summary = train.run(prepared, progress=False)
    out = capsys.readouterr().out
    assert summary.status == "completed" and summary.step == 12
    assert "skipped a damaged checkpoint" in out
    assert (
        ("resuming from" not in out)
        if damage == "every_checkpoint"
        else f"resuming from {store / 'step_00000008'}" in out
    )
    assert (ckpts / "step_00000012/model.safetensors").read_bytes() == want_weights
    assert (tmp_path / "metrics/train.csv").read_text() == want_csv
    assert (store.with_name(f"{store.name}.quarantine") / "step_00000012/QUARANTINED.txt").is_file()


def test_a_batch_larger_than_the_data_is_refused_before_work(params_dict, prepared, tmp_path):
    """micro_batch_size: 1e9 used to hang; a bound that needs the data is checked at stage start."""
    raw = copy.deepcopy(params_dict)
    raw["training"]["micro_batch_size"] = 10**9
    with pytest.raises(
        ValueError,
        match=r"an optimizer step takes 2000000000 rows .* holds \d+ rows of 32 tokens; "
        r"lower training.micro_batch_size",
    ):
        train.run(parse_params(raw), progress=False)
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "metrics").exists()


def test_an_attention_kernel_that_cannot_run_here_is_refused_before_work(params_dict, prepared, tmp_path):
    raw = copy.deepcopy(params_dict)
    raw["training"]["attention_kernel"] = "cudnn"
    with pytest.raises(ValueError, match=r"^training.attention_kernel=cudnn needs CUDA, not cpu"):
        train.run(parse_params(raw), progress=False)
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "metrics").exists()


def test_the_math_attention_kernel_trains_like_auto(params_dict, prepared, tmp_path):
    raw = copy.deepcopy(params_dict)
    raw["training"].update(max_steps=4, attention_kernel="math", checkpoint_dir=str(tmp_path / "math"))
    math_run = train.run(parse_params(raw), progress=False)
    raw["training"].update(attention_kernel="auto", checkpoint_dir=str(tmp_path / "auto"))
    auto_run = train.run(parse_params(raw), progress=False)
    assert math_run.final_loss == pytest.approx(auto_run.final_loss, abs=1e-5)


def test_an_evaluation_is_on_disk_before_its_line_is_printed(monkeypatch, params_dict, prepared, tmp_path):
    """The Prefect flow publishes the training log when it sees an evaluation's line (flows.pipeline
    LiveView), reading the metric files: the row must be there by then, the start-of-run evaluation
    and one at a step with no log line included (the files are otherwise written on a thread)."""
    raw = copy.deepcopy(params_dict)
    raw["training"].update(max_steps=9, log_every=4, eval_every=3, eval_at_start=True)
    on_disk = {}

    def write(line, *a, **kw):
        if ": eval loss " in line:
            step = int(line.split()[1].rstrip(":"))
            on_disk[step] = [int(r["step"]) for r in read_csv(tmp_path / "metrics/eval_history.csv")]

    monkeypatch.setattr(train.tqdm, "write", write)
    train.run(parse_params(raw), progress=False)
    assert on_disk == {0: [0], 3: [0, 3], 6: [0, 3, 6], 9: [0, 3, 6, 9]}


def test_unwritable_metrics_still_save_the_checkpoint(monkeypatch, prepared, tmp_path):
    """A metrics folder that stops taking writes fails the run at the next checkpoint, which is
    still written (its state.json holds the whole history), so no step is lost."""
    from pico import train_metrics

    real = train_metrics.write

    def failing(metrics_dir, history, summary=None, wall_s=None):
        if len(history["train"]) >= 2:  # writes up to the first log line (step 2) succeed
            raise OSError(28, "No space left on device")
        real(metrics_dir, history, summary, wall_s)

    monkeypatch.setattr(train_metrics, "write", failing)
    with pytest.raises(OSError, match=r"could not write the metrics in .*metrics: .*No space left on device"):
        train.run(prepared, progress=False)
    saved = checkpoint.latest_checkpoint(tmp_path / "checkpoints")
    state = checkpoint.read_state(saved)
    assert saved.name == "step_00000004" and [r["step"] for r in state["history"]["train"]] == [2, 4]
    # the summary is rewritten at every log line, so a report made mid-run sees where the run is
    mid = train_metrics.read_summary(tmp_path / "metrics")
    assert mid.status == "running" and mid.step == 2 and mid.tokens == 2 * 8 * 32 and mid.eta_s > 0
    head = json.loads((tmp_path / "metrics/headline.json").read_text())  # what `dvc exp show` lists mid-run
    assert head["status"] == "running" and head["step"] == 2 and head["ppl"] > 1 and head["wall_h"] > 0
    md = report.run(prepared).read_text()  # a report made mid-run says where the run is
    assert "in progress at step 2 of 12, ETA" in md
    monkeypatch.setattr(train_metrics, "write", real)
    assert train.run(prepared, progress=False).status == "completed"  # resumes from step 4
    assert [int(r["step"]) for r in read_csv(tmp_path / "metrics/train.csv")] == [2, 4, 6, 8, 10, 12]


def test_a_resume_inside_a_log_interval_logs_the_same_means(params_dict, prepared, tmp_path):
    """Checkpoints every 3 steps, log lines every 2: resuming from step 9 lands inside the interval
    8–10, whose loss mean and max gradient norm must still cover steps 9 and 10 (20 random SIGKILLs
    in benchmarks/kill_resume.py found train.csv differing when they did not)."""
    import shutil

    raw = copy.deepcopy(params_dict)
    raw["training"].update(checkpoint_every=3, log_every=2, keep_checkpoints=10)
    params = parse_params(raw)
    train.run(params, progress=False)
    want = (tmp_path / "metrics/train.csv").read_text()
    want_weights = (tmp_path / "checkpoints/step_00000012/model.safetensors").read_bytes()
    shutil.rmtree(tmp_path / "checkpoints/step_00000012")  # as if killed after step 9's checkpoint
    assert train.run(params, progress=False).status == "completed"
    assert (tmp_path / "metrics/train.csv").read_text() == want
    assert (tmp_path / "checkpoints/step_00000012/model.safetensors").read_bytes() == want_weights


def test_raising_max_steps_and_enabling_early_stop_continues_the_run(params_dict, prepared, tmp_path, capsys):
    """The training log's own next steps on a running run ("train longer", "add early stopping")
    continue it from its newest checkpoint — no step repeated or lost, nothing deleted — with the
    lr schedule stretched from where it was, recorded in the checkpoint's lineage."""
    import shutil

    from pico.schedule import lr_lambda

    raw = copy.deepcopy(params_dict)
    raw["training"].update(keep_checkpoints=10)  # checkpoints every 4, log lines every 2, eval every 6
    first = parse_params(raw)
    store = tmp_path / ".pico/runs" / train.run(first, progress=False).fingerprint  # where the run trains
    for folder in (store, tmp_path / "checkpoints"):  # as if killed after step 8's checkpoint
        shutil.rmtree(folder / "step_00000012")
    kept = {p.name: (p / "model.safetensors").read_bytes() for p in checkpoint.list_checkpoints(store)}
    assert list(kept) == ["step_00000004", "step_00000008"]

    raw["training"]["max_steps"] = 20
    raw["early_stop"] = {"enabled": True, "patience": 50}
    longer = parse_params(raw)
    capsys.readouterr()
    summary = train.run(longer, progress=False)
    out = capsys.readouterr().out
    assert "resuming from" in out and "step_00000008" in out
    lr8 = first.optim.lr * lr_lambda(first)(8)  # the lr step 9 would have run at under the old plan
    floor = first.optim.lr * first.optim.min_lr_ratio
    assert (
        f"continued at step 8 under a changed plan: training.max_steps 12 -> 20, early_stop.enabled false -> true, "
        f"early_stop.patience 3 -> 50; the lr decays (cosine) from {lr8:.3g} at step 8 to {floor:.3g} at step 20"
    ) in out
    assert summary.status == "completed" and summary.step == 20
    assert [int(r["step"]) for r in read_csv(tmp_path / "metrics/train.csv")] == list(range(2, 21, 2))
    assert [int(r["step"]) for r in read_csv(tmp_path / "metrics/eval_history.csv")] == [0, 6, 12, 18, 20]
    for name, weights in kept.items():  # the old checkpoints are still there, untouched
        assert (tmp_path / "checkpoints" / name / "model.safetensors").read_bytes() == weights
    state = checkpoint.read_state(tmp_path / "checkpoints/step_00000020")
    assert [(s["step"], s["max_steps"], s["kind"]) for s in state["lineage"]] == [
        (0, 12, "retarget"),
        (8, 20, "stretch"),
    ]
    assert summary.events[-1]["step"] == 8 and summary.events[-1]["event"].startswith("continued at step 8")
    f = lr_lambda(longer, state["lineage"])
    assert f(8) == lr_lambda(first)(8) and f(20) == pytest.approx(first.optim.min_lr_ratio)
    assert f(7) == lr_lambda(first)(7)  # the steps before the change keep their lr
    lrs = [float(r["lr"]) for r in read_csv(tmp_path / "metrics/train.csv")]
    assert lrs[4:] == sorted(lrs[4:], reverse=True)  # still decaying after the change, no jump back up

    # the continued run, killed and resumed, ends identical: the lineage travels in its checkpoints
    want_csv = (tmp_path / "metrics/train.csv").read_text()
    want = (tmp_path / "checkpoints/step_00000020/model.safetensors").read_bytes()
    for folder in (store, tmp_path / "checkpoints"):
        shutil.rmtree(folder / "step_00000020")
        shutil.rmtree(folder / "step_00000016")
    assert train.run(longer, progress=False).status == "completed"
    assert (tmp_path / "metrics/train.csv").read_text() == want_csv
    assert (tmp_path / "checkpoints/step_00000020/model.safetensors").read_bytes() == want

    # a plan shortened below where the run got is a new run: the old one is moved aside, not deleted
    raw["training"]["max_steps"] = 6
    capsys.readouterr()
    assert train.run(parse_params(raw), progress=False).step == 6
    assert "beyond training.max_steps=6" in capsys.readouterr().out
    aside = list(store.with_name(f"{store.name}.superseded").iterdir())
    assert len(aside) == 1 and (aside[0] / "step_00000020/model.safetensors").read_bytes() == want


def test_changed_training_code_continues_the_run_as_a_recorded_segment(
    params_dict, prepared, tmp_path, capsys, monkeypatch
):
    """A pipeline upgrade that changes what the train code computes continues the run by default,
    recorded in its code lineage; ``training.on_code_change: new_run`` starts a new run instead."""
    import shutil

    from pico import codedeps

    first = train.run(prepared, progress=False)  # 12 steps, checkpoints 8 and 12
    store = tmp_path / ".pico/runs" / first.fingerprint
    for folder in (store, tmp_path / "checkpoints"):  # as if stopped after step 8's checkpoint
        shutil.rmtree(folder / "step_00000012")
    monkeypatch.setattr(codedeps, "code_version", lambda stage: "upgraded-code-01")
    capsys.readouterr()
    summary = train.run(prepared, progress=False)
    out = capsys.readouterr().out
    assert f"continued at step 8 under changed training code ({first.code_version} -> upgraded-code-01)" in out
    assert summary.fingerprint == first.fingerprint and summary.step == 12
    assert summary.code_lineage == [
        {"step": 0, "code_version": first.code_version},
        {"step": 8, "code_version": "upgraded-code-01"},
    ]
    assert checkpoint.read_state(store / "step_00000012")["code_lineage"] == summary.code_lineage
    assert [int(r["step"]) for r in read_csv(tmp_path / "metrics/train.csv")] == [2, 4, 6, 8, 10, 12]

    raw = copy.deepcopy(params_dict)
    raw["training"]["on_code_change"] = "new_run"
    strict = train.run(parse_params(raw), progress=False)
    out = capsys.readouterr().out
    assert strict.fingerprint != first.fingerprint and "starts at step 0" in out
    assert strict.code_lineage == [{"step": 0, "code_version": "upgraded-code-01"}]


def test_a_fresh_start_request_sets_the_run_aside_once(prepared, tmp_path, capsys, monkeypatch):
    """The flow's --fresh: the train stage sets its run aside (kept) and trains from step 0, once per
    request: a retry of the same request continues the fresh run instead of starting over again."""
    first = train.run(prepared, progress=False)
    monkeypatch.setenv("PICO_FRESH_RUN", "flow-run-1")
    capsys.readouterr()
    again = train.run(prepared, progress=False)
    out = capsys.readouterr().out
    assert "fresh start requested: this run's checkpoints were moved to" in out and "resuming from" not in out
    assert again.step == 12 and again.fingerprint == first.fingerprint
    aside = tmp_path / ".pico/runs" / f"{first.fingerprint}.superseded"
    assert [p.name for p in checkpoint.list_checkpoints(next(aside.iterdir()))] == ["step_00000008", "step_00000012"]
    train.run(prepared, progress=False)  # the same request again (a retry): the fresh run is not set aside
    assert "this run already ended" in capsys.readouterr().out and len(list(aside.iterdir())) == 1


def test_an_ended_run_rerun_under_newer_code_keeps_its_own_code_version(prepared, capsys, monkeypatch):
    """DVC reruns the train stage after any code edit; an ended run trains nothing then, so it
    records no code segment and its summary still names the code it trained under."""
    from pico import codedeps

    first = train.run(prepared, progress=False)
    monkeypatch.setattr(codedeps, "code_version", lambda stage: "newer-code-0001")
    capsys.readouterr()
    again = train.run(prepared, progress=False)
    out = capsys.readouterr().out
    assert "this run already ended" in out and "changed training code" not in out
    assert again.code_version == first.code_version and again.code_lineage == first.code_lineage


def test_a_run_that_is_not_compiled_never_imports_the_compiler(params_dict, prepared, tmp_path):
    """torch's compiler (torch._dynamo, ~1.3 s of CPU to import) stays out of a trainer's process
    unless the run compiles (pico.optim.EagerAdamW; the deterministic flag set without it): a fresh
    interpreter trains a run, then resumes it for more steps."""
    write_params(tmp_path / "params.yaml", params_dict)
    code = (
        "import sys; from pico.cli import main; codes = [main(['train']), main(['--params', 'more.yaml', 'train'])]; "
        "print(codes, 'torch._dynamo' in sys.modules, 'torch._inductor' in sys.modules)"
    )
    params_dict["training"]["max_steps"] += 4
    write_params(tmp_path / "more.yaml", params_dict)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.stdout.splitlines()[-1:] == ["[0, 0] False False"], proc.stdout + proc.stderr
    assert "resuming from" in proc.stdout
