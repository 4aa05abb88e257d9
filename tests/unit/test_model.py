import math

import pytest
import torch
import torch.nn.functional as F

from pico.config import ModelConfig
from pico.model import Attention, ModelDims, PicoDecoder, apply_rope, check_attention_kernel, rope_tables


def dims(**kw) -> ModelDims:
    base = dict(vocab_size=64, d_model=24, hidden_dim=48, n_layers=2, max_seq_len=32)
    base.update(kw)
    return ModelDims(**base)


@pytest.mark.parametrize(
    "preset, expected",
    [
        ("tiny", 11_282_784),
        ("small", 64_595_328),
        ("medium", 181_095_168),
        ("large", 569_808_384),
    ],
)
def test_parameter_counts_match_pico(preset, expected):
    d = ModelDims.from_config(ModelConfig(preset=preset), tokenizer_vocab=50_280)
    assert d.vocab_size == 50_304  # OLMo's 50,280 padded to a multiple of 64
    with torch.device("meta"):
        model = PicoDecoder(d)
    assert model.num_parameters() == expected


def test_structure_untied_no_bias():
    model = PicoDecoder(dims())
    assert model.embedding_proj.weight.data_ptr() != model.de_embedding_proj.weight.data_ptr()
    assert all("bias" not in name for name, _ in model.named_parameters())
    assert model.layers[0].attention.k_proj.out_features == 4 * 2  # 4 KV heads x head_dim 2


def test_output_shape_and_dtype():
    model = PicoDecoder(dims())
    out = model(torch.randint(0, 64, (3, 10)))
    assert out.shape == (3, 10, 64) and out.dtype == torch.float32


def test_causal_masking():
    torch.manual_seed(0)
    model = PicoDecoder(dims()).eval()
    x = torch.randint(0, 64, (1, 12))
    y = x.clone()
    y[0, 8:] = (y[0, 8:] + 1) % 64  # change only the future
    a, b = model(x), model(y)
    torch.testing.assert_close(a[0, :8], b[0, :8])
    assert not torch.allclose(a[0, 8:], b[0, 8:])


def test_rope_matches_pico_complex_form():
    head_dim, t = 8, 6
    x = torch.randn(2, 3, t, head_dim)
    cos, sin = rope_tables(head_dim, t, 10000.0)
    ours = apply_rope(x, cos, sin)
    # pico-train: view adjacent pairs as complex numbers and multiply by e^{i * pos * freq}
    freqs = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    freqs_cis = torch.polar(torch.ones(t, head_dim // 2), torch.outer(torch.arange(t).float(), freqs))
    ref = torch.view_as_real(torch.view_as_complex(x.reshape(2, 3, t, -1, 2)) * freqs_cis).flatten(3)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_rope_scores_depend_on_relative_position_only():
    head_dim = 8
    cos, sin = rope_tables(head_dim, 40, 10000.0)
    q, k = torch.randn(head_dim), torch.randn(head_dim)

    def score(i, j):
        qi = apply_rope(q.view(1, 1, 1, -1).expand(1, 1, 40, -1), cos, sin)[0, 0, i]
        kj = apply_rope(k.view(1, 1, 1, -1).expand(1, 1, 40, -1), cos, sin)[0, 0, j]
        return float(qi @ kj)

    assert score(5, 2) == pytest.approx(score(30, 27), rel=1e-4)
    assert score(5, 2) != pytest.approx(score(5, 4), rel=1e-3)


def test_gqa_equals_repeated_kv_heads():
    torch.manual_seed(0)
    d = dims()
    attn = Attention(d).eval()
    x = torch.randn(2, 7, d.d_model)
    cos, sin = rope_tables(d.head_dim, 7, d.rope_theta)
    out = attn(x, cos, sin)
    q = apply_rope(attn.q_proj(x).view(2, 7, 12, 2).transpose(1, 2), cos, sin)
    k = apply_rope(attn.k_proj(x).view(2, 7, 4, 2).transpose(1, 2), cos, sin).repeat_interleave(3, dim=1)
    v = attn.v_proj(x).view(2, 7, 4, 2).transpose(1, 2).repeat_interleave(3, dim=1)
    ref = attn.o_proj(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(2, 7, -1))
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)


def test_dropout_only_in_training_mode():
    torch.manual_seed(0)
    model = PicoDecoder(dims(dropout=0.5, attention_dropout=0.5))
    x = torch.randint(0, 64, (2, 10))
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    assert not torch.allclose(model(x), model(x))


def test_init_is_small_not_unit_normal():
    torch.manual_seed(0)
    model = PicoDecoder(ModelDims(vocab_size=4096, d_model=96, hidden_dim=384))
    assert model.embedding_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
    x = torch.randint(0, 4096, (2, 16))
    loss = F.cross_entropy(model(x).flatten(0, 1), x.flatten())
    assert abs(loss.item() - math.log(4096)) < 0.5  # starts near uniform, not at pico's ~88


def test_sequence_longer_than_max_is_a_clear_error():
    model = PicoDecoder(dims(max_seq_len=8))
    with pytest.raises(ValueError, match="exceeds model max_seq_len 8"):
        model(torch.zeros(1, 9, dtype=torch.long))


def _sdpa_ops(model, x) -> set[str]:
    from torch.profiler import profile

    with profile() as prof:
        model(x[:, :-1], x[:, 1:]).backward()
    return {e.key for e in prof.key_averages() if "scaled_dot_product" in e.key}


@pytest.mark.parametrize(
    "kernel, op",
    [
        ("flash", "aten::_scaled_dot_product_flash_attention_for_cpu"),
        ("math", "aten::_scaled_dot_product_attention_math"),
    ],
)
def test_attention_kernels_run_the_chosen_backend_and_compute_the_same(kernel, op):
    """training.attention_kernel picks SDPA's backend (seen in the profile), with the same loss and
    gradients as PyTorch's own choice."""
    d = dims()
    x = torch.randint(0, 64, (3, 17))
    results = {}
    for k in ("auto", kernel):
        torch.manual_seed(0)
        model = PicoDecoder(d)
        model.attention_kernel = check_attention_kernel(k, d, torch.device("cpu"), torch.float32)
        ops = _sdpa_ops(model, x)
        results[k] = model(x[:, :-1], x[:, 1:]), [p.grad for p in model.parameters()]
    assert op in ops
    torch.testing.assert_close(results[kernel][0], results["auto"][0], atol=1e-6, rtol=1e-6)
    for g, ref in zip(results[kernel][1], results["auto"][1]):
        torch.testing.assert_close(g, ref, atol=1e-6, rtol=1e-5)


def test_an_attention_kernel_that_cannot_run_is_refused_naming_the_key_and_the_reason():
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match=r"^training.attention_kernel=cudnn needs CUDA, not cpu"):
        check_attention_kernel("cudnn", dims(), cpu, torch.float32)
    with pytest.raises(ValueError, match=r"^training.attention_kernel=flash: .*attention_dropout 0.1\): .*dropout"):
        check_attention_kernel("flash", dims(attention_dropout=0.1), cpu, torch.float32)
    assert check_attention_kernel("math", dims(attention_dropout=0.1), cpu, torch.float32) == "math"
    assert check_attention_kernel("flash", dims(), cpu, torch.bfloat16) == "flash"
