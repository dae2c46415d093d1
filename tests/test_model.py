"""The GPT module: shapes, causality, parameter counts, GQA, and logits equal to Modalities' GPT2LLM."""

import dataclasses
import json
import re
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import MODALITIES_PYTHON, REPO, assert_close, needs_modalities
from flax import nnx

from jaxgpt.errors import ConfigError
from jaxgpt.model import GPT, ModelConfig, count_params, flops_per_token, peak_flops
from jaxgpt.model.attention import attention_implementation, causal_attention, query_block
from jaxgpt.model.layers import NORMS, LayerNorm, LayerNormNoBias, Linear, RMSNorm
from jaxgpt.model.loss import lm_loss
from jaxgpt.train.step import compiler_options

SMALL = ModelConfig(
    vocab_size=256, n_layer=2, n_head_q=4, n_head_kv=2, n_embd=32, ffn_hidden=128, seq_len=16
)  # the rest: ModelConfig's defaults

VARIANTS = {
    "gqa_rope_swiglu_tied": {},
    "mha_gelu_learned_bias_untied": dict(
        n_head_kv=4, mlp="gelu", pos_emb="learned", use_bias=True, tie_embeddings=False
    ),
    "rms_qknorm_nopos": dict(norm="rms", qk_norm=True, pos_emb="none"),
    "layer_qknorm_mqa": dict(n_head_kv=1, qk_norm=True),
    "rms_qknorm_rope_gqa": dict(norm="rms", qk_norm=True),
}


def _tokens(B=2, T=16, V=256, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, V, (B, T)), jnp.int32)


@nnx.jit
def _logits(model, tokens_BxT):
    return model(tokens_BxT)


def test_logits_shape_and_dtype():
    model = GPT(SMALL, rngs=nnx.Rngs(0))
    logits = _logits(model, _tokens())
    assert logits.shape == (2, 16, 256) and logits.dtype == jnp.float32
    bf16 = GPT(SMALL, rngs=nnx.Rngs(0), dtype=jnp.bfloat16)
    bf16_logits = _logits(bf16, _tokens())
    assert bf16_logits.dtype == jnp.float32  # logits stay float32 under bf16 compute
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(bf16, nnx.Param)))
    # each block rounds its activations to bfloat16 about 8 times (norms, q/k/v, attention, MLP): 16 roundings in all
    assert_close(bf16_logits, logits, depth=16, dtype=jnp.bfloat16)


def test_bf16_gradients_stay_close_to_float32():
    """bf16 compute, float32 params: every parameter's gradient within 2% of float32's (relative L2 error).
    Zipf tokens: one token appears over 1,000 times, so its row of wte's gradient sums over 1,000 rows. That sum was
    14% off when autodiff added them up in bf16; in float32 (model.lookup) it is 0.3% off, like the rest."""
    cfg = dataclasses.replace(SMALL, n_embd=64, n_head_kv=4, tie_embeddings=False, seq_len=512)
    zipf_BxT = np.minimum(np.random.default_rng(0).zipf(1.3, (8, 513)) - 1, 255).astype(np.int32)
    assert np.bincount(zipf_BxT.ravel()).max() > 1000
    inputs_BxT, targets_BxT = jnp.asarray(zipf_BxT[:, :-1]), jnp.asarray(zipf_BxT[:, 1:])

    def grads(dtype):
        graphdef, params = nnx.split(GPT(cfg, rngs=nnx.Rngs(0), dtype=dtype), nnx.Param)

        def loss(params):
            model = nnx.merge(graphdef, params)
            return lm_loss(model.hidden(inputs_BxT), model.head_weight(), targets_BxT, 0.0, 4)[0]

        flat = jax.tree_util.tree_flatten_with_path(jax.jit(jax.grad(loss))(params))[0]
        return {jax.tree_util.keystr(path, simple=True, separator="."): np.asarray(g, np.float64) for path, g in flat}

    want, got = grads(jnp.float32), grads(jnp.bfloat16)
    errors = {k: np.linalg.norm(got[k] - want[k]) / np.linalg.norm(want[k]) for k in want}
    assert "wte.weight.value" in errors, sorted(errors)
    worst = max(errors, key=errors.get)
    assert errors[worst] < 2e-2, f"{worst}: {errors[worst]:.2e}"


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_causal_by_gradient(name):
    """d(logits at t)/d(embeddings at s) is zero exactly when s > t."""
    cfg = dataclasses.replace(SMALL, **VARIANTS[name])
    model = GPT(cfg, rngs=nnx.Rngs(1))
    x_BxTxD = nnx.jit(lambda model, tokens: model.embed(tokens))(model, _tokens())
    t = 7

    def logits_at_t(x_BxTxD):
        return model.project(model.layers(x_BxTxD)[0])[:, t].sum()

    grad_BxTxD = jax.jit(jax.grad(logits_at_t))(x_BxTxD)
    per_position_T = jnp.abs(grad_BxTxD).sum(axis=(0, 2))
    assert np.all(per_position_T[t + 1 :] == 0.0), per_position_T
    assert np.all(per_position_T[: t + 1] > 0.0), per_position_T


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_count_params_formula_matches_module(name):
    cfg = dataclasses.replace(SMALL, **VARIANTS[name])
    model = nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(0)))
    actual = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert count_params(cfg) == actual


