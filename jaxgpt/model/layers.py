"""The building blocks: linear layers, embedding tables, norms, rotary, dropout and MLPs, with their registries.

Legend: B batch, T sequence, D model dim, K head dim, F MLP hidden, V vocab, I/O a layer's in/out width.

Parameters are float32; each layer casts them to the compute dtype at use. Norms and rotary run in float32.
A new norm or MLP is one class here and one entry in NORMS or MLPS; `model.norm` / `model.mlp` then select it.
Each class also says how many parameters it holds (`num_params`), which count_params adds up.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import nnx

from jaxgpt.sharding import constrain

if TYPE_CHECKING:
    from jaxgpt.model.config import ModelConfig


def param(value: jax.Array, axes: tuple[str | None, ...]) -> nnx.Param:
    """A parameter with logical axis names as metadata; the train state turns them into shardings. No eager sharding:
    the model is mesh-free."""
    return nnx.Param(value, out_sharding=axes, eager_sharding=False)


def init_stds(cfg: ModelConfig) -> tuple[float, float]:
    """The "scaled" init: N(0, std) for input projections, N(0, std / sqrt(2 * n_layer)) for output projections."""
    return cfg.init_std, cfg.init_std / math.sqrt(2 * cfg.n_layer)


class Linear(nnx.Module):
    """x @ kernel (+ bias) in the compute dtype; kernel [in, out], or [out, in] when `transposed`."""

    transposed = False  # generation's layout on CPU (jaxgpt.generate.decode_layout); training never sets it

    def __init__(self, d_in: int, d_out: int, axes: tuple, *, use_bias: bool, std: float, dtype, rngs: nnx.Rngs):
        self.kernel = param(std * jax.random.normal(rngs.params(), (d_in, d_out), jnp.float32), axes)
        self.bias = param(jnp.zeros((d_out,), jnp.float32), axes[1:]) if use_bias else None
        self.dtype = dtype

    def __call__(self, x_BxTxI: jax.Array) -> jax.Array:
        # One 2-D matmul over all rows: the kernel's gradient is then x^T @ dy on row-major [B*T, .] operands, which
        # XLA's CPU backend feeds to its GEMM as they are. From a 3-D einsum it first copied activations into
        # transposed layouts, slowly (BENCHMARKS.md, "Choices"). On GPU both are one cuBLAS call.
        x_NxI = x_BxTxI.reshape(-1, x_BxTxI.shape[-1])  # [B, T, I] -> [B*T, I]
        if self.transposed:
            # [O, I] kernel rows against [N, I] rows into [O, N]; the barrier keeps XLA from folding the final transpose
            # back into the matmul, which would make it the slow [N, I] @ [I, O] again
            y_OxN = jnp.einsum("OI,NI->ON", self.kernel[...].astype(self.dtype), x_NxI.astype(self.dtype))
            y_NxO = jax.lax.optimization_barrier(y_OxN).T
        else:
            y_NxO = x_NxI.astype(self.dtype) @ self.kernel[...].astype(self.dtype)
        if self.bias is not None:
            y_NxO = y_NxO + self.bias[...].astype(self.dtype)
        return y_NxO.reshape(*x_BxTxI.shape[:-1], y_NxO.shape[-1])  # [B*T, O] -> [B, T, O]


class Embedding(nnx.Module):
    """A [rows, D] table; wte, wpe and an untied lm_head."""

    def __init__(self, rows: int, dim: int, axes: tuple, *, std: float, rngs: nnx.Rngs):
        self.weight = param(std * jax.random.normal(rngs.params(), (rows, dim), jnp.float32), axes)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def lookup(table_VxD: jax.Array, tokens_BxT: jax.Array, dtype) -> jax.Array:
    """Rows [B, T, D] of a float32 table in the compute dtype; the table's gradient is summed in float32.

    Autodiff of `table.astype(bf16)[tokens]` adds each token's row gradients into a bf16 table: a token seen thousands
    of times per batch then loses much of its gradient to rounding (test_model: wte's gradient 14% off float32's,
    against 0.3% with the scatter-add in float32, as here).
    """
    # Gather from a table whole along D (an FSDP all-gather) and split along V: GSPMD then looks tokens up locally.
    return constrain(table_VxD.astype(dtype), "vocab", None)[tokens_BxT]


def _lookup_fwd(table_VxD, tokens_BxT, dtype):
    # the table is a parameter, alive through the step anyway: keeping it only carries its shape to the backward
    return lookup(table_VxD, tokens_BxT, dtype), (table_VxD, tokens_BxT)


def _lookup_bwd(dtype, residuals, d_rows_BxTxD):
    table_VxD, tokens_BxT = residuals
    d_table_VxD = constrain(jnp.zeros(table_VxD.shape, jnp.float32), "vocab", None)
    d_table_VxD = d_table_VxD.at[tokens_BxT].add(d_rows_BxTxD.astype(jnp.float32))
    return constrain(d_table_VxD, "vocab", None).astype(table_VxD.dtype), None


lookup.defvjp(_lookup_fwd, _lookup_bwd)


# Norms
# ------------------------------------------------------------------------------------------------------------------


class LayerNorm(nnx.Module):
    """(x - mean) / sqrt(var + eps) * weight (+ bias) over the last dim, in float32."""

    has_bias = True

    def __init__(self, dim: int, eps: float, dtype):
        self.weight = param(jnp.ones((dim,), jnp.float32), ("norm",))
        self.bias = param(jnp.zeros((dim,), jnp.float32), ("norm",)) if self.has_bias else None
        self.eps, self.dtype = eps, dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 - x32.mean(-1, keepdims=True)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + self.eps) * self.weight[...]
        if self.bias is not None:
            y = y + self.bias[...]
        return y.astype(self.dtype)

    @classmethod
    def num_params(cls, dim: int) -> int:
        return (1 + cls.has_bias) * dim


class LayerNormNoBias(LayerNorm):
    """LayerNorm with a weight and no bias (torch.nn.LayerNorm(bias=False))."""

    has_bias = False


class RMSNorm(nnx.Module):
    """x / sqrt(mean(x^2) + eps) * weight over the last dim, in float32 (torch.nn.RMSNorm: a weight, no bias)."""

    def __init__(self, dim: int, eps: float, dtype):
        self.weight = param(jnp.ones((dim,), jnp.float32), ("norm",))
        self.eps, self.dtype = eps, dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        return (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + self.eps) * self.weight[...]).astype(
            self.dtype
        )

    @staticmethod
    def num_params(dim: int) -> int:
        return dim


NORMS = {"layer": LayerNorm, "layer_no_bias": LayerNormNoBias, "rms": RMSNorm}


def norm(cfg: ModelConfig, dim: int, dtype) -> nnx.Module:
    """The norm `model.norm` names, over a last dim of `dim`."""
    return NORMS[cfg.norm](dim, cfg.norm_eps, dtype)


# Positions and dropout
# ------------------------------------------------------------------------------------------------------------------


def rope_at(positions: jax.Array, head_dim: int, base: float) -> tuple[jax.Array, jax.Array]:
    """cos, sin [..., K] of NeoX rotary (frequencies repeated, not interleaved), float32, at any positions: [T] in
    training, [B, T] when rows sit at their own positions (generation)."""
    inv_freq_K2 = 1.0 / base ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    freqs_K2 = positions.astype(jnp.float32)[..., None] * inv_freq_K2
    emb_K = jnp.concatenate([freqs_K2, freqs_K2], axis=-1)
    return jnp.cos(emb_K), jnp.sin(emb_K)


def apply_rope(x_BxTxHxK: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x * cos + rotate_half(x) * sin, rotate_half([x1, x2]) = [-x2, x1]; cos/sin [T, K] or [B, T, K]."""
    x32 = x_BxTxHxK.astype(jnp.float32)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    out = x32 * cos[..., None, :] + rotated * sin[..., None, :]  # broadcast over the heads H
    return out.astype(x_BxTxHxK.dtype)


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout; identity when key is None (deterministic) or rate is 0."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


