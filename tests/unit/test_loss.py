"""The chunked linear cross-entropy equals the plain one (loss and gradients) and never builds
the full logits tensor."""

import pytest
import torch
import torch.nn.functional as F

from pico import loss as loss_mod
from pico.config import ModelConfig
from pico.loss import IGNORE_INDEX, linear_cross_entropy, resolve_kernel
from pico.model import ModelDims, PicoDecoder


def _case(n=300, d=24, v=97, seed=0, ignore_every=7):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g, dtype=torch.float64).float().requires_grad_()
    w = (torch.randn(v, d, generator=g) * 0.3).requires_grad_()
    t = torch.randint(0, v, (n,), generator=g)
    t[::ignore_every] = IGNORE_INDEX
    return h, w, t


@pytest.mark.parametrize("chunk_elements", [97 * 16, 97 * 1000, 97 * 7])  # several chunks, one, odd sizes
def test_matches_plain_cross_entropy_and_its_gradients(monkeypatch, chunk_elements):
    monkeypatch.setattr(loss_mod, "CHUNK_ELEMENTS", chunk_elements)
    h, w, t = _case()
    ref = F.cross_entropy(h @ w.T, t, ignore_index=IGNORE_INDEX)
    gh_ref, gw_ref = torch.autograd.grad(ref, (h, w))
    got = linear_cross_entropy(h, w, t)
    gh, gw = torch.autograd.grad(got * 1.0, (h, w))
    assert torch.allclose(got, ref, rtol=1e-6, atol=1e-6)
    assert torch.allclose(gh, gh_ref, rtol=1e-5, atol=1e-7)
    assert torch.allclose(gw, gw_ref, rtol=1e-5, atol=1e-7)


def test_upstream_gradient_scales_the_result():
    h, w, t = _case()
    (gh_ref,) = torch.autograd.grad(3.5 * F.cross_entropy(h @ w.T, t, ignore_index=IGNORE_INDEX), (h,))
    (gh,) = torch.autograd.grad(3.5 * linear_cross_entropy(h, w, t), (h,))
    assert torch.allclose(gh, gh_ref, rtol=1e-5, atol=1e-7)


def test_per_token_nll_matches_and_zero_where_ignored(monkeypatch):
    monkeypatch.setattr(loss_mod, "CHUNK_ELEMENTS", 97 * 10)
    h, w, t = _case()
    nll = linear_cross_entropy(h.detach().view(3, 100, -1), w.detach(), t.view(3, 100), reduction="none")
    ref = F.cross_entropy(h @ w.T, t, ignore_index=IGNORE_INDEX, reduction="none").view(3, 100)
    assert nll.shape == (3, 100) and not nll.requires_grad
    assert torch.allclose(nll, ref, rtol=1e-6, atol=1e-6)
    assert (nll.view(-1)[t == IGNORE_INDEX] == 0).all()


def test_bf16_autocast_multiplies_in_bf16_like_the_unchunked_model():
    h, w, t = _case(ignore_every=10**9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.cross_entropy((h @ w.T).float(), t)
        got = linear_cross_entropy(h, w, t)
    assert got.dtype == torch.float32
    assert abs(got.item() - ref.item()) < 1e-3


def test_model_loss_equals_loss_of_its_logits():
    torch.manual_seed(0)
    model = PicoDecoder(
        ModelDims.from_config(
            ModelConfig(d_model=48, hidden_dim=96, n_layers=2, n_heads=4, n_kv_heads=2, init_std=0.1), 200
        )
    )
    ids = torch.randint(0, 200, (3, 33))
    ref = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    got = model(ids[:, :-1], ids[:, 1:])
    grads = torch.autograd.grad(got, list(model.parameters()))
    assert torch.allclose(got, ref, rtol=1e-6)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


def test_kernel_choice():
    assert resolve_kernel("torch", torch.device("cpu")) == "torch"
    assert resolve_kernel("auto", torch.device("cpu")) == "torch"
    with pytest.raises(ValueError, match="training.loss_kernel=liger"):
        resolve_kernel("liger", torch.device("cpu"))