def test_gpt60m_param_count_is_gpt2llms_59_855_872():
    cfg = dataclasses.replace(
        SMALL, vocab_size=50304, n_layer=10, n_head_q=8, n_head_kv=8, n_embd=512, ffn_hidden=2048, seq_len=512
    )
    assert cfg.mlp_hidden == 1536
    model = nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(0)))
    assert sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))) == 59_855_872  # GPT2LLM's count
    assert count_params(cfg) == 59_855_872
    # 6 * 59,855,872 (tied lm_head counted) + 6 * 10 layers * 512 * 512 (causal attention)
    assert flops_per_token(cfg, 512) == 6 * 59_855_872 + 6 * 10 * 512 * 512


def test_gqa_equals_repeated_kv_heads():
    """A GQA model equals the MHA model whose k/v heads are the GQA heads repeated (q head h uses kv head h // 2)."""
    gqa = GPT(SMALL, rngs=nnx.Rngs(2))
    mha_cfg = dataclasses.replace(SMALL, n_head_kv=SMALL.n_head_q)
    mha = GPT(mha_cfg, rngs=nnx.Rngs(3))
    gqa_state, mha_state = nnx.state(gqa, nnx.Param), nnx.state(mha, nnx.Param)
    K, N, G = SMALL.head_dim, SMALL.n_head_kv, SMALL.n_head_q // SMALL.n_head_kv
    for path, var in nnx.to_flat_state(gqa_state):
        value = var.get_value()
        if path[-2] in ("k_attn", "v_attn"):
            D = value.shape[0]
            value = jnp.repeat(value.reshape(D, N, K), G, axis=1).reshape(D, N * G * K)  # [D, N*K] -> [D, H*K]
        target = mha_state
        for key in path:
            target = target[key]
        target.set_value(value)
    nnx.update(mha, mha_state)
    assert_close(_logits(gqa, _tokens()), _logits(mha, _tokens()), depth=SMALL.mlp_hidden)  # the longest sum: F


def test_init_scales():
    cfg = dataclasses.replace(SMALL, n_embd=256, ffn_hidden=1024, n_layer=8)
    model = GPT(cfg, rngs=nnx.Rngs(0))
    block = model.h[0]
    assert abs(float(model.wte.weight[...].std()) - 0.02) < 0.002
    assert abs(float(block.attn.q_attn.kernel[...].std()) - 0.02) < 0.002
    out_std = 0.02 / np.sqrt(2 * 8)
    assert abs(float(block.attn.c_proj.kernel[...].std()) - out_std) < 0.1 * out_std
    assert abs(float(block.mlp.W_2.kernel[...].std()) - out_std) < 0.1 * out_std
    assert np.all(block.attention_norm.weight[...] == 1.0) and np.all(block.attention_norm.bias[...] == 0.0)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(n_head_kv=3), "model.n_head_kv=3 must divide model.n_head_q=4"),
        (dict(n_head_q=5), "model.n_head_q=5 must divide model.n_embd=32"),
        (dict(mlp="relu"), "model.mlp='relu'"),
        (dict(dropout=1.0), "model.dropout=1.0"),
        (dict(seq_len=0), "data.seq_len=0"),
        (dict(n_layer=2.0), "model.n_layer=2.0"),
    ],
)
def test_model_config_errors_name_the_key(change, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        dataclasses.replace(SMALL, **change)


def test_sequence_longer_than_positions_is_an_error():
    model = GPT(SMALL, rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match="exceeds the model's data.seq_len=16"):
        _logits(model, _tokens(T=17))


def test_dropout_needs_rngs_and_changes_outputs():
    cfg = dataclasses.replace(SMALL, dropout=0.5)
    model = GPT(cfg, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="model.dropout=0.5"):
        model(_tokens(), deterministic=False)
    train = nnx.jit(lambda model, tokens, key: model(tokens, deterministic=False, rngs=nnx.Rngs(dropout=key)))
    a, b = train(model, _tokens(), jax.random.key(1)), train(model, _tokens(), jax.random.key(1))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, train(model, _tokens(), jax.random.key(2)))
    assert not np.allclose(a, _logits(model, _tokens()))


