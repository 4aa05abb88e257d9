"""The params model: every knob in `params.yaml`, validated once, used by every stage.

The defaults here are the one source of the embedded default run: the committed params.yaml
spells every one of them out (a test keeps the two equal), so a section left out of a params
file means exactly what params.yaml says.

Unknown keys, wrong types and out-of-range values fail here, before any work, with a message
that names the key (``optim.lr``) and the bad value.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path, PurePath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pico.errors import ConfigError
from pico.paramsfile import format_errors, read_params_file

PARAMS_FILE = "params.yaml"
# the project's own folders: no stage output may live in them
SOURCE_FOLDERS = frozenset({".git", ".dvc", ".venv", "pico", "flows", "tests", "benchmarks", "presets"})


class _Strict(BaseModel):
    # inf/nan are never a valid setting (optim.eps: .inf trained NaN); numbers may still come as
    # strings ("1e-4": YAML 1.1 readers leave DVC's -S values unparsed), but never as booleans
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_numbers(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, value in data.items():
                field = cls.model_fields.get(key)
                if isinstance(value, bool) and field is not None and "bool" not in str(field.annotation):
                    raise ValueError(
                        f"{key}: {value} is a boolean; this setting takes a "
                        f"{getattr(field.annotation, '__name__', field.annotation)}"
                    )
        return data


class EmbeddedConfig(_Strict):
    """The offline default corpus, built from text that ships with every CPython."""

    out_dir: str = "data/embedded"  # where the corpus is written (Dolma shards + Paloma sources)
    eval_fraction: float = Field(0.1, gt=0.0, lt=1.0)  # documents held out for evaluation, a seeded draw
    train_shards: int = Field(4, ge=1)  # training .json.gz shards the documents are spread over
    min_chars: int = Field(200, ge=1)  # shorter documents are dropped
    split_seed: int = Field(0, ge=0)  # seed of the train/eval split


class SourceBudget(_Strict):
    """How much of one training source goes into the rows (pico/data/budgets.py)."""

    max_documents: int | None = Field(None, ge=1)  # the source's first N documents (reading order)
    max_tokens: int | None = Field(None, ge=1)  # ... until its tokens (+ EOS each) would pass this
    weight: float = Field(1.0, ge=0.0, le=64.0)  # copies of each kept document: 2 = twice, 0.5 = a seeded half


class DataConfig(_Strict):
    # Dolma documents: local paths/globs, s3://bucket/prefix/*.json.gz, or hf://datasets/ID[@split]
    train_paths: list[str] = Field(["data/embedded/dolma/*.json.gz"], min_length=1)
    # Paloma-format evaluation documents (text, source, subdomain)
    eval_paths: list[str] = Field(["data/embedded/paloma/*/val.jsonl.gz"], min_length=1)
    # tokens a row predicts (rows hold seq_len + 1 tokens; pico-train: 2048)
    seq_len: int = Field(128, ge=8, le=32768)
    tokens_dir: str = "data/tokens"  # the tokenize stage's output: packed rows, eval windows, manifests
    strict: bool = False  # fail on the first bad line instead of skipping it
    max_documents: int | None = Field(None, ge=1)  # training documents to read, in reading order; null = all
    encode_batch_size: int = Field(1024, ge=1)  # documents per encode_batch call: more balances threads, costs memory
    # processes that tokenize training shards at once (1 = one stream in this process); the
    # output is byte-identical for any number
    tokenize_workers: int = Field(1, ge=1)
    # where those shards run: local worker processes, or a Dask cluster through prefect-dask's
    # DaskTaskRunner (scheduler address from dask_address, else $PICO_DASK_ADDRESS, else a local cluster)
    tokenize_executor: Literal["process", "dask"] = "process"
    # the Dask scheduler for tokenize_executor: dask; null = $PICO_DASK_ADDRESS, else a local cluster
    dask_address: str | None = None
    # pico's pretokenized data instead of tokenizing documents (hf://datasets/pico-lm/pretokenized-dolma@train,
    # hf://datasets/pico-lm/pretokenized-paloma-tinsy@val, or local parquet with the same columns)
    pretokenized_train: str | None = None
    # evaluation rows from pico's pretokenized Paloma instead (the same forms as pretokenized_train)
    pretokenized_eval: str | None = None
    pretokenized_max_rows: int | None = Field(None, ge=1)  # training rows to take from the stream
    # per Dolma source: caps and a weight (e.g. {wiki: {max_documents: 29000}, books: {weight: 2.0}});
    # sources not named are taken whole, once
    budgets: dict[str, SourceBudget] = {}
    budget_seed: int = Field(0, ge=0)  # the seeded draw behind fractional weights


class TokenizerConfig(_Strict):
    # "train" (byte-level BPE trained on the training documents), a tokenizer.json path, or a
    # Hugging Face hub id such as allenai/OLMo-7B-0724-hf
    source: str = "train"
    # the trained BPE's vocabulary (ignored for a loaded tokenizer)
    vocab_size: int = Field(4096, ge=260, le=1 << 20)
    min_frequency: int = Field(2, ge=1)  # BPE merges seen fewer times are not learned
    eos_token: str = "<|endoftext|>"  # appended to every document when packing
    pad_token: str = "<|padding|>"  # a special token the tokenizer reserves (packed rows need no padding)
    # documents the BPE trains on; null = all training documents
    train_max_documents: int | None = Field(None, ge=1)
    out_dir: str = "data/tokenizer"  # tokenizer.json and its meta (hash, vocabulary) go here


PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"d_model": 96, "hidden_dim": 384},
    "small": {"d_model": 384, "hidden_dim": 1536},
    "medium": {"d_model": 768, "hidden_dim": 3072},
    "large": {"d_model": 1536, "hidden_dim": 6144},
}


class ModelConfig(_Strict):
    # pico-decoder size: tiny 11.3 M, small, medium, large 570 M parameters (at vocab 50,304)
    preset: Literal["tiny", "small", "medium", "large"] = "tiny"
    # Overrides of the preset (null = the preset's value)
    d_model: int | None = Field(None, ge=8)
    hidden_dim: int | None = Field(None, ge=8)  # SwiGLU hidden width (preset: 4 x d_model)
    n_layers: int = Field(12, ge=1)  # transformer blocks
    n_heads: int = Field(12, ge=1)  # query heads; d_model / n_heads is the head dim (even, for RoPE)
    n_kv_heads: int = Field(4, ge=1)  # key/value heads (grouped-query attention); divides n_heads
    max_seq_len: int = Field(2048, ge=8)  # longest sequence RoPE is precomputed for; at least data.seq_len
    # null = the tokenizer's vocabulary rounded up to a multiple of vocab_multiple (50,280 -> 50,304)
    vocab_size: int | None = Field(None, ge=2)
    vocab_multiple: int = Field(64, ge=1)  # the vocabulary is padded up to a multiple of this (fast matmuls)
    norm_eps: float = Field(1.0e-6, gt=0.0)  # RMSNorm epsilon
    rope_theta: float = Field(10000.0, gt=0.0)  # RoPE base frequency
    # residual and MLP dropout while training (the training log's fix: 0.1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    attention_dropout: float = Field(0.0, ge=0.0, lt=1.0)  # dropout on attention probabilities while training
    init_std: float = Field(0.02, gt=0.0)  # std of the normal init (init: normal)
    # how the weights start: normal = N(0, init_std), residual projections scaled by 1/sqrt(2 n_layers);
    # pico = pico-train's PyTorch module defaults (Embedding N(0, 1), Linear U(+-1/sqrt(fan_in))), whose
    # first loss sits far above ln(vocab) (the training log's 10.98)
    init: Literal["normal", "pico"] = "normal"

    @property
    def dim(self) -> int:
        return self.d_model or PRESETS[self.preset]["d_model"]

    @property
    def hidden(self) -> int:
        return self.hidden_dim or PRESETS[self.preset]["hidden_dim"]

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelConfig:
        if self.dim % self.n_heads:
            raise ValueError(f"model.d_model={self.dim} is not divisible by model.n_heads={self.n_heads}")
        if (self.dim // self.n_heads) % 2:
            raise ValueError(f"head dim {self.dim // self.n_heads} must be even for RoPE")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"model.n_heads={self.n_heads} is not divisible by model.n_kv_heads={self.n_kv_heads}")
        return self


class OptimConfig(_Strict):
    lr: float = Field(3.0e-3, gt=0.0, le=1.0)  # pico-train: 3e-4 (for its far larger batch)
    betas: tuple[float, float] = (0.9, 0.95)  # pico-train: torch's (0.9, 0.999)
    eps: float = Field(1.0e-8, gt=0.0)  # AdamW epsilon
    # AdamW decoupled weight decay, on matrices and embeddings (not RMSNorm gains)
    weight_decay: float = Field(0.01, ge=0.0)
    max_grad_norm: float | None = Field(1.0, gt=0.0)  # null = no clipping (norm still logged)
    warmup_steps: int = Field(20, ge=0)  # linear warmup from ~0 to lr
    schedule: Literal["linear", "cosine", "constant"] = "cosine"  # pico-train: linear to 0
    # where cosine/linear decay ends, as a fraction of lr (pico-train: 0)
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    # warmup's first step: (step + 1) / warmup_steps, or pico-train's step / warmup_steps ("pico"),
    # whose first optimizer step runs at lr 0
    warmup_start: Literal["first_step", "pico"] = "first_step"

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        for b in v:
            if not 0.0 <= b < 1.0:
                raise ValueError(f"each beta must be in [0, 1), got {list(v)}")
        return v


class HubConfig(_Strict):
    """Pushing the run to the Hugging Face hub while it trains, as pico-train does (pico/publish.py)."""

    repo_id: str | None = None  # e.g. my-org/pico-decoder-tiny; null = no pushing while training
    branch: str | None = None  # null = report.run_name made a git ref (pico-train: the run name)
    private: bool = True  # a repository created by the push is private


class TrainingConfig(_Strict):
    max_steps: int = Field(200, ge=1)  # optimizer steps of the run (raise it later to continue the same run)
    micro_batch_size: int = Field(16, ge=1)  # rows per forward/backward
    grad_accum_steps: int = Field(1, ge=1)  # micro-batches per optimizer step
    # Optional check: micro_batch_size x grad_accum_steps x world size must equal it
    global_batch_size: int | None = Field(None, ge=1)
    seed: int = Field(42, ge=0)  # numpy seeds the row order: non-negative
    shuffle: bool = True  # seeded permutation of rows per epoch; false = rows in stored order (pico-train)
    log_every: int = Field(10, ge=1)  # steps between lines of metrics/train.csv and the progress line
    eval_every: int = Field(50, ge=1)  # steps between in-training evaluations (metrics/eval_history.csv)
    eval_at_start: bool = True  # evaluate at step 0 too (the untrained model's loss)
    checkpoint_every: int = Field(50, ge=1)  # steps between checkpoints (and one at the end)
    keep_checkpoints: int = Field(2, ge=1)  # newest checkpoints kept (plus best/, never pruned, when early stopping)
    checkpoint_dir: str = "checkpoints"  # the DVC output: the run's checkpoints, published from the run store
    # where runs train (pico.runstore); null = <repository>/.pico/runs, shared by DVC's experiment copies
    run_store: str | None = None
    # copies of each checkpoint (and captures, metric files) uploaded in the background to any fsspec URL
    # or folder (s3://bucket/prefix, gs://..., a mount); a fresh machine resumes from there (pico/mirror.py)
    mirror: str | None = None
    hub: HubConfig = HubConfig()  # each checkpoint pushed to the hub in the background (`pico publish` after a run)
    # a changed training code (pico.codedeps, comments and docstrings aside): continue the run and record
    # the change as a segment of its code lineage, or start a new run (the old one stays in the store)
    on_code_change: Literal["continue", "new_run"] = "continue"
    metrics_dir: str = "metrics"  # train.csv, eval_history.csv, perf.csv, train_summary.json, headline.json
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto = cuda when available, else cpu
    num_threads: int | None = Field(None, ge=1)  # torch intra-op threads; null = torch default
    # CPU kernels: "portable" pins ATen and MKL to their AVX2 code paths so every x86-64 CPU computes
    # the same bits (pico.numerics); "native" lets them use the widest the CPU has
    numerics: Literal["portable", "native"] = "portable"
    # Continue from this checkpoint folder with the current params (e.g. a lower lr after a
    # divergence): weights, optimizer, data position and history come from it. null = off.
    restart_from: str | None = None
    # processes on this node: `pico train` starts them with torchrun (DDP); multi-node runs call
    # torchrun themselves. The effective batch is micro_batch_size x grad_accum_steps x world size.
    nproc: int = Field(1, ge=1)
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl on GPUs, gloo on CPUs
    # how several processes split the work: ddp (replicas), fsdp (fully_shard: parameters, gradients
    # and optimizer state sharded); auto = fsdp for the medium and large presets, else ddp
    parallelism: Literal["auto", "ddp", "fsdp"] = "auto"
    # GPU path (off by default; CI never has a GPU): bf16 autocast, torch.compile of the model.
    # On CUDA the trainer also uses fused AdamW, TF32 matmuls and pinned-memory batches.
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False  # torch.compile the model (GPU path)
    # torch.compile mode: default | reduce-overhead (CUDA graphs: fewer launches at small batches)
    # | max-autotune-no-cudagraphs (longer compilation, tuned matmuls)
    compile_mode: Literal["default", "reduce-overhead", "max-autotune-no-cudagraphs"] = "default"
    # output projection + cross-entropy, chunked so the full logits never exist (pico/loss.py):
    # torch (everywhere) | liger (liger-kernel's fused kernel, CUDA) | auto (liger on CUDA if installed)
    loss_kernel: Literal["auto", "torch", "liger"] = "auto"
    # which SDPA backend computes attention (pico.model): auto (PyTorch picks) | flash | cudnn (CUDA)
    # | efficient (CUDA) | math (the reference); one that cannot run here is refused before any step
    attention_kernel: Literal["auto", "flash", "cudnn", "efficient", "math"] = "auto"
    # seconds from SIGTERM/SIGINT to exit: the trainer finishes its step and writes a checkpoint, or
    # says it could not and exits anyway (schedulers kill after their own grace: Slurm, k8s 30 s)
    stop_grace_s: float = Field(30.0, gt=0)
    # peak FLOP/s of one device, for the MFU column of metrics/perf.csv (null = no MFU column),
    # e.g. 989.0e12 for an H100 SXM in bf16
    peak_flops: float | None = Field(None, gt=0)

    def effective_batch_rows(self, world: int | None = None) -> int:
        """Rows per optimizer step: micro-batch x accumulation x processes (``nproc`` unless the
        actual world size is given, e.g. a multi-node torchrun job). The one place it is computed."""
        return self.micro_batch_size * self.grad_accum_steps * (self.nproc if world is None else world)

    @model_validator(mode="after")
    def _batch_adds_up(self) -> TrainingConfig:
        if self.global_batch_size is not None:
            per_step = self.micro_batch_size * self.grad_accum_steps
            if self.global_batch_size % per_step:
                raise ValueError(
                    f"training.global_batch_size={self.global_batch_size} is not a multiple of "
                    f"training.micro_batch_size x training.grad_accum_steps = {per_step}"
                )
        return self


class EarlyStopConfig(_Strict):
    """When to stop early (status early_stopped) or call a run diverged (status diverged)."""

    enabled: bool = False  # stop after patience evaluations without improvement; stop at once on an explosion
    patience: int = Field(3, ge=1)  # evaluations without an improvement of at least min_delta
    min_delta: float = Field(0.0, ge=0.0)  # in token-level eval loss (nats/token)
    explosion_factor: float | None = Field(1.5, gt=1.0)  # eval loss above best x factor: stop now
    loss_spike_factor: float | None = Field(None, gt=1.0)  # train loss above factor x its running mean: diverged
    spike_warmup_steps: int = Field(20, ge=0)  # no spike test before this step


class LearningDynamicsConfig(_Strict):
    """Activations, weights and gradients of chosen layers at chosen steps, in the files pico-analyze
    reads (pico/dynamics.py; `pico export-analysis OUT` lays them out for it). Off by default."""

    enabled: bool = False  # capture learning dynamics (costs time and disk)
    every: int | None = Field(None, ge=1)  # steps between captures (and step 0, the last); null = checkpoint_every
    steps: list[int] = []  # further steps to capture (e.g. a window to watch closely: [8000, 8250, 8500])
    # modules whose name contains one of these are hooked (pico-train's defaults)
    layer_suffixes: list[str] = Field(["attention.v_proj", "attention.o_proj", "swiglu.w_2"], min_length=1)
    # evaluation windows in the val split, spread over the sources; null = all (pico-train: its whole
    # val split). pico-analyze's PWCCA needs more rows than n_heads x d_model (the OV circuit)
    val_windows: int | None = Field(None, ge=1)
    batch_size: int = Field(8, ge=1)  # sub-batch rows: gradients are the sum of sub-batch mean-loss gradients


class ForecastConfig(_Strict):
    """Where a running run is heading (pico/forecast.py): at every evaluation, a saturating power law
    fitted to its eval loss against tokens seen, extrapolated to max_steps and 2x / 4x that budget."""

    enabled: bool = True  # forecast at each evaluation (metrics/forecast.json and a line in the log)
    min_points: int = Field(4, ge=4)  # evaluations after warmup (step 0 never counts) before the first fit
    min_gain: float = Field(
        0.01, ge=0.0
    )  # predicted eval-loss gain of finishing (nats/token) under which: diminishing returns


class RecoveryConfig(_Strict):
    """What the Prefect flow does with a diverged run: restart from the last good checkpoint
    with the learning rate scaled by lr_factor, at most max_attempts times."""

    enabled: bool = False  # let the flow restart a diverged run from its last good checkpoint
    lr_factor: float = Field(0.5, gt=0.0, lt=1.0)  # the restarted run's lr = lr x lr_factor (per attempt)
    max_attempts: int = Field(2, ge=1)  # restarts before the flow gives up and reports the divergence


class EvaluationConfig(_Strict):
    batch_size: int = Field(32, ge=1)  # windows per forward pass
    max_windows_per_source: int | None = Field(None, ge=1)  # cap for in-training evaluation
    # already-seen training rows scored in eval mode (dropout off) at each in-training evaluation, beside
    # the held-out windows: overfitting shows as held-out loss rising while these fall (0 = off)
    seen_rows: int = Field(64, ge=0)
    # auto: the best checkpoint when training stopped early, else the newest
    checkpoint: Literal["auto", "latest", "best"] = "auto"
    # pico-train's Paloma number (pico/pico_number.py): each document truncated to this many tokens,
    # tokens 2..n scored, the mean of per-document perplexities; null = not computed (it costs a forward
    # pass over the documents' first tokens)
    pico_max_length: int | None = Field(2048, ge=2)
    out: str = "metrics/eval.json"  # every figure per source, domain and window (the evaluate stage's output)
    domains_out: str = "metrics/eval_domains.csv"  # every source and Paloma domain, one row each (a stable table)


class DiagnosisConfig(_Strict):
    """Thresholds of the report's diagnosis (pico/diagnose.py)."""

    overfit_min_evals: int = Field(2, ge=1)  # evaluations after the best one, eval loss rising
    overfit_min_rise: float = Field(0.01, ge=0.0)  # last eval loss above best by this fraction
    divergence_factor: float = Field(1.5, gt=1.0)  # final train loss above its minimum x this
    plateau_fraction: float = Field(0.25, gt=0.0, le=1.0)  # the tail of training that is judged
    plateau_min_improvement: float = Field(0.01, ge=0.0)  # relative loss drop over that tail
    plateau_lr_fraction: float = Field(0.25, ge=0.0, le=1.0)  # tail lr at most this x its peak: the schedule's flat
    spike_factor: float = Field(1.5, gt=1.0)  # a logged loss above this x the recent median
    grad_explosion_factor: float = Field(10.0, gt=1.0)  # interval max grad norm above this x the median
    pathology_ratio: float = Field(10.0, gt=1.0)  # pico per-seq mean / token perplexity above this


