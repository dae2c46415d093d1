"""Attention: which kernel runs it (chosen once, when the model is built), CPU query blocking, the kv cache's
attention, and the attention layers with their registry.

Legend: B batch, T sequence, D model dim, H query heads, N key/value heads, G = H / N, K head dim, S cache slots,
C/E a query block's rows/keys.

A new attention variant is one class with CausalSelfAttention's constructor and call, plus an entry in ATTENTIONS;
`model.attn` then selects it.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxgpt.errors import ConfigError
from jaxgpt.model.layers import NORMS, Linear, apply_rope, init_stds, norm
from jaxgpt.sharding import constrain

if TYPE_CHECKING:
    from jaxgpt.model.config import ModelConfig

KERNELS = ("auto", "xla", "cudnn")  # train.attention
CACHE_AXES = ("batch", "kv_heads", "cache_seq", None)  # logical axes of a layer's k or v cache [B, N, S, K]


def attention_implementation(
    choice: str,
    dtype,
    head_dim: int,
    backend: str | None = None,
    compute_capability: str | None = None,
    doc_mask: bool = False,
) -> str:
    """jax.nn.dot_product_attention's implementation for train.attention.

    "auto" takes cuDNN's fused flash attention where it runs: an NVIDIA GPU of compute capability >= 8.0 (Ampere),
    bf16 compute (it has no float32 kernel), a head dim that is a multiple of 8 and at most 128 (256 on Hopper; 128 is
    safe everywhere); XLA's otherwise. "cudnn" outside those conditions is an error here, not deep inside the first
    trace. backend and compute_capability default to the first device's.

    Document masking (model.doc_mask) needs segment ids, which jax.nn.dot_product_attention's cuDNN path does not take
    (it only turns a dense mask into a dense bias, no flash kernel's segment layout). A fused kernel that dropped the
    mask would train across documents without a sign (MaxText #4476), so "auto" takes XLA's attention, which builds
    the mask from segment ids in the step, and warns once; "cudnn" is refused.
    """
    check_kernel(choice)
    backend = jax.default_backend() if backend is None else backend
    problems = []
    if backend != "gpu":
        problems.append(f"it runs on GPUs only (this is {backend})")
    else:
        capability = str(compute_capability or getattr(jax.devices(backend)[0], "compute_capability", "0"))
        if tuple(int(x) for x in re.findall(r"\d+", capability)[:2]) < (8, 0):  # "9.0", also "10.0a" or "12"
            problems.append(f"it needs a GPU of compute capability >= 8.0 (this one has {capability})")
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        problems.append(f"it needs train.compute_dtype='bfloat16' (got {jnp.dtype(dtype).name})")
    if head_dim % 8 or head_dim > 128:
        problems.append(
            f"it needs a head dim (model.n_embd / model.n_head_q) that is a multiple of 8 and <= 128 (got {head_dim})"
        )
    if doc_mask and not problems:  # cuDNN would run, but not with the document mask
        if choice == "cudnn":
            problems.append(DOC_MASK_CUDNN)
        elif choice == "auto":
            warnings.warn(f"train.attention='auto' takes XLA's attention, not cuDNN's: {DOC_MASK_CUDNN}", stacklevel=2)
            return "xla"
    if choice == "auto":
        return "xla" if problems else "cudnn"
    if choice == "cudnn" and problems:
        raise ConfigError(f"train.attention='cudnn' cannot run here: {'; '.join(problems)}; use 'auto' or 'xla'")
    return choice


DOC_MASK_CUDNN = (
    "model.doc_mask=True needs segment ids, which jax.nn.dot_product_attention's cuDNN kernel does not take in"
    f" jax {jax.__version__}"
)


def check_kernel(choice: str) -> None:
    """The one check of train.attention's value (StepConfig runs it at the edge, the model again when built)."""
    if choice not in KERNELS:
        raise ConfigError(f"train.attention={choice!r} must be one of {KERNELS}")


# XLA's attention on CPU materialises float32 scores [B, H, T, T] and masks half of them. Cutting the queries into
# blocks of this many rows and giving each block only the keys up to its end skips most masked scores (5/8 of the
# work remains at T = 512) and keeps each block's scores in cache: faster forward + backward on CPU (BENCHMARKS.md,
# "Choices"). Only on CPU: it was not measured elsewhere, and it unrolls T / 128 attention calls per layer.
_XLA_QUERY_BLOCK = 128


def query_block(implementation: str, platform: str) -> int | None:
    """Rows per query block of `causal_attention` on devices of this platform (None: one call)."""
    return _XLA_QUERY_BLOCK if implementation == "xla" and platform == "cpu" else None


@dataclasses.dataclass(frozen=True)
class Kernel:
    """How the layers run attention over a whole sequence, fixed when the model is built."""

    implementation: str = "xla"  # of jax.nn.dot_product_attention: "xla" | "cudnn"
    query_block: int | None = None  # rows per query block (XLA on CPU, see query_block); None: one call

    @classmethod
    def choose(cls, choice: str, dtype, head_dim: int, platform: str | None = None, doc_mask: bool = False) -> Kernel:
        """The kernel for train.attention=`choice` on devices of `platform` (default: JAX's default backend), for a
        model with or without document masking."""
        platform = jax.default_backend() if platform is None else platform
        implementation = attention_implementation(choice, dtype, head_dim, backend=platform, doc_mask=doc_mask)
        return cls(implementation, query_block(implementation, platform))


def causal_attention(
    q_BxTxHxK: jax.Array,
    k_BxTxNxK: jax.Array,
    v_BxTxNxK: jax.Array,
    implementation: str,
    block: int | None = None,
    segment_BxT: jax.Array | None = None,
) -> jax.Array:
    """Causal softmax attention through jax.nn.dot_product_attention; N < H kv heads is grouped-query attention.

    With `block` (the XLA path on CPU, see `query_block`), query block [start, end) of C rows attends to the E = end
    first keys. With `segment_BxT` (document masking: each token's document number in its row), a query also attends
    only to keys of its own document; the mask is built here, per query block, from the ids."""
    T = q_BxTxHxK.shape[1]
    if block is None or T <= block:
        mask = None if segment_BxT is None else same_document(segment_BxT, segment_BxT)
        return jax.nn.dot_product_attention(
            q_BxTxHxK, k_BxTxNxK, v_BxTxNxK, mask=mask, is_causal=True, implementation=implementation
        )
    outputs = []
    for start in range(0, T, block):
        end = min(start + block, T)
        # query row start + i sees keys 0 .. start + i
        allowed_1x1xCxE = (jnp.arange(end)[None, :] <= jnp.arange(start, end)[:, None])[None, None]
        if segment_BxT is not None:
            allowed_1x1xCxE = allowed_1x1xCxE & same_document(segment_BxT[:, start:end], segment_BxT[:, :end])
        y_BxCxHxK = jax.nn.dot_product_attention(
            q_BxTxHxK[:, start:end],
            k_BxTxNxK[:, :end],
            v_BxTxNxK[:, :end],
            mask=allowed_1x1xCxE,
            implementation=implementation,
        )
        outputs.append(y_BxCxHxK)
    return jnp.concatenate(outputs, axis=1)


def same_document(segment_BxC: jax.Array, segment_BxE: jax.Array) -> jax.Array:
    """bool [B, 1, C, E]: query c and key e lie in one document (broadcast over the heads)."""
    return (segment_BxC[:, :, None] == segment_BxE[:, None, :])[:, None]


class Slots(NamedTuple):
    """Where T new tokens go in a kv cache of S slots, and which slots each of them may read (generation)."""

    at: jax.Array  # int32 []: the slot of the first new token; they fill at .. at+T-1
    allowed_BxTxS: jax.Array  # bool: an explicit mask, since is_causal aligns its triangle to the top-left


def write_kv(kv: tuple[jax.Array, jax.Array], k_BxTxNxK: jax.Array, v_BxTxNxK: jax.Array, at: jax.Array):
    """The layer's cache, k and v [B, N, S, K], with T new keys and values written into slots at .. at+T-1. Slots
    lie next to each other per head, so that the attention einsums read the cache in place (in [B, S, N, K], XLA on
    CPU transposed the whole cache every decode step)."""
    return tuple(
        # [B, T, N, K] -> [B, N, T, K] into slots at .. at+T-1
        constrain(
            jax.lax.dynamic_update_slice_in_dim(c, new.transpose(0, 2, 1, 3).astype(c.dtype), at, axis=2), *CACHE_AXES
        )
        for c, new in zip(kv, (k_BxTxNxK, v_BxTxNxK))
    )


def cached_attention(q_BxTxHxK: jax.Array, k_BxNxSxK: jax.Array, v_BxNxSxK: jax.Array, allowed_BxTxS: jax.Array):
    """Attention [B, T, H*K] of T queries over the cache's S slots, each reading only its allowed slots."""
    B, T, H, K = q_BxTxHxK.shape
    N = k_BxNxSxK.shape[1]
    q_BxNxGxTxK = q_BxTxHxK.reshape(B, T, N, H // N, K).transpose(0, 2, 3, 1, 4)  # q head h reads kv head h // G
    scores_BxNxGxTxS = jnp.einsum(
        "BNGTK,BNSK->BNGTS", q_BxNxGxTxK, k_BxNxSxK, preferred_element_type=jnp.float32
    ) / jnp.sqrt(jnp.float32(K))
    scores_BxNxGxTxS = jnp.where(allowed_BxTxS[:, None, None], scores_BxNxGxTxS, -jnp.inf)
    probs_BxNxGxTxS = jax.nn.softmax(scores_BxNxGxTxS, axis=-1).astype(v_BxNxSxK.dtype)
    y_BxNxGxTxK = jnp.einsum("BNGTS,BNSK->BNGTK", probs_BxNxGxTxS, v_BxNxSxK)
    return y_BxNxGxTxK.transpose(0, 3, 1, 2, 4).reshape(B, T, H * K)  # [B, N, G, T, K] -> [B, T, H*K]


class CausalSelfAttention(nnx.Module):
    """q, k, v projections, rotary, optional qk-norm (after rotary, as Modalities), causal attention, c_proj."""

    def __init__(self, cfg: ModelConfig, *, dtype, kernel: Kernel, rngs: nnx.Rngs):
        D, H, N, K, b = cfg.n_embd, cfg.n_head_q, cfg.n_head_kv, cfg.head_dim, cfg.use_bias
        std, out_std = init_stds(cfg)
        self.q_attn = Linear(D, H * K, ("embed", "heads"), use_bias=b, std=std, dtype=dtype, rngs=rngs)
        self.k_attn = Linear(D, N * K, ("embed", "kv_heads"), use_bias=b, std=std, dtype=dtype, rngs=rngs)
        self.v_attn = Linear(D, N * K, ("embed", "kv_heads"), use_bias=b, std=std, dtype=dtype, rngs=rngs)
        self.c_proj = Linear(H * K, D, ("heads", "embed"), use_bias=b, std=out_std, dtype=dtype, rngs=rngs)
        self.q_norm = norm(cfg, K, dtype) if cfg.qk_norm else None
        self.k_norm = norm(cfg, K, dtype) if cfg.qk_norm else None
        self.n_head_q, self.n_head_kv, self.head_dim = H, N, K
        self.kernel = kernel

    def __call__(
        self,
        x_BxTxD: jax.Array,
        rope: tuple[jax.Array, jax.Array] | None,
        kv=None,
        slots: Slots = None,
        segment_BxT: jax.Array | None = None,
    ):
        """(output [B, T, D], kv). Without a cache (kv None: training, evaluation) causal attention over the T tokens
        through the model's kernel, within documents when segment_BxT is given. With one (generation), the T new
        tokens' keys and values go into slots.at .. of kv, the layer's (k, v) [B, N, S, K], and the queries attend
        over the slots that slots.allowed_BxTxS allows; the updated kv comes back."""
        B, T, _ = x_BxTxD.shape
        q_BxTxHxK, k_BxTxNxK, v_BxTxNxK = self.qkv(x_BxTxD, rope)
        # N < H is grouped-query attention: q head h reads kv head h // (H / N), as Modalities' repeat_kv does.
        if kv is None:
            k = self.kernel
            y_BxTxHxK = causal_attention(q_BxTxHxK, k_BxTxNxK, v_BxTxNxK, k.implementation, k.query_block, segment_BxT)
            return self.c_proj(y_BxTxHxK.reshape(B, T, -1)), None  # [B, T, H, K] -> [B, T, H*K]
        kv = write_kv(kv, k_BxTxNxK, v_BxTxNxK, slots.at)
        return self.c_proj(cached_attention(q_BxTxHxK, *kv, slots.allowed_BxTxS)), kv

    def qkv(self, x_BxTxD: jax.Array, rope: tuple[jax.Array, jax.Array] | None):
        """Queries [B, T, H, K] and keys, values [B, T, N, K]: projected, rotated, qk-normed."""
        B, T, _ = x_BxTxD.shape
        H, N, K = self.n_head_q, self.n_head_kv, self.head_dim
        q_BxTxHxK = self.q_attn(x_BxTxD).reshape(B, T, H, K)  # [B, T, H*K] -> [B, T, H, K]
        k_BxTxNxK = self.k_attn(x_BxTxD).reshape(B, T, N, K)  # [B, T, N*K] -> [B, T, N, K]
        v_BxTxNxK = self.v_attn(x_BxTxD).reshape(B, T, N, K)  # [B, T, N*K] -> [B, T, N, K]
        if rope is not None:
            q_BxTxHxK = apply_rope(q_BxTxHxK, *rope)
            k_BxTxNxK = apply_rope(k_BxTxNxK, *rope)
        if self.q_norm is not None:  # after rotary, as Modalities does
            q_BxTxHxK, k_BxTxNxK = self.q_norm(q_BxTxHxK), self.k_norm(k_BxTxNxK)
        q_BxTxHxK = constrain(q_BxTxHxK, "batch", "seq", "heads", None)
        k_BxTxNxK = constrain(k_BxTxNxK, "batch", "seq", "kv_heads", None)
        v_BxTxNxK = constrain(v_BxTxNxK, "batch", "seq", "kv_heads", None)
        return q_BxTxHxK, k_BxTxNxK, v_BxTxNxK

    @staticmethod
    def num_params(cfg: ModelConfig) -> int:
        D, kv = cfg.n_embd, cfg.n_head_kv * cfg.head_dim
        weights = 2 * D * D + 2 * D * kv + cfg.use_bias * (2 * D + 2 * kv)  # q, c_proj: D x D; k, v: D x kv
        return weights + (2 * NORMS[cfg.norm].num_params(cfg.head_dim) if cfg.qk_norm else 0)


ATTENTIONS = {"causal": CausalSelfAttention}