def test_peak_flops_table():
    class Device:
        def __init__(self, kind, platform="gpu"):
            self.device_kind, self.platform = kind, platform

    assert peak_flops(Device("NVIDIA H100 80GB HBM3")) == 989e12
    assert peak_flops(Device("NVIDIA A100-SXM4-40GB")) == 312e12
    # variants whose names contain another entry's name
    assert peak_flops(Device("NVIDIA H100 PCIe")) == 756e12
    assert peak_flops(Device("NVIDIA H200 NVL")) == 835e12
    assert peak_flops(Device("NVIDIA L40")) == 181e12
    assert peak_flops(Device("NVIDIA L4")) == 121e12
    assert peak_flops(Device("cpu", "cpu")) is None
    assert peak_flops(Device("Some Future Chip")) is None


@needs_modalities
@pytest.mark.parametrize("name", ["rms_qknorm_rope_gqa", "mha_gelu_learned_bias_untied"])
def test_logits_equal_modalities_gpt2llm(name, tmp_path):
    """Same weights in Modalities' GPT2LLM (PyTorch) give the same logits: names, layouts and math all match."""
    # Modalities wants n_embd, ffn_hidden and vocab divisible by 128.
    cfg = dataclasses.replace(SMALL, n_embd=128, ffn_hidden=512, **VARIANTS[name])
    model = GPT(cfg, rngs=nnx.Rngs(4))
    params = nnx.state(model, nnx.Param)
    # Norm weights and biases away from 1 and 0, so a misplaced norm cannot hide.
    for i, (path, var) in enumerate(nnx.to_flat_state(params)):
        if "norm" in path[-2]:
            var.set_value(var.get_value() + 0.1 * jax.random.normal(jax.random.key(i), var.shape))
    nnx.update(model, params)
    weights = {".".join(map(str, path)): np.asarray(var.get_value()) for path, var in nnx.to_flat_state(params)}
    np.savez(tmp_path / "w.npz", **weights)
    tokens = np.asarray(_tokens(B=2, T=16, V=cfg.vocab_size, seed=5))
    np.save(tmp_path / "x.npy", tokens)
    spec = {"mode": "logits", "model": dataclasses.asdict(cfg), "weights": str(tmp_path / "w.npz")}
    spec |= {"tokens": str(tmp_path / "x.npy"), "out": str(tmp_path / "y.npy")}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    script = REPO / "tools" / "modalities_gpt2.py"
    subprocess.run([str(MODALITIES_PYTHON), str(script), str(tmp_path / "spec.json")], check=True, timeout=120)
    expected = np.load(tmp_path / "y.npy")
    assert_close(_logits(model, jnp.asarray(tokens)), expected, depth=cfg.mlp_hidden)  # the longest sum: F


@pytest.mark.parametrize("T", [129, 300, 512])
def test_query_blocked_attention_equals_one_call(T):
    """The XLA path's query blocks (128 rows, keys up to each block's end) == one causal call, values and grads."""
    B, H, N, K = 2, 4, 2, 8
    k_q, k_k, k_v, k_g = jax.random.split(jax.random.key(0), 4)
    q_BxTxHxK = jax.random.normal(k_q, (B, T, H, K))
    k_BxTxNxK = jax.random.normal(k_k, (B, T, N, K))
    v_BxTxNxK = jax.random.normal(k_v, (B, T, N, K))
    probe_BxTxHxK = jax.random.normal(k_g, (B, T, H, K))

    def blocked(q, k, v):
        return jnp.sum(causal_attention(q, k, v, "xla", block=128) * probe_BxTxHxK)

    def whole(q, k, v):
        return jnp.sum(jax.nn.dot_product_attention(q, k, v, is_causal=True) * probe_BxTxHxK)

    out, grads = jax.value_and_grad(blocked, argnums=(0, 1, 2))(q_BxTxHxK, k_BxTxNxK, v_BxTxNxK)
    ref_out, ref_grads = jax.value_and_grad(whole, argnums=(0, 1, 2))(q_BxTxHxK, k_BxTxNxK, v_BxTxNxK)
    assert_close(out, ref_out, depth=B * T * H * K)  # the probe's sum over every output
    for g, ref_g in zip(grads, ref_grads):
        assert_close(g, ref_g, depth=T)  # softmax sums over the T keys