class ReportConfig(_Strict):
    out_dir: str = "reports"  # report.md and plots/
    run_name: str = "pico-decoder-tiny (embedded default)"  # the report's title
    # what "What we did" compares with: a params file, a git revision or a DVC experiment name;
    # null = the committed params.yaml (HEAD)
    baseline: str | None = None
    device_hour_price: float | None = Field(None, ge=0.0)  # one device-hour's price: pico plan, planned vs actual
    diagnosis: DiagnosisConfig = DiagnosisConfig()


class Params(_Strict):
    embedded: EmbeddedConfig = EmbeddedConfig()
    data: DataConfig = DataConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    training: TrainingConfig = TrainingConfig()
    early_stop: EarlyStopConfig = EarlyStopConfig()
    learning_dynamics: LearningDynamicsConfig = LearningDynamicsConfig()
    forecast: ForecastConfig = ForecastConfig()
    recovery: RecoveryConfig = RecoveryConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    report: ReportConfig = ReportConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> Params:
        if self.data.seq_len > self.model.max_seq_len:
            raise ValueError(f"data.seq_len={self.data.seq_len} exceeds model.max_seq_len={self.model.max_seq_len}")
        if self.optim.warmup_steps > self.training.max_steps:
            raise ValueError(
                f"optim.warmup_steps={self.optim.warmup_steps} exceeds training.max_steps={self.training.max_steps}"
            )
        self._output_folders_are_safe()
        return self

    def _output_folders_are_safe(self) -> None:
        """Folders the stages write (and may replace parts of) must each be a folder of their own:
        not the project itself, a parent, or the root, and not inside one another."""
        folders = self.output_folders()
        norm = {}
        for key, value in folders.items():
            p = PurePath(os.path.normpath(value)) if value.strip() else PurePath(".")
            if str(p) in (".", "..") or ".." in p.parts or p == PurePath(p.anchor):
                raise ValueError(
                    f"{key}={value!r} must name a folder of its own (not the project, a parent or the root)"
                )
            if not p.is_absolute() and p.parts[0] in SOURCE_FOLDERS:
                raise ValueError(
                    f"{key}={value!r} is inside the project's source folder {p.parts[0]}/; "
                    "outputs need a folder of their own"
                )
            norm[key] = p
        keys = list(norm)
        for i, a in enumerate(keys):
            for b in keys[i + 1 :]:
                if norm[a] == norm[b] or norm[a] in norm[b].parents or norm[b] in norm[a].parents:
                    raise ValueError(f"{a}={folders[a]!r} and {b}={folders[b]!r} overlap; give each its own folder")

    def output_folders(self) -> dict[str, str]:
        """The folders the stages write, by key."""
        return {
            "embedded.out_dir": self.embedded.out_dir,
            "data.tokens_dir": self.data.tokens_dir,
            "tokenizer.out_dir": self.tokenizer.out_dir,
            "training.checkpoint_dir": self.training.checkpoint_dir,
            "training.metrics_dir": self.training.metrics_dir,
            "report.out_dir": self.report.out_dir,
        }

    def fingerprint(self, *sections: str) -> str:
        """Short hash of the named sections (all when none), stable across runs and machines."""
        dump = self.model_dump(mode="json")
        picked = {k: dump[k] for k in (sections or dump.keys())}
        return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A params mapping as dotted keys (``optim.lr``); lists stay values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def parse_params(raw: Any, source: str = "params") -> Params:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of param groups, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_errors(err, raw, source)) from None


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    path = Path(path)
    params = parse_params(read_params_file(path), str(path))
    _outputs_inside_dvc_repo(params, path)
    return params


