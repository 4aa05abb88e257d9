"""The Pico decoder: pico-train's LLaMA-style model, read top to bottom.

Pre-norm blocks ``h = x + Attn(RMSNorm(x))``, ``out = h + SwiGLU(RMSNorm(h))``, final RMSNorm,
untied output head, no biases, RoPE (theta 1e4) over *adjacent* pairs as in pico/Meta LLaMA,
grouped-query attention through ``F.scaled_dot_product_attention``.

Differences from pico-train, on purpose: optional residual/MLP dropout and attention dropout
(the training log's v2 run), and N(0, init_std) initialisation of embeddings and linears instead
of PyTorch's defaults (pico's N(0,1) embedding starts the loss far above ln(vocab)); ``init:
"pico"`` restores pico-train's initialisation (the modules' own defaults, drawn in the same order).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from pico.config import ModelConfig
from pico.loss import linear_cross_entropy


@dataclass(frozen=True)
class ModelDims:
    vocab_size: int
    d_model: int
    hidden_dim: int
    n_layers: int = 12
    n_heads: int = 12
    n_kv_heads: int = 4
    max_seq_len: int = 2048
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    dropout: float = 0.0
    attention_dropout: float = 0.0
    init_std: float = 0.02
    init: Literal["normal", "pico"] = "normal"

    @classmethod
    def from_config(cls, cfg: ModelConfig, tokenizer_vocab: int) -> ModelDims:
        vocab = cfg.vocab_size or math.ceil(tokenizer_vocab / cfg.vocab_multiple) * cfg.vocab_multiple
        if vocab < tokenizer_vocab:
            raise ValueError(f"model.vocab_size={vocab} is smaller than the tokenizer's vocabulary ({tokenizer_vocab})")
        return cls(
            vocab_size=vocab,
            d_model=cfg.dim,
            hidden_dim=cfg.hidden,
            n_layers=cfg.n_layers,
            n_heads=cfg.n_heads,
            n_kv_heads=cfg.n_kv_heads,
            max_seq_len=cfg.max_seq_len,
            norm_eps=cfg.norm_eps,
            rope_theta=cfg.rope_theta,
            dropout=cfg.dropout,
            attention_dropout=cfg.attention_dropout,
            init_std=cfg.init_std,
            init=cfg.init,
        )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        return asdict(self)


AttentionKernel = Literal["auto", "flash", "cudnn", "efficient", "math"]
# training.attention_kernel: which of SDPA's backends runs attention; "auto" leaves it to PyTorch
# (at torch 2.11 on Hopper: cuDNN; on CPU: its flash kernel). Numerically the same attention.
ATTENTION_BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}


def attention_backend(kernel: AttentionKernel) -> contextlib.AbstractContextManager:
    """Where attention runs under ``kernel``: SDPA restricted to that backend, or PyTorch's choice."""
    return contextlib.nullcontext() if kernel == "auto" else sdpa_kernel(ATTENTION_BACKENDS[kernel])