def test_attention_choice():
    bf16, f32 = jnp.bfloat16, jnp.float32
    assert attention_implementation("auto", bf16, 64, backend="gpu", compute_capability="9.0") == "cudnn"
    assert attention_implementation("cudnn", bf16, 128, backend="gpu", compute_capability="9.0") == "cudnn"
    assert (
        attention_implementation("auto", f32, 64, backend="gpu", compute_capability="9.0") == "xla"
    )  # cuDNN has no float32 kernel
    assert (
        attention_implementation("auto", bf16, 60, backend="gpu", compute_capability="9.0") == "xla"
    )  # head dim not a multiple of 8
    assert attention_implementation("auto", bf16, 256, backend="gpu", compute_capability="9.0") == "xla"  # > 128
    assert attention_implementation("auto", bf16, 64, backend="gpu", compute_capability="7.5") == "xla"  # pre-Ampere
    assert attention_implementation("auto", bf16, 64, backend="gpu", compute_capability="10.0a") == "cudnn"
    assert attention_implementation("auto", bf16, 64, backend="cpu") == "xla"
    assert attention_implementation("xla", bf16, 64, backend="gpu", compute_capability="9.0") == "xla"
    assert (
        query_block("xla", "cpu") == 128 and query_block("xla", "gpu") is None and query_block("cudnn", "gpu") is None
    )
    with pytest.raises(ConfigError, match="train.attention='flash'"):
        attention_implementation("flash", bf16, 64)
    with pytest.raises(
        ConfigError, match=r"train.attention='cudnn' cannot run here: it runs on GPUs only \(this is cpu\)"
    ):
        attention_implementation("cudnn", bf16, 64, backend="cpu")
    with pytest.raises(ConfigError, match=r"compute_dtype='bfloat16' \(got float32\).*head dim .* \(got 200\)"):
        attention_implementation("cudnn", f32, 200, backend="gpu", compute_capability="9.0")


def test_linear_gradients_need_no_transposed_copies():
    """A Linear on [B, T, I] is one 2-D matmul, so on CPU its kernel gradient x^T @ dy reads x and dy as they lie.
    The 3-D einsum it replaced made XLA copy activations into a transposed layout first (an HLO transpose)."""
    linear = Linear(32, 48, ("embed", "mlp"), use_bias=True, std=0.02, dtype=jnp.float32, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(linear)
    x_BxTxI = jax.random.normal(jax.random.key(1), (4, 64, 32))

    def f(params, x_BxTxI):
        return jnp.sum(jnp.sin(nnx.merge(graphdef, params)(jnp.tanh(x_BxTxI))))

    grad = jax.jit(jax.grad(f, argnums=(0, 1)), compiler_options=compiler_options("cpu"))
    text = grad.lower(params, x_BxTxI).compile().as_text()
    assert not re.findall(r"= \S+ transpose\(", text)
    # and it is the same map as the einsum
    y_ref = jnp.einsum("BTI,IO->BTO", x_BxTxI, linear.kernel[...]) + linear.bias[...]
    assert_close(linear(x_BxTxI), y_ref, depth=32)  # I = 32 products per output


def test_layernorm_without_bias_is_layernorm_with_a_zero_bias():
    x_BxTxD = jax.random.normal(jax.random.key(0), (2, 5, 16)) * 3.0 + 1.0
    weight = jax.random.normal(jax.random.key(1), (16,))
    with_bias, no_bias = LayerNorm(16, 1e-5, jnp.float32), LayerNormNoBias(16, 1e-5, jnp.float32)
    with_bias.weight[...], no_bias.weight[...] = weight, weight
    np.testing.assert_array_equal(no_bias(x_BxTxD), with_bias(x_BxTxD))
    assert no_bias.bias is None and not np.allclose(no_bias(x_BxTxD), RMSNorm(16, 1e-5, jnp.float32)(x_BxTxD))
    cfg = dataclasses.replace(SMALL, norm="layer_no_bias")
    params = nnx.state(nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(0))), nnx.Param)
    assert sum(x.size for x in jax.tree.leaves(params)) == count_params(cfg) == count_params(SMALL) - 5 * 32


def test_a_new_norm_is_one_class_and_one_registry_entry(monkeypatch):
    class ScaleNorm(nnx.Module):
        """x / rms(x) * g with one scalar g."""

        def __init__(self, dim, eps, dtype):
            self.g = nnx.Param(jnp.ones(()), out_sharding=(), eager_sharding=False)
            self.eps, self.dtype = eps, dtype

        def __call__(self, x):
            x32 = x.astype(jnp.float32)
            y = self.g[...] * x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + self.eps)
            return y.astype(self.dtype)

        @staticmethod
        def num_params(dim):
            return 1

    monkeypatch.setitem(NORMS, "scale", ScaleNorm)
    cfg = dataclasses.replace(SMALL, norm="scale", qk_norm=True)
    model = GPT(cfg, rngs=nnx.Rngs(0))
    assert isinstance(model.h[0].attn.q_norm, ScaleNorm) and isinstance(model.lm_head_norm, ScaleNorm)
    assert sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))) == count_params(cfg)
    assert np.isfinite(np.asarray(_logits(model, _tokens()))).all()
    monkeypatch.delitem(NORMS, "scale")
    with pytest.raises(ConfigError, match=r"model.norm='scale' must be one of \('layer', 'layer_no_bias', 'rms'\)"):
        dataclasses.replace(SMALL, norm="scale")
