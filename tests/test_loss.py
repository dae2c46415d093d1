"""The fused, chunked vocab projection + cross-entropy equals plain autodiff of the unfused loss."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close

from jaxgpt.errors import ConfigError
from jaxgpt.model.loss import lm_loss, token_losses
from jaxgpt.sharding import make_mesh
from jaxgpt.train.step import compiler_options

B, T, D, V = 2, 12, 16, 37


def _inputs(seed=0):
    k_h, k_w, k_t = jax.random.split(jax.random.key(seed), 3)
    h_BxTxD = jax.random.normal(k_h, (B, T, D))
    w_VxD = 0.5 * jax.random.normal(k_w, (V, D))
    targets_BxT = jax.random.randint(k_t, (B, T), 0, V)
    return h_BxTxD, w_VxD, targets_BxT


def _reference(h_BxTxD, w_VxD, targets_BxT, z_loss, mask_BxT=None):
    """Plain autodiff of the unfused loss; with a mask, the mean over the masked tokens."""
    logits_BxTxV = jnp.einsum("BTD,VD->BTV", h_BxTxD, w_VxD, precision="highest")
    lse_BxT = jax.nn.logsumexp(logits_BxTxV, axis=-1)
    ce_BxT = lse_BxT - jnp.take_along_axis(logits_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
    if mask_BxT is None:
        return jnp.mean(ce_BxT) + z_loss * jnp.mean(lse_BxT**2), jnp.mean(ce_BxT)
    mean = lambda x: jnp.sum(jnp.where(mask_BxT, x, 0.0)) / jnp.sum(mask_BxT)  # noqa: E731
    return mean(ce_BxT) + z_loss * mean(lse_BxT**2), mean(ce_BxT)


@pytest.mark.parametrize("chunks", [1, 3, 4, 12])
@pytest.mark.parametrize("z_loss", [0.0, 0.1])
def test_value_and_grads_equal_autodiff(chunks, z_loss):
    h, w, targets = _inputs()
    grad = jax.value_and_grad(lambda h, w: lm_loss(h, w, targets, z_loss, chunks), argnums=(0, 1), has_aux=True)
    ref_grad = jax.value_and_grad(lambda h, w: _reference(h, w, targets, z_loss), argnums=(0, 1), has_aux=True)
    (loss, ce), (dh, dw) = jax.jit(grad)(h, w)
    (ref_loss, ref_ce), (ref_dh, ref_dw) = ref_grad(h, w)
    assert_close(loss, ref_loss, depth=V)  # each token's logsumexp sums V exps
    assert_close(ce, ref_ce, depth=V)
    assert_close(dh, ref_dh, depth=V)  # d h sums over the vocab rows
    assert_close(dw, ref_dw, depth=B * T)  # d W sums over the tokens
    assert (loss > ce) == (z_loss > 0)


@pytest.mark.parametrize("chunks", [1, 4])
@pytest.mark.parametrize("z_loss", [0.0, 0.1])
def test_masked_value_and_grads_equal_autodiff_of_the_masked_mean(chunks, z_loss):
    h, w, targets = _inputs(4)
    mask = jax.random.bernoulli(jax.random.key(5), 0.4, (B, T))
    weights = mask / mask.sum()
    grad = jax.value_and_grad(
        lambda h, w: lm_loss(h, w, targets, z_loss, chunks, weights), argnums=(0, 1), has_aux=True
    )
    ref_grad = jax.value_and_grad(lambda h, w: _reference(h, w, targets, z_loss, mask), argnums=(0, 1), has_aux=True)
    (loss, ce), (dh, dw) = jax.jit(grad)(h, w)
    (ref_loss, ref_ce), (ref_dh, ref_dw) = ref_grad(h, w)
    assert_close(loss, ref_loss, depth=V)
    assert_close(ce, ref_ce, depth=V)
    assert_close(dh, ref_dh, depth=V)
    assert_close(dw, ref_dw, depth=B * T)
    assert not np.asarray(dh)[~np.asarray(mask)].any()  # a token outside the mask gets no gradient at all


def test_all_ones_weights_are_the_plain_mean():
    h, w, targets = _inputs(6)
    weights = jnp.full((B, T), 1.0 / (B * T))
    plain = jax.value_and_grad(lambda h: lm_loss(h, w, targets, 0.1, 4)[0])(h)
    weighted = jax.value_and_grad(lambda h: lm_loss(h, w, targets, 0.1, 4, weights)[0])(h)
    assert_close(weighted[0], plain[0], depth=V)
    assert_close(weighted[1], plain[1], depth=V)


def test_cotangent_scales_gradients():
    h, w, targets = _inputs(1)
    dh = jax.grad(lambda h: 3.0 * lm_loss(h, w, targets, 0.1, 4)[0])(h)
    ref_dh = jax.grad(lambda h: 3.0 * _reference(h, w, targets, 0.1)[0])(h)
    assert_close(dh, ref_dh, depth=V)


def test_ce_gradient_without_z_loss_and_refused_with_it():
    h, w, targets = _inputs(2)
    dh = jax.grad(lambda h: lm_loss(h, w, targets, 0.0, 2)[1])(h)
    assert_close(dh, jax.grad(lambda h: _reference(h, w, targets, 0.0)[1])(h), depth=V)
    with pytest.raises(NotImplementedError, match="differentiate `loss`"):
        jax.grad(lambda h: lm_loss(h, w, targets, 0.1, 2)[1])(h)


def test_bf16_hidden_states_keep_float32_weight_gradient():
    h, w, targets = _inputs(3)
    (loss, _), (dh, dw) = jax.value_and_grad(lambda h, w: lm_loss(h, w, targets, 0.0, 4), argnums=(0, 1), has_aux=True)(
        h.astype(jnp.bfloat16), w
    )
    assert dh.dtype == jnp.bfloat16 and dw.dtype == jnp.float32 and loss.dtype == jnp.float32
    (ref_loss, _), (ref_dh, ref_dw) = jax.value_and_grad(
        lambda h, w: _reference(h, w, targets, 0.0), argnums=(0, 1), has_aux=True
    )(h, w)
    # h rounded to bfloat16 (and, for d h and d W, the exps the gradient matmuls read)
    assert_close(loss, ref_loss, depth=D, dtype=jnp.bfloat16)  # each logit sums D products of rounded h
    assert_close(dh.astype(jnp.float32), ref_dh, depth=V, dtype=jnp.bfloat16)
    assert_close(dw, ref_dw, depth=B * T, dtype=jnp.bfloat16)


def test_bf16_gradients_keep_the_target_entries_in_float32():
    """With bf16 hidden states only the off-target exps pass through bf16; each token's target entry of d loss / d
    logits, which dominates d W while predictions are unsure, is added in float32. Rounding the whole normalised
    gradient to bf16 (the earlier scheme) put d W 7e-4 off float32 here; now it is 4e-5 off."""
    B, T, D, V = 4, 64, 64, 4096
    k_h, k_w, k_t = jax.random.split(jax.random.key(4), 3)
    targets = jax.random.randint(k_t, (B, T), 0, V)
    w = jax.random.normal(k_w, (V, D)) / np.sqrt(D)
    h = (w[targets] + 0.5 * jax.random.normal(k_h, (B, T, D))).astype(jnp.bfloat16)
    _, (dh, dw) = jax.value_and_grad(lambda h, w: lm_loss(h, w, targets, 0.0, 4), argnums=(0, 1), has_aux=True)(h, w)
    # the reference sees the operands the bf16 matmuls see: h as given, w rounded to bf16
    w_lo = w.astype(jnp.bfloat16).astype(jnp.float32)
    _, (ref_dh, ref_dw) = jax.value_and_grad(lambda h, w: _reference(h, w, targets, 0.0), argnums=(0, 1), has_aux=True)(
        h.astype(jnp.float32), w_lo
    )

    def rel_error(x, ref):
        return float(jnp.linalg.norm(x.astype(jnp.float32) - ref) / jnp.linalg.norm(ref))

    assert rel_error(dw, ref_dw) < 2e-4
    assert rel_error(dh, ref_dh) < 5e-3  # d h itself is returned in bf16


def test_token_losses_per_token():
    h, w, targets = _inputs(4)
    ce_BxT, lse_BxT = token_losses(h, w, targets, chunks=3)
    logits_BxTxV = jnp.einsum("BTD,VD->BTV", h, w, precision="highest")
    ref_lse_BxT = jax.nn.logsumexp(logits_BxTxV, axis=-1)
    ref_ce_BxT = ref_lse_BxT - jnp.take_along_axis(logits_BxTxV, targets[..., None], axis=-1)[..., 0]
    assert ce_BxT.shape == (B, T)
    assert_close(ce_BxT, ref_ce_BxT, depth=V)
    assert_close(lse_BxT, ref_lse_BxT, depth=V)


@pytest.mark.parametrize("chunks", [0, 5, 2.0])
def test_chunks_must_divide_the_sequence(chunks):
    h, w, targets = _inputs()
    with pytest.raises(ConfigError, match=f"train.loss_chunks={chunks!r} must be a positive int that divides"):
        lm_loss(h, w, targets, 0.0, chunks)


@pytest.mark.parametrize("rows", [2, 12, 16])
def test_on_an_fsdp8_mesh_equals_autodiff(rows):
    """Inside the step's mesh (8 batch shards), also when 8 does not divide the rows (d W then sums per gcd shard)."""
    mesh = make_mesh(1, 8, 1)
    k_h, k_w, k_t = jax.random.split(jax.random.key(rows), 3)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    h = jax.device_put(jax.random.normal(k_h, (rows, T, D)), replicated)
    w = jax.device_put(0.5 * jax.random.normal(k_w, (V, D)), replicated)
    targets = jax.device_put(jax.random.randint(k_t, (rows, T), 0, V), replicated)

    @jax.jit
    def fused(h, w):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return jax.value_and_grad(lambda h, w: lm_loss(h, w, targets, 0.1, 4), argnums=(0, 1), has_aux=True)(h, w)

    (loss, ce), (dh, dw) = fused(h, w)
    (ref_loss, ref_ce), (ref_dh, ref_dw) = jax.value_and_grad(
        lambda h, w: _reference(h, w, targets, 0.1), argnums=(0, 1), has_aux=True
    )(h, w)
    assert_close(loss, ref_loss, depth=V)
    assert_close(ce, ref_ce, depth=V)
    assert_close(dh, ref_dh, depth=V)
    assert_close(dw, ref_dw, depth=rows * T)


def test_no_vocab_sized_transpose_on_cpu():
    """d W sums over one flat row axis per batch shard, so XLA's CPU backend reads the [rows, V] token gradients as
    they lie; summing over (rows, positions) made it copy each chunk's gradients into a transposed [V, rows] layout
    first (206 MB per chunk at gpt60m)."""
    h, w, targets = _inputs()
    loss_grad = jax.grad(lambda h, w: lm_loss(h, w, targets, 0.0, 3)[0], argnums=(0, 1))
    grad = jax.jit(loss_grad, compiler_options=compiler_options("cpu"))
    text = grad.lower(h, w).compile().as_text()
    transposes = re.findall(r"= (\S+) transpose\(", text)
    assert not [shape for shape in transposes if str(V) in shape], transposes