def dvc_root(start: Path) -> Path | None:
    """The DVC project holding ``start`` (the nearest folder above it with a ``.dvc/``), or None."""
    for folder in [start, *start.parents]:
        if (folder / ".dvc").is_dir():
            return folder
    return None


def _outputs_inside_dvc_repo(params: Params, path: Path) -> None:
    """In a DVC project every stage output must lie inside it: DVC refuses to save one outside, and
    would do so only after the stage ran (a whole training run, lost to DVC)."""
    root = dvc_root(path.resolve().parent)
    if root is None:
        return
    for key, value in params.output_folders().items():
        if not Path(value).expanduser().is_absolute():  # relative (and without ..): inside the working folder
            continue
        where = Path(value).expanduser().resolve()
        if where != root and root not in where.parents:
            raise ConfigError(
                f"{path}: {key}={value!r} is outside the DVC project {root}; DVC cannot track "
                "outputs there: use a folder inside the project"
            )


def with_overrides(raw: dict[str, Any], overrides: dict[str, Any], source: str = "params") -> tuple[dict, Params]:
    """Set dotted keys (``optim.lr``) like ``dvc exp run -S`` does and validate the result.

    Returns the edited raw mapping, with the overridden values as the validator typed them (so
    ``1e-4`` given as text is written back as a float), and the validated params.
    """
    raw = copy.deepcopy(raw)
    for key, value in overrides.items():
        node, parts = raw, key.split(".")
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or parts[-1] not in node:
            raise ConfigError(f"{source}: cannot override {key}: no such param")
        node[parts[-1]] = value
    params = parse_params(raw, f"{source} with overrides {overrides}")
    typed = params.model_dump(mode="json")
    for key in overrides:
        node, src = raw, typed
        for part in key.split(".")[:-1]:
            node, src = node[part], src[part]
        node[key.split(".")[-1]] = src[key.split(".")[-1]]
    return raw, params
