"""The vocab projection fused with the cross-entropy, chunked along the sequence, gradients computed in the forward.

Legend: B batch, T sequence, N chunks, C = T / N tokens per chunk, D model dim, V vocab, S batch shards (devices the
rows are split over), R = B C / S token rows of one batch shard.

Plain autodiff of `logits = h @ W.T; loss = mean(logsumexp(logits) - logits[target])` keeps float32 logits [B, T, V]
(824 MB for gpt60m's 8 x 512 x 50304) for the backward pass, reads and writes them several times, and on GPU runs
the two backward matmuls on float32 cotangents. Here, chunk by chunk along T, one lax.scan computes the logits, the
log-partition and, since the loss is a plain mean over tokens, each token's gradient d loss / d logits =
(softmax * (1 + 2 z lse) - onehot) / (B T) right away; the two gradient matmuls (d h and d W) consume it while the
chunk is still in cache. The backward pass only scales those gradients by the incoming cotangent. FLOPs are the
same as autodiff's (2VD forward, 4VD backward per token); no logits are recomputed, none outlive their chunk.

Across chunks, d W is summed per batch shard ([S, V, D], S = the data x fsdp devices the rows are split over), so each
device adds up only its own rows and the cross-device reduction happens once after the last chunk, not once per chunk.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

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
        raise ValueError(f"train.loss_chunks={chunks!r} must be a positive int that divides data.seq_len={T}")


def _chunk_logits(h_BxCxD: jax.Array, w_VxD: jax.Array) -> tuple[jax.Array, jax.Array]:
    """float32 logits [B, C, V] and their log-partition lse [B, C]."""
    logits_BxCxV = jnp.einsum("BCD,VD->BCV", h_BxCxD, w_VxD, preferred_element_type=jnp.float32)
    logits_BxCxV = constrain(logits_BxCxV, "batch", "seq", "vocab")
    return logits_BxCxV, jax.nn.logsumexp(logits_BxCxV, axis=-1)


def _target_logit(logits_BxCxV: jax.Array, targets_BxC: jax.Array) -> jax.Array:
    return jnp.take_along_axis(logits_BxCxV, targets_BxC[..., None], axis=-1)[..., 0]


def token_losses(h_BxTxD: jax.Array, w_VxD: jax.Array, targets_BxT: jax.Array, chunks: int = 1):
    """Cross-entropy and log-partition per token [B, T], float32, without gradients kept (evaluation)."""
    check_chunks(h_BxTxD.shape[1], chunks)
    w_VxD = w_VxD.astype(h_BxTxD.dtype)

    def chunk(_, xs):
        h_BxCxD, targets_BxC = xs
        logits_BxCxV, lse_BxC = _chunk_logits(h_BxCxD, w_VxD)
        return None, (lse_BxC - _target_logit(logits_BxCxV, targets_BxC), lse_BxC)

    _, (ce_NxBxC, lse_NxBxC) = jax.lax.scan(chunk, None, (_to_chunks(h_BxTxD, chunks), _to_chunks(targets_BxT, chunks)))
    return _from_chunks(ce_NxBxC), _from_chunks(lse_NxBxC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def lm_loss(h_BxTxD: jax.Array, w_VxD: jax.Array, targets_BxT: jax.Array, z_loss: float, chunks: int):
    """(loss, ce): ce = mean cross-entropy over all B*T tokens, loss = ce + z_loss * mean(lse^2), both float32.

    h_BxTxD: final hidden states in the compute dtype; w_VxD: the vocab projection in float32 (cast to h's dtype for
    the matmuls; its gradient comes back in float32). chunks: how many pieces T is cut into (1: one piece).
    Differentiate `loss`; `ce` is a metric (return it as has_aux). With z_loss > 0 a cotangent reaching `ce` is refused,
    also a zero one that a transform made concrete: the gradients kept are those of `loss`.
    """
    ce_BxT, lse_BxT = token_losses(h_BxTxD, w_VxD, targets_BxT, chunks)
    ce = ce_BxT.mean()
    return ce + z_loss * jnp.mean(lse_BxT**2), ce


def _lm_loss_fwd(h_BxTxD, w_VxD, targets_BxT, z_loss, chunks):
    h_BxTxD, w_VxD, targets_BxT = (p.value for p in (h_BxTxD, w_VxD, targets_BxT))
    B, T, D = h_BxTxD.shape
    check_chunks(T, chunks)
    # S divides B under the meshes the step builds; gcd keeps odd direct calls correct (just less local)
    dtype, scale, S = h_BxTxD.dtype, 1.0 / (B * T), math.gcd(B, batch_shards())
    w_lo_VxD = w_VxD.astype(dtype)

    def chunk(carry, xs):
        dw_SxVxD, ce_B, lse2_B = carry
        h_BxCxD, targets_BxC = xs
        logits_BxCxV, lse_BxC = _chunk_logits(h_BxCxD, w_lo_VxD)
        ce_BxC = lse_BxC - _target_logit(logits_BxCxV, targets_BxC)
        # d loss / d logits per token; the exp, the compare and the scale fuse into one pass over the chunk
        probs_BxCxV = jnp.exp(logits_BxCxV - lse_BxC[..., None])
        onehot_BxCxV = targets_BxC[..., None] == jnp.arange(logits_BxCxV.shape[-1], dtype=targets_BxC.dtype)
        dlogits_BxCxV = (probs_BxCxV * (1.0 + 2.0 * z_loss * lse_BxC)[..., None] - onehot_BxCxV) * scale
        dlogits_BxCxV = constrain(dlogits_BxCxV.astype(dtype), "batch", "seq", "vocab")
        dh_BxCxD = jnp.einsum("BCV,VD->BCD", dlogits_BxCxV, w_lo_VxD, preferred_element_type=jnp.float32)
        C, V = dlogits_BxCxV.shape[1:]
        # one flat row axis to sum over: summing over (rows, positions) made XLA's CPU backend copy the token
        # gradients into a transposed [V, rows] layout first, every chunk
        dlogits_SxRxV = dlogits_BxCxV.reshape(S, B // S * C, V)
        h_SxRxD = h_BxCxD.reshape(S, B // S * C, D)
        dw_SxVxD += jnp.einsum("SRV,SRD->SVD", dlogits_SxRxV, h_SxRxD, preferred_element_type=jnp.float32)
        dw_SxVxD = constrain(dw_SxVxD, "batch", "vocab", None)
        # per-row sums: like d W, they stay on their device until the loop ends
        carry = (dw_SxVxD, ce_B + ce_BxC.sum(-1), lse2_B + jnp.sum(lse_BxC**2, -1))
        return carry, constrain(dh_BxCxD.astype(dtype), "batch", "seq", "act_embed")

    zeros_B = constrain(jnp.zeros((B,), jnp.float32), "batch")
    init = (constrain(jnp.zeros((S, *w_VxD.shape), jnp.float32), "batch", "vocab", None), zeros_B, zeros_B)
    xs = (_to_chunks(h_BxTxD, chunks), _to_chunks(targets_BxT, chunks))
    (dw_SxVxD, ce_B, lse2_B), dh_NxBxCxD = jax.lax.scan(chunk, init, xs)
    ce = ce_B.sum() * scale
    # the one cross-device reduction of d W, into the layout of the parameter
    dw_VxD = constrain(dw_SxVxD.sum(0).astype(w_VxD.dtype), "vocab", "embed")
    return (ce + z_loss * lse2_B.sum() * scale, ce), (_from_chunks(dh_NxBxCxD), dw_VxD)


def _lm_loss_bwd(z_loss, chunks, residuals, cotangents):
    dh_BxTxD, dw_VxD = residuals
    g_loss, g_ce = cotangents
    if not isinstance(g_ce, SymbolicZero) and z_loss > 0.0:
        raise NotImplementedError(
            "lm_loss: differentiate `loss`; the gradient of `ce` alone is not kept when z_loss > 0"
        )
    # with z_loss == 0, loss and ce are the same function, so their cotangents add
    g = (0.0 if isinstance(g_loss, SymbolicZero) else g_loss) + (0.0 if isinstance(g_ce, SymbolicZero) else g_ce)
    return (g * dh_BxTxD).astype(dh_BxTxD.dtype), g * dw_VxD, None


lm_loss.defvjp(_lm_loss_fwd, _lm_loss_bwd, symbolic_zeros=True)