def check_attention_kernel(
    kernel: AttentionKernel, dims: ModelDims, device: torch.device, dtype: torch.dtype
) -> AttentionKernel:
    """``kernel`` if SDPA can run it here for this model (device, dtype, head_dim, grouped-query
    attention, attention dropout), else a config error naming the key, before any step: each backend
    has its own limits (cuDNN and efficient need CUDA; flash takes no dropout on CPU), which PyTorch
    reports only from inside the first forward."""
    if kernel == "auto":
        return kernel
    where = f"training.attention_kernel={kernel}"
    if kernel in ("cudnn", "efficient") and device.type != "cuda":
        raise ValueError(f"{where} needs CUDA, not {device.type}; use auto, flash or math")
    shape = (1, dims.n_heads, 16, dims.head_dim), (1, dims.n_kv_heads, 16, dims.head_dim)
    q = torch.zeros(shape[0], device=device, dtype=dtype, requires_grad=True)
    k, v = (torch.zeros(shape[1], device=device, dtype=dtype, requires_grad=True) for _ in range(2))
    with warnings.catch_warnings(record=True) as said:  # SDPA explains a refusal only in warnings
        warnings.simplefilter("always")
        try:
            with attention_backend(kernel), torch.enable_grad():
                out = F.scaled_dot_product_attention(
                    q, k, v, is_causal=True, enable_gqa=True, dropout_p=dims.attention_dropout
                )
                out.sum().backward()
            return kernel
        except RuntimeError as err:
            reasons = [str(w.message).split("(Triggered internally")[0].strip() for w in said]
            why = " ".join(r for r in reasons if r) or str(err).strip().splitlines()[0]
    raise ValueError(
        f"{where}: PyTorch cannot run it on {device.type} for this model (head_dim {dims.head_dim}, "
        f"{str(dtype).removeprefix('torch.')}, attention_dropout {dims.attention_dropout}): {why} "
        "Use auto."
    )


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # normalise in fp32 (as pico does), cast back, then scale
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def rope_tables(head_dim: int, seq_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape (seq_len, head_dim/2) for rotating adjacent pairs (x0,x1), (x2,x3), ..."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (batch, heads, seq, head_dim); the complex rotation of pico-train in real arithmetic."""
    xf = x.float().unflatten(-1, (-1, 2))
    even, odd = xf[..., 0], xf[..., 1]
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return rotated.flatten(-2).type_as(x)


class Attention(nn.Module):
    def __init__(self, dims: ModelDims):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = dims.n_heads, dims.n_kv_heads, dims.head_dim
        self.q_proj = nn.Linear(dims.d_model, dims.n_heads * dims.head_dim, bias=False)
        self.k_proj = nn.Linear(dims.d_model, dims.n_kv_heads * dims.head_dim, bias=False)
        self.v_proj = nn.Linear(dims.d_model, dims.n_kv_heads * dims.head_dim, bias=False)
        self.o_proj = nn.Linear(dims.n_heads * dims.head_dim, dims.d_model, bias=False)
        self.attention_dropout = dims.attention_dropout

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            is_causal=True,
            enable_gqa=True,
            dropout_p=self.attention_dropout if self.training else 0.0,
        )
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class SwiGLU(nn.Module):
    def __init__(self, dims: ModelDims):
        super().__init__()
        self.w_0 = nn.Linear(dims.d_model, dims.hidden_dim, bias=False)
        self.w_1 = nn.Linear(dims.d_model, dims.hidden_dim, bias=False)
        self.w_2 = nn.Linear(dims.hidden_dim, dims.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(F.silu(self.w_0(x)) * self.w_1(x))


class Block(nn.Module):
    def __init__(self, dims: ModelDims):
        super().__init__()
        self.attention_norm = RMSNorm(dims.d_model, dims.norm_eps)
        self.attention = Attention(dims)
        self.swiglu_norm = RMSNorm(dims.d_model, dims.norm_eps)
        self.swiglu = SwiGLU(dims)
        self.dropout = nn.Dropout(dims.dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = x + self.dropout(self.attention(self.attention_norm(x), cos, sin))
        return h + self.dropout(self.swiglu(self.swiglu_norm(h)))


class PicoDecoder(nn.Module):
    def __init__(self, dims: ModelDims):
        super().__init__()
        self.dims = dims
        self.embedding_proj = nn.Embedding(dims.vocab_size, dims.d_model)
        self.layers = nn.ModuleList(Block(dims) for _ in range(dims.n_layers))
        self.output_norm = RMSNorm(dims.d_model, dims.norm_eps)
        self.de_embedding_proj = nn.Linear(dims.d_model, dims.vocab_size, bias=False)
        cos, sin = rope_tables(dims.head_dim, dims.max_seq_len, dims.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.loss_kernel: Literal["torch", "liger"] = "torch"  # how the loss is computed, not what (pico.loss)
        self.attention_kernel: AttentionKernel = "auto"  # how attention is computed (check_attention_kernel)
        if dims.init != "pico":  # pico: the modules drew their defaults above, in pico-train's order
            self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.dims.init == "pico":
            # pico-train keeps PyTorch's defaults, drawn at construction in this same order
            # (embedding, then per block q, k, v, o, w_0, w_1, w_2, then the head)
            for m in self.modules():
                if isinstance(m, (nn.Linear, nn.Embedding)):
                    m.reset_parameters()
                elif isinstance(m, RMSNorm):
                    nn.init.ones_(m.weight)
            return
        std = self.dims.init_std
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif name.endswith("o_proj.weight") or name.endswith("w_2.weight"):
                # GPT-2 style: scale residual-branch outputs by depth so the residual stream stays O(1)
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.dims.n_layers))
            else:
                nn.init.normal_(p, 0.0, std)

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The final (normed) hidden states: everything but the output projection."""
        t = input_ids.shape[1]
        if t > self.dims.max_seq_len:
            raise ValueError(f"sequence of {t} tokens exceeds model max_seq_len {self.dims.max_seq_len}")
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        x = self.embedding_proj(input_ids)
        with attention_backend(self.attention_kernel):
            for layer in self.layers:
                x = layer(x, cos, sin)
        return self.output_norm(x)

    def forward(
        self, input_ids: torch.Tensor, targets: torch.Tensor | None = None, reduction: Literal["mean", "none"] = "mean"
    ) -> torch.Tensor:
        """Logits (fp32) without ``targets``; with them (as nanoGPT), the cross-entropy — the mean
        over tokens, or per token with ``reduction="none"`` — computed by ``pico.loss`` chunk by
        chunk, so the full logits tensor is never built."""
        x = self.hidden_states(input_ids)
        if targets is None:
            return self.de_embedding_proj(x).float()
        return linear_cross_entropy(x, self.de_embedding_proj.weight, targets, self.loss_kernel, reduction)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token (forward + backward = 6N plus attention's 12·L·d·T), as in PaLM's MFU."""
        n = self.num_parameters() - self.embedding_proj.weight.numel()
        return 6 * n + 12 * self.dims.n_layers * self.dims.d_model * seq_len
