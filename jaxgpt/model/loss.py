"""The vocab projection fused with the cross-entropy, chunked along the sequence, gradients computed in the forward.

Legend: B batch, T sequence, N chunks, C = T / N tokens per chunk, D model dim, V vocab, S batch shards (devices the
rows are split over), R = B C / S token rows of one batch shard.

Plain autodiff of `logits = h @ W.T; loss = mean(logsumexp(logits) - logits[target])` keeps float32 logits [B, T, V]
(824 MB for gpt60m's 8 x 512 x 50304) for the backward pass, reads and writes them several times, and on GPU runs
the two backward matmuls on float32 cotangents. Here, chunk by chunk along T, one lax.scan computes the logits, the
log-partition and, since the loss is a plain mean over tokens, the gradients right away; the two gradient matmuls (d h
and d W) consume them while the chunk is still in cache. The backward pass only scales those gradients by the incoming
cotangent. FLOPs are the same as autodiff's (2VD forward, 4VD backward per token); no logits are recomputed, none
outlive their chunk.

After the logits matmul, two passes read each float32 chunk: its row max, then one pass that both sums the exps and
writes them, in the compute dtype, as the gradient matmuls' operand. That works because d loss / d logit_v =
scale * (f exp_v / sum - [v = target]), f = 1 + 2 z lse, is exp_v times a per-row factor off the target, and a per-row
factor commutes with both matmuls (it scales d h's rows after, and h's rows before, the d W matmul). The target's own
entry, where f p - 1 cancels when p is near 1, is zeroed in that operand and added in float32 (d W: a scatter of one row
per token). Writing the normalised gradient instead needs lse first, so a third pass, which was slower on an H200
(BENCHMARKS.md, "Choices"); and with bf16 hidden states d W lands closer to float64, since its target rows no longer
go through bf16.

Across chunks, d W is summed per batch shard ([S, V, D], S = the data x fsdp devices the rows are split over), so each
device adds up only its own rows and the cross-device reduction happens once after the last chunk, not once per chunk.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from jaxgpt.errors import ConfigError
from jaxgpt.sharding import batch_shards, constrain


def _to_chunks(x_BxT: jax.Array, chunks: int) -> jax.Array:
    """[B, T, ...] -> [T/C, B, C, ...]: the scan walks the first axis; each device keeps its own rows."""
    B, T = x_BxT.shape[:2]
    x_BxNxC = x_BxT.reshape(B, chunks, T // chunks, *x_BxT.shape[2:])
    return jnp.moveaxis(x_BxNxC, 1, 0)


def _from_chunks(x_NxBxC: jax.Array) -> jax.Array:
    """[T/C, B, C, ...] -> [B, T, ...]."""
    N, B, C = x_NxBxC.shape[:3]
    return jnp.moveaxis(x_NxBxC, 0, 1).reshape(B, N * C, *x_NxBxC.shape[3:])


def check_chunks(T: int, chunks: int) -> None:
    if not isinstance(chunks, int) or isinstance(chunks, bool) or chunks < 1 or T % chunks:
        raise ConfigError(f"train.loss_chunks={chunks!r} must be a positive int that divides data.seq_len={T}")


def vocab_logits(h_BxTxD: jax.Array, w_VxD: jax.Array) -> jax.Array:
    """float32 logits [B, T, V] of hidden states against the vocab projection (both in the compute dtype)."""
    logits_BxTxV = jnp.einsum("BTD,VD->BTV", h_BxTxD, w_VxD, preferred_element_type=jnp.float32)
    return constrain(logits_BxTxV, "batch", "seq", "vocab")


def _target_logit(logits_BxCxV: jax.Array, targets_BxC: jax.Array) -> jax.Array:
    return jnp.take_along_axis(logits_BxCxV, targets_BxC[..., None], axis=-1)[..., 0]


def token_losses(h_BxTxD: jax.Array, w_VxD: jax.Array, targets_BxT: jax.Array, chunks: int = 1):
    """Cross-entropy and log-partition per token [B, T], float32, without gradients kept (evaluation)."""
    check_chunks(h_BxTxD.shape[1], chunks)
    w_VxD = w_VxD.astype(h_BxTxD.dtype)

    def chunk(_, xs):
        h_BxCxD, targets_BxC = xs
        logits_BxCxV = vocab_logits(h_BxCxD, w_VxD)
        lse_BxC = jax.nn.logsumexp(logits_BxCxV, axis=-1)
        return None, (lse_BxC - _target_logit(logits_BxCxV, targets_BxC), lse_BxC)

    _, (ce_NxBxC, lse_NxBxC) = jax.lax.scan(chunk, None, (_to_chunks(h_BxTxD, chunks), _to_chunks(targets_BxT, chunks)))
    return _from_chunks(ce_NxBxC), _from_chunks(lse_NxBxC)


def lm_loss(h_BxTxD, w_VxD, targets_BxT, z_loss: float, chunks: int, weights_BxT: jax.Array | None = None):
    """(loss, ce): ce = mean cross-entropy over all B*T tokens, loss = ce + z_loss * mean(lse^2), both float32.

    h_BxTxD: final hidden states in the compute dtype; w_VxD: the vocab projection in float32 (cast to h's dtype for
    the matmuls; its gradient comes back in float32). chunks: how many pieces T is cut into (1: one piece).
    weights_BxT: float32 weight per token in place of the mean's 1 / (B T), e.g. a loss mask over its count; the sums
    are then weighted sums (the mask enters the fused pass: still no float32 logits kept).
    Differentiate `loss`; `ce` is a metric (return it as has_aux). With z_loss > 0 a cotangent reaching `ce` is refused,
    also a zero one that a transform made concrete: the gradients kept are those of `loss`.
    """
    return _lm_loss(h_BxTxD, w_VxD, targets_BxT, weights_BxT, z_loss, chunks)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _lm_loss(h_BxTxD, w_VxD, targets_BxT, weights_BxT, z_loss, chunks):
    ce_BxT, lse_BxT = token_losses(h_BxTxD, w_VxD, targets_BxT, chunks)
    if weights_BxT is None:
        ce = ce_BxT.mean()
        return ce + z_loss * jnp.mean(lse_BxT**2), ce
    ce = jnp.sum(ce_BxT * weights_BxT)
    return ce + z_loss * jnp.sum(lse_BxT**2 * weights_BxT), ce


def _lm_loss_fwd(h_BxTxD, w_VxD, targets_BxT, weights_BxT, z_loss, chunks):
    h_BxTxD, w_VxD, targets_BxT = (p.value for p in (h_BxTxD, w_VxD, targets_BxT))
    weights_BxT = None if weights_BxT is None else weights_BxT.value
    B, T, D = h_BxTxD.shape
    check_chunks(T, chunks)
    # S divides B under the meshes the step builds; gcd keeps odd direct calls correct (just less local)
    dtype, scale, S = h_BxTxD.dtype, 1.0 / (B * T), math.gcd(B, batch_shards())
    # a token's weight: the mean's 1 / (B T), or weights_BxT, which then also replaces the final scaling of the sums
    final_scale = scale if weights_BxT is None else 1.0
    # whole along D, split along V as the logits are: the target rows' lookup below is then local to each V shard, and
    # with tied embeddings this is the layout the token lookup gathers too, so one FSDP all-gather of W serves both
    w_lo_VxD = constrain(w_VxD.astype(dtype), "vocab", None)

    def chunk(carry, xs):
        dw_SxVxD, ce_B, lse2_B = carry
        h_BxCxD, targets_BxC, weights_BxC = xs
        scale_BxC = scale if weights_BxC is None else weights_BxC
        logits_BxCxV = vocab_logits(h_BxCxD, w_lo_VxD)
        max_BxC = logits_BxCxV.max(-1)
        exp_BxCxV = jnp.exp(logits_BxCxV - max_BxC[..., None])
        sum_BxC = exp_BxCxV.sum(-1)
        lse_BxC = max_BxC + jnp.log(sum_BxC)
        target_logit_BxC = _target_logit(logits_BxCxV, targets_BxC)
        # d loss / d logit_v = factor * exp_v off the target (module docstring): the pass that sums the exps also
        # writes them, target zeroed, as the gradient matmuls' operand; the target entry stays in float32
        is_target_BxCxV = targets_BxC[..., None] == jnp.arange(logits_BxCxV.shape[-1], dtype=targets_BxC.dtype)
        rest_BxCxV = constrain(jnp.where(is_target_BxCxV, 0.0, exp_BxCxV).astype(dtype), "batch", "seq", "vocab")
        factor_BxC = scale_BxC * (1.0 + 2.0 * z_loss * lse_BxC) / sum_BxC
        dtarget_BxC = factor_BxC * jnp.exp(target_logit_BxC - max_BxC) - scale_BxC
        dh_BxCxD = jnp.einsum("BCV,VD->BCD", rest_BxCxV, w_lo_VxD, preferred_element_type=jnp.float32)
        w_target_BxCxD = constrain(w_lo_VxD[targets_BxC], "batch", "seq", "act_embed")
        dh_BxCxD = dh_BxCxD * factor_BxC[..., None] + dtarget_BxC[..., None] * w_target_BxCxD
        C, V = rest_BxCxV.shape[1:]
        R = B // S * C
        # one flat row axis to sum over: summing over (rows, positions) made XLA's CPU backend copy the token
        # gradients into a transposed [V, rows] layout first, every chunk
        rest_SxRxV = rest_BxCxV.reshape(S, R, V)
        h_row_SxRxD = (h_BxCxD * factor_BxC[..., None]).astype(dtype).reshape(S, R, D)
        dw_SxVxD += jnp.einsum("SRV,SRD->SVD", rest_SxRxV, h_row_SxRxD, preferred_element_type=jnp.float32)
        # the target entries: each shard adds its rows' d target * h into its own d W rows
        h_target_SxRxD = (dtarget_BxC[..., None] * h_BxCxD).reshape(S, R, D)
        add_rows = jax.vmap(lambda dw_VxD, rows_R, h_RxD: dw_VxD.at[rows_R].add(h_RxD))
        dw_SxVxD = add_rows(dw_SxVxD, targets_BxC.reshape(S, R), h_target_SxRxD)
        dw_SxVxD = constrain(dw_SxVxD, "batch", "vocab", None)
        # per-row sums: like d W, they stay on their device until the loop ends
        ce_BxC, lse2_BxC = lse_BxC - target_logit_BxC, lse_BxC**2
        if weights_BxC is not None:
            ce_BxC, lse2_BxC = ce_BxC * weights_BxC, lse2_BxC * weights_BxC
        carry = (dw_SxVxD, ce_B + ce_BxC.sum(-1), lse2_B + lse2_BxC.sum(-1))
        return carry, constrain(dh_BxCxD.astype(dtype), "batch", "seq", "act_embed")

    zeros_B = constrain(jnp.zeros((B,), jnp.float32), "batch")
    init = (constrain(jnp.zeros((S, *w_VxD.shape), jnp.float32), "batch", "vocab", None), zeros_B, zeros_B)
    weights_NxBxC = None if weights_BxT is None else _to_chunks(weights_BxT, chunks)
    xs = (_to_chunks(h_BxTxD, chunks), _to_chunks(targets_BxT, chunks), weights_NxBxC)
    (dw_SxVxD, ce_B, lse2_B), dh_NxBxCxD = jax.lax.scan(chunk, init, xs)
    ce = ce_B.sum() * final_scale
    # the one cross-device reduction of d W, into the layout of the parameter
    dw_VxD = constrain(dw_SxVxD.sum(0).astype(w_VxD.dtype), "vocab", "embed")
    return (ce + z_loss * lse2_B.sum() * final_scale, ce), (_from_chunks(dh_NxBxCxD), dw_VxD)


def _lm_loss_bwd(z_loss, chunks, residuals, cotangents):
    dh_BxTxD, dw_VxD = residuals
    g_loss, g_ce = cotangents
    if not isinstance(g_ce, SymbolicZero) and z_loss > 0.0:
        raise NotImplementedError(
            "lm_loss: differentiate `loss`; the gradient of `ce` alone is not kept when z_loss > 0"
        )
    # with z_loss == 0, loss and ce are the same function, so their cotangents add
    g = (0.0 if isinstance(g_loss, SymbolicZero) else g_loss) + (0.0 if isinstance(g_ce, SymbolicZero) else g_ce)
    return (g * dh_BxTxD).astype(dh_BxTxD.dtype), g * dw_VxD, None, None


_lm_loss.defvjp(_lm_loss_fwd, _lm_loss_bwd, symbolic_zeros=True)