# MLPs
# ------------------------------------------------------------------------------------------------------------------


class SwiGLU(nnx.Module):
    """W_2(silu(W x) * V x)."""

    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs):
        D, F, b = cfg.n_embd, cfg.mlp_hidden, cfg.use_bias
        std, out_std = init_stds(cfg)
        self.W = Linear(D, F, ("embed", "mlp"), use_bias=b, std=std, dtype=dtype, rngs=rngs)
        self.V = Linear(D, F, ("embed", "mlp"), use_bias=b, std=std, dtype=dtype, rngs=rngs)
        self.W_2 = Linear(F, D, ("mlp", "embed"), use_bias=b, std=out_std, dtype=dtype, rngs=rngs)

    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        h_BxTxF = constrain(jax.nn.silu(self.W(x_BxTxD)) * self.V(x_BxTxD), "batch", "seq", "mlp")
        return self.W_2(h_BxTxF)

    @staticmethod
    def hidden_size(ffn_hidden: int) -> int:
        """~2/3 of ffn_hidden rounded up to a multiple of 256 (Modalities' rule): SwiGLU's three matrices then hold
        about as many parameters as a GELU MLP's two."""
        return math.ceil(int(2 * ffn_hidden / 3) / 256) * 256

    @staticmethod
    def num_params(cfg: ModelConfig) -> int:
        D, F = cfg.n_embd, cfg.mlp_hidden
        return 3 * D * F + cfg.use_bias * (2 * F + D)


class GeluMLP(nnx.Module):
    """c_proj(gelu(c_fc x)), exact erf GELU."""

    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs):
        D, F, b = cfg.n_embd, cfg.mlp_hidden, cfg.use_bias
        std, out_std = init_stds(cfg)
        self.c_fc = Linear(D, F, ("embed", "mlp"), use_bias=b, std=std, dtype=dtype, rngs=rngs)
        self.c_proj = Linear(F, D, ("mlp", "embed"), use_bias=b, std=out_std, dtype=dtype, rngs=rngs)

    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        # exact erf GELU, as torch.nn.GELU() computes by default
        h_BxTxF = constrain(jax.nn.gelu(self.c_fc(x_BxTxD), approximate=False), "batch", "seq", "mlp")
        return self.c_proj(h_BxTxF)

    @staticmethod
    def hidden_size(ffn_hidden: int) -> int:
        return ffn_hidden

    @staticmethod
    def num_params(cfg: ModelConfig) -> int:
        D, F = cfg.n_embd, cfg.mlp_hidden
        return 2 * D * F + cfg.use_bias * (F + D)


MLPS = {"swiglu": SwiGLU, "gelu": GeluMLP}
