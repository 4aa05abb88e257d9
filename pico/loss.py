"""Output projection + cross-entropy without the full logits tensor.

A Pico model's logits are tokens x vocabulary: at 64 x 2,048 tokens and a 50,304 vocabulary one
fp32 copy is 26 GB, and autograd keeps several. Here the projection and the loss are computed
together over chunks of tokens, so peak memory is one chunk's logits, whatever the batch.

- ``torch`` (runs everywhere): ``ChunkedLinearCrossEntropy`` computes, per chunk, the logits, the
  per-token NLL and — when gradients are wanted — the chunk's gradients of the hidden states and
  of the output weight (softmax - one-hot), which backward then only scales. Matches
  ``F.cross_entropy(hidden @ weight.T, targets)`` and its gradients within fp32 rounding
  (``tests/integration/test_loss_memory.py``).
- ``liger`` (CUDA only): liger-kernel's fused linear cross-entropy (Triton), the same idea fused.
- ``auto``: liger on CUDA when liger-kernel is installed, else torch.

Under bf16 autocast both multiply in bf16 and reduce in fp32, as the unchunked model did.
Evaluation needs per-token NLLs (per-window and per-byte metrics) and always takes the torch path
(``reduction="none"``, no gradients).
"""

from __future__ import annotations

import importlib.util
from typing import Literal

import torch

LossKernel = Literal["auto", "torch", "liger"]
IGNORE_INDEX = -100
# logits elements per chunk: 2^26 fp32 = 256 MiB (1,334 tokens at a 50,304 vocabulary)
CHUNK_ELEMENTS = 1 << 26


def liger_available() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def resolve_kernel(kernel: LossKernel, device: torch.device) -> Literal["torch", "liger"]:
    """The kernel a run uses; ``liger`` asked for where it cannot run is an error, not a fallback."""
    if kernel == "auto":
        return "liger" if device.type == "cuda" and liger_available() else "torch"
    if kernel == "liger" and (device.type != "cuda" or not liger_available()):
        where = "is not installed (pip install liger-kernel)" if device.type == "cuda" else f"needs CUDA, not {device}"
        raise ValueError(f"training.loss_kernel=liger: liger-kernel {where}; use auto or torch")
    return kernel


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    kind = hidden.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else hidden.dtype


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Per-token NLL of ``hidden @ weight.T`` against ``targets``, chunk by chunk. Returns the
    per-token NLL (0 where the target is ignored); with gradients wanted, the gradients of
    ``sum(nll)`` are computed in the forward pass, one chunk at a time."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk: int):  # type: ignore[override]
        dtype = _compute_dtype(hidden)
        wants_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(dtype)
            nll = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
            grad_h = torch.empty_like(hidden) if wants_grad else None
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if wants_grad else None
            for start in range(0, hidden.shape[0], chunk):
                h = hidden[start : start + chunk].to(dtype)
                t = targets[start : start + chunk]
                keep = t != IGNORE_INDEX
                safe_t = torch.where(keep, t, 0).unsqueeze(1)
                logits = (h @ w.T).float()
                target = logits.gather(1, safe_t).squeeze(1)
                # logsumexp by hand, in place, so the softmax below reuses its one exp pass
                peak = logits.amax(dim=-1, keepdim=True)
                e = logits.sub_(peak).exp_()
                total = e.sum(dim=-1, keepdim=True)
                lse = (peak + total.log()).squeeze(1)
                nll[start : start + chunk] = torch.where(keep, lse - target, 0.0)
                if wants_grad:
                    # d nll / d logits = softmax - one_hot, for kept tokens
                    g = e.div_(total)
                    g.scatter_(1, safe_t, g.gather(1, safe_t) - 1)  # one index per row: deterministic
                    g.mul_(keep.unsqueeze(1))
                    g = g.to(dtype)
                    grad_h[start : start + chunk] = (g @ w).to(hidden.dtype)
                    grad_w.add_(g.T @ h)
        if wants_grad:
            ctx.save_for_backward(grad_h, grad_w.to(weight.dtype))
        return nll

    @staticmethod
    def backward(ctx, grad_nll):  # type: ignore[override]
        # Only d sum(nll) is precomputed, so the upstream gradient must be the same for every
        # token — as it is for the sum/mean ``linear_cross_entropy`` takes, its only caller.
        grad_h, grad_w = ctx.saved_tensors
        g = grad_nll[0]
        return grad_h * g, grad_w * g, None, None


def _chunk_rows(vocab: int) -> int:
    return max(1, CHUNK_ELEMENTS // vocab)


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    kernel: Literal["torch", "liger"] = "torch",
    reduction: Literal["mean", "none"] = "mean",
) -> torch.Tensor:
    """Cross-entropy of ``hidden @ weight.T`` (hidden: (..., d), targets: (...), -100 ignored).

    ``mean``: mean over the tokens not ignored (a scalar, differentiable); ``none``: per-token
    NLL shaped like ``targets`` (not differentiable: evaluation)."""
    h, t = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    chunk = _chunk_rows(weight.shape[0])
    if reduction == "none":
        with torch.no_grad():
            return ChunkedLinearCrossEntropy.apply(h, weight, t, chunk).view(targets.shape)
    if kernel == "liger":
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        dtype = _compute_dtype(h)
        with torch.autocast(h.device.type, enabled=False):
            return liger_fused_linear_cross_entropy(
                h.to(dtype), weight.to(dtype), t, ignore_index=IGNORE_INDEX, accum_dtype=torch.float32
            ).float()
    # the mean over kept tokens, without reading the count back to the host
    count = (t != IGNORE_INDEX).sum().clamp(min=1)
    return ChunkedLinearCrossEntropy.apply(h, weight, t, chunk).sum() / count
