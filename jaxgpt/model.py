"""GPT in Flax NNX, modelled on Modalities' GPT2LLM, plus its parameter count, FLOPs per token and device peaks.

Legend: B batch, T sequence, D model dim, H query heads, N key/value heads, K head dim, F ffn hidden, V vocab.

Parameter names mirror Modalities' module names, so an export to its PyTorch layout is a plain mapping:
wte.weight, wpe.weight, h.<i>.attention_norm, h.<i>.attn.{q_attn,k_attn,v_attn,c_proj}, h.<i>.attn.{q_norm,k_norm},
h.<i>.ffn_norm, h.<i>.mlp.{W,V,W_2} (SwiGLU) or h.<i>.mlp.{c_fc,c_proj} (GELU), lm_head_norm, lm_head.weight.
Linear layers hold `kernel` [in, out] (PyTorch's weight transposed) and `bias`; norms hold `weight` and `bias`;
wte, wpe and lm_head hold `weight` [rows, D] exactly as PyTorch does.
Parameters are always float32; each layer casts them to the compute dtype at use. Norms, rotary, softmax, logits
and the loss run in float32. The residual stream between blocks is in the compute dtype (bf16 on GPU: half the
activation bytes), where Modalities under autocast keeps it in float32.

Differences from GPT2LLM (all inactive at dropout 0): dropout is on the attention output, the MLP output (SwiGLU too)
and the embeddings, not on the attention probabilities, because the fused attention kernel takes no dropout.
RMSNorm has a weight and no bias (like torch.nn.RMSNorm).
"""

import dataclasses
import functools
import math
import re
import time

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from jaxgpt.loss import vocab_logits
from jaxgpt.sharding import constrain

ATTENTION = ("auto", "xla", "cudnn")
_CHOICES = {"mlp": ("swiglu", "gelu"), "pos_emb": ("rope", "learned", "none"), "norm": ("layer", "rms")}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    n_layer: int
    n_head_q: int
    n_head_kv: int
    n_embd: int
    ffn_hidden: int
    mlp: str
    pos_emb: str
    rope_base: float
    norm: str
    norm_eps: float
    qk_norm: bool
    use_bias: bool
    tie_embeddings: bool
    dropout: float
    init_std: float
    seq_len: int  # max positions (data.seq_len)

    def __post_init__(self):
        for name in ("vocab_size", "n_layer", "n_head_q", "n_head_kv", "n_embd", "ffn_hidden", "seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{_key(name)}={value!r} must be a positive int")
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"{_key(name)}={getattr(self, name)!r} must be one of {choices}")
        for name in ("qk_norm", "use_bias", "tie_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{_key(name)}={getattr(self, name)!r} must be True or False")
        if self.n_embd % self.n_head_q:
            raise ValueError(f"model.n_head_q={self.n_head_q} must divide model.n_embd={self.n_embd}")
        if self.n_head_q % self.n_head_kv:
            raise ValueError(f"model.n_head_kv={self.n_head_kv} must divide model.n_head_q={self.n_head_q}")
        if self.pos_emb == "rope" and self.head_dim % 2:
            raise ValueError(f"rotary needs an even head dim, but model.n_embd / model.n_head_q = {self.head_dim}")
        if not self.rope_base > 1.0:
            raise ValueError(f"model.rope_base={self.rope_base!r} must be > 1")
        if not self.norm_eps > 0.0:
            raise ValueError(f"model.norm_eps={self.norm_eps!r} must be > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout={self.dropout!r} must be in [0, 1)")
        if not self.init_std > 0.0:
            raise ValueError(f"model.init_std={self.init_std!r} must be > 0")

    @classmethod
    def from_config(cls, cfg: ml_collections.ConfigDict) -> "ModelConfig":
        """From the root config: every key of cfg.model, plus cfg.data.seq_len."""
        fields = {f.name for f in dataclasses.fields(cls)} - {"seq_len"}
        given = dict(cfg.model)
        unknown = sorted(set(given) - fields)
        missing = sorted(fields - set(given))
        if unknown:
            raise ValueError(f"unknown model option(s) {['model.' + k for k in unknown]}; known: {sorted(fields)}")
        if missing:
            raise ValueError(f"config lacks model option(s) {['model.' + k for k in missing]}")
        return cls(**given, seq_len=cfg.data.seq_len)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head_q

    @property
    def mlp_hidden(self) -> int:
        """SwiGLU keeps ~2/3 of ffn_hidden rounded up to 256 (Modalities' rule); GELU uses ffn_hidden."""
        if self.mlp == "swiglu":
            return math.ceil(int(2 * self.ffn_hidden / 3) / 256) * 256
        return self.ffn_hidden


def _key(name: str) -> str:
    return "data.seq_len" if name == "seq_len" else f"model.{name}"


# Layers
# ------------------------------------------------------------------------------------------------------------------


def _param(value: jax.Array, axes: tuple[str | None, ...]) -> nnx.Param:
    # Logical axis names as metadata; the step turns them into shardings. No eager sharding: the model is mesh-free.
    return nnx.Param(value, out_sharding=axes, eager_sharding=False)


class Linear(nnx.Module):
    """x @ kernel (+ bias) in the compute dtype; kernel [in, out]."""

    def __init__(self, d_in: int, d_out: int, axes: tuple, *, use_bias: bool, std: float, dtype, rngs: nnx.Rngs):
        self.kernel = _param(std * jax.random.normal(rngs.params(), (d_in, d_out), jnp.float32), axes)
        self.bias = _param(jnp.zeros((d_out,), jnp.float32), axes[1:]) if use_bias else None
        self.dtype = dtype

    def __call__(self, x_BxTxI: jax.Array) -> jax.Array:
        # One 2-D matmul over all rows: the kernel's gradient is then x^T @ dy on row-major [B*T, .] operands, which
        # XLA's CPU backend feeds to its GEMM as they are. From a 3-D einsum it first copied activations into
        # transposed layouts, slowly (gpt60m CPU step: 21.4 -> 18.0 s with this). On GPU both are one cuBLAS call.
        x_NxI = x_BxTxI.reshape(-1, x_BxTxI.shape[-1])
        y_NxO = x_NxI.astype(self.dtype) @ self.kernel[...].astype(self.dtype)
        if self.bias is not None:
            y_NxO = y_NxO + self.bias[...].astype(self.dtype)
        return y_NxO.reshape(*x_BxTxI.shape[:-1], y_NxO.shape[-1])


class Embedding(nnx.Module):
    """A [rows, D] table; wte, wpe and an untied lm_head."""

    def __init__(self, rows: int, dim: int, axes: tuple, *, std: float, rngs: nnx.Rngs):
        self.weight = _param(std * jax.random.normal(rngs.params(), (rows, dim), jnp.float32), axes)


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


class Norm(nnx.Module):
    """LayerNorm (weight and bias) or RMSNorm (weight) over the last dim, computed in float32."""

    def __init__(self, dim: int, kind: str, eps: float, dtype):
        self.weight = _param(jnp.ones((dim,), jnp.float32), ("norm",))
        self.bias = _param(jnp.zeros((dim,), jnp.float32), ("norm",)) if kind == "layer" else None
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        if self.bias is not None:
            x32 = x32 - x32.mean(-1, keepdims=True)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + self.eps) * self.weight[...]
        if self.bias is not None:
            y = y + self.bias[...]
        return y.astype(self.dtype)


def rope_tables(seq_len: int, head_dim: int, base: float) -> tuple[jax.Array, jax.Array]:
    """cos_TxK, sin_TxK of NeoX rotary (frequencies repeated, not interleaved), float32."""
    inv_freq_K2 = 1.0 / base ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    freqs_TxK2 = jnp.arange(seq_len, dtype=jnp.float32)[:, None] * inv_freq_K2[None, :]
    emb_TxK = jnp.concatenate([freqs_TxK2, freqs_TxK2], axis=-1)
    return jnp.cos(emb_TxK), jnp.sin(emb_TxK)


def apply_rope(x_BxTxHxK: jax.Array, cos_TxK: jax.Array, sin_TxK: jax.Array) -> jax.Array:
    """x * cos + rotate_half(x) * sin, rotate_half([x1, x2]) = [-x2, x1]."""
    x32 = x_BxTxHxK.astype(jnp.float32)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    out = x32 * cos_TxK[:, None, :] + rotated * sin_TxK[:, None, :]
    return out.astype(x_BxTxHxK.dtype)


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout; identity when key is None (deterministic) or rate is 0."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def attention_implementation(
    choice: str, dtype, head_dim: int, backend: str | None = None, compute_capability: str | None = None
) -> str:
    """jax.nn.dot_product_attention's implementation for train.attention.

    "auto" takes cuDNN's fused flash attention where it runs: an NVIDIA GPU of compute capability >= 8.0 (Ampere),
    bf16 compute (it has no float32 kernel), a head dim that is a multiple of 8 and at most 128 (256 on Hopper; 128 is
    safe everywhere); XLA's otherwise. "cudnn" outside those conditions is an error here, not deep inside the first
    trace. backend and compute_capability default to the first device's.
    """
    if choice not in ATTENTION:
        raise ValueError(f"train.attention={choice!r} must be one of {ATTENTION}")
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
    if choice == "auto":
        return "xla" if problems else "cudnn"
    if choice == "cudnn" and problems:
        raise ValueError(f"train.attention='cudnn' cannot run here: {'; '.join(problems)}; use 'auto' or 'xla'")
    return choice


# XLA's attention on CPU materialises float32 scores [B, H, T, T] and masks half of them. Cutting the queries into
# blocks of this many rows and giving each block only the keys up to its end skips most masked scores (5/8 of the
# work remains at T = 512) and keeps each block's scores in cache: ~1.4x faster forward + backward on CPU at gpt60m.
# Only on CPU: it was not measured elsewhere, and it unrolls T / 128 attention calls per layer.
_XLA_QUERY_BLOCK = 128


def query_block(implementation: str, platform: str) -> int | None:
    """Rows per query block of `causal_attention` on devices of this platform (None: one call)."""
    return _XLA_QUERY_BLOCK if implementation == "xla" and platform == "cpu" else None


def causal_attention(
    q_BxTxHxK: jax.Array,
    k_BxTxNxK: jax.Array,
    v_BxTxNxK: jax.Array,
    implementation: str,
    block: int | None = None,
) -> jax.Array:
    """Causal softmax attention through jax.nn.dot_product_attention; N < H kv heads is grouped-query attention.

    With `block` (the XLA path on CPU, see `query_block`), query block [start, end) of C rows attends to the E = end
    first keys."""
    T = q_BxTxHxK.shape[1]
    if block is None or T <= block:
        return jax.nn.dot_product_attention(
            q_BxTxHxK, k_BxTxNxK, v_BxTxNxK, is_causal=True, implementation=implementation
        )
    outputs = []
    for start in range(0, T, block):
        end = min(start + block, T)
        # query row start + i sees keys 0 .. start + i
        allowed_CxE = jnp.arange(end)[None, :] <= jnp.arange(start, end)[:, None]
        y_BxCxHxK = jax.nn.dot_product_attention(
            q_BxTxHxK[:, start:end],
            k_BxTxNxK[:, :end],
            v_BxTxNxK[:, :end],
            mask=allowed_CxE[None, None],
            implementation=implementation,
        )
        outputs.append(y_BxCxHxK)
    return jnp.concatenate(outputs, axis=1)


class CausalSelfAttention(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, dtype, attention: str, block: int | None, rngs: nnx.Rngs):
        D, H, N, K = cfg.n_embd, cfg.n_head_q, cfg.n_head_kv, cfg.head_dim
        std, out_std = cfg.init_std, cfg.init_std / math.sqrt(2 * cfg.n_layer)
        self.q_attn = Linear(D, H * K, ("embed", "heads"), use_bias=cfg.use_bias, std=std, dtype=dtype, rngs=rngs)
        self.k_attn = Linear(D, N * K, ("embed", "kv_heads"), use_bias=cfg.use_bias, std=std, dtype=dtype, rngs=rngs)
        self.v_attn = Linear(D, N * K, ("embed", "kv_heads"), use_bias=cfg.use_bias, std=std, dtype=dtype, rngs=rngs)
        self.c_proj = Linear(H * K, D, ("heads", "embed"), use_bias=cfg.use_bias, std=out_std, dtype=dtype, rngs=rngs)
        self.q_norm = Norm(K, cfg.norm, cfg.norm_eps, dtype) if cfg.qk_norm else None
        self.k_norm = Norm(K, cfg.norm, cfg.norm_eps, dtype) if cfg.qk_norm else None
        self.n_head_q, self.n_head_kv, self.head_dim = H, N, K
        self.implementation, self.block = attention, block

    def __call__(self, x_BxTxD: jax.Array, rope: tuple[jax.Array, jax.Array] | None) -> jax.Array:
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
        # N < H is grouped-query attention: q head h reads kv head h // (H / N), as Modalities' repeat_kv does.
        y_BxTxHxK = causal_attention(q_BxTxHxK, k_BxTxNxK, v_BxTxNxK, self.implementation, self.block)
        return self.c_proj(y_BxTxHxK.reshape(B, T, H * K))  # [B, T, H, K] -> [B, T, H*K]


class SwiGLU(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs):
        D, F = cfg.n_embd, cfg.mlp_hidden
        std, out_std = cfg.init_std, cfg.init_std / math.sqrt(2 * cfg.n_layer)
        self.W = Linear(D, F, ("embed", "mlp"), use_bias=cfg.use_bias, std=std, dtype=dtype, rngs=rngs)
        self.V = Linear(D, F, ("embed", "mlp"), use_bias=cfg.use_bias, std=std, dtype=dtype, rngs=rngs)
        self.W_2 = Linear(F, D, ("mlp", "embed"), use_bias=cfg.use_bias, std=out_std, dtype=dtype, rngs=rngs)

    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        h_BxTxF = constrain(jax.nn.silu(self.W(x_BxTxD)) * self.V(x_BxTxD), "batch", "seq", "mlp")
        return self.W_2(h_BxTxF)


class GeluMLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs):
        D, F = cfg.n_embd, cfg.mlp_hidden
        std, out_std = cfg.init_std, cfg.init_std / math.sqrt(2 * cfg.n_layer)
        self.c_fc = Linear(D, F, ("embed", "mlp"), use_bias=cfg.use_bias, std=std, dtype=dtype, rngs=rngs)
        self.c_proj = Linear(F, D, ("mlp", "embed"), use_bias=cfg.use_bias, std=out_std, dtype=dtype, rngs=rngs)

    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        # exact erf GELU, as torch.nn.GELU() computes by default
        h_BxTxF = constrain(jax.nn.gelu(self.c_fc(x_BxTxD), approximate=False), "batch", "seq", "mlp")
        return self.c_proj(h_BxTxF)


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, dtype, attention: str, block: int | None, rngs: nnx.Rngs):
        self.attention_norm = Norm(cfg.n_embd, cfg.norm, cfg.norm_eps, dtype)
        self.attn = CausalSelfAttention(cfg, dtype=dtype, attention=attention, block=block, rngs=rngs)
        self.ffn_norm = Norm(cfg.n_embd, cfg.norm, cfg.norm_eps, dtype)
        self.mlp = SwiGLU(cfg, dtype=dtype, rngs=rngs) if cfg.mlp == "swiglu" else GeluMLP(cfg, dtype=dtype, rngs=rngs)
        self.rate = cfg.dropout

    def __call__(self, x_BxTxD: jax.Array, rope, key: jax.Array | None) -> jax.Array:
        attn_key, mlp_key = (None, None) if key is None else jax.random.split(key)
        x_BxTxD = x_BxTxD + dropout(self.attn(self.attention_norm(x_BxTxD), rope), self.rate, attn_key)
        x_BxTxD = x_BxTxD + dropout(self.mlp(self.ffn_norm(x_BxTxD)), self.rate, mlp_key)
        return constrain(x_BxTxD, "batch", "seq", "act_embed")


_REMAT_POLICIES = {
    "full": None,  # save nothing inside a block, recompute it all in the backward pass
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep the weight matmul outputs
}


class GPT(nnx.Module):
    """Decoder-only transformer; tokens [B, T] -> float32 logits [B, T, V].

    platform: that of the devices it will run on ("cpu", "gpu"; default: JAX's default backend); it picks the
    attention kernel."""

    def __init__(
        self,
        cfg: ModelConfig,
        *,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        remat: str = "none",
        attention: str = "auto",
        platform: str | None = None,
    ):
        if remat not in ("none", *_REMAT_POLICIES):
            raise ValueError(f"train.remat={remat!r} must be one of {('none', *_REMAT_POLICIES)}")
        platform = jax.default_backend() if platform is None else platform
        attention = attention_implementation(attention, dtype, cfg.head_dim, backend=platform)
        block = query_block(attention, platform)
        self.cfg, self.dtype, self.remat = cfg, dtype, remat
        D = cfg.n_embd
        self.wte = Embedding(cfg.vocab_size, D, ("vocab", "embed"), std=cfg.init_std, rngs=rngs)
        # One assignment each: NNX fixes an attribute as data (a submodule) or static (None) when first set.
        learned, untied, std = cfg.pos_emb == "learned", not cfg.tie_embeddings, cfg.init_std
        self.wpe = Embedding(cfg.seq_len, D, ("norm", "embed"), std=std, rngs=rngs) if learned else None
        self.h = nnx.List(
            [Block(cfg, dtype=dtype, attention=attention, block=block, rngs=rngs) for _ in range(cfg.n_layer)]
        )
        self.lm_head_norm = Norm(D, cfg.norm, cfg.norm_eps, dtype)
        self.lm_head = Embedding(cfg.vocab_size, D, ("vocab", "embed"), std=std, rngs=rngs) if untied else None

    def embed(self, tokens_BxT: jax.Array) -> jax.Array:
        """Token (plus learned position) embeddings [B, T, D] in the compute dtype."""
        T = tokens_BxT.shape[1]
        if T > self.cfg.seq_len:
            raise ValueError(f"sequence length {T} exceeds the model's data.seq_len={self.cfg.seq_len}")
        x_BxTxD = lookup(self.wte.weight[...], tokens_BxT, self.dtype)
        if self.wpe is not None:
            x_BxTxD = x_BxTxD + self.wpe.weight[...][:T].astype(self.dtype)[None]
        return constrain(x_BxTxD, "batch", "seq", "act_embed")

    def decode(self, x_BxTxD: jax.Array, *, deterministic: bool = True, rngs: nnx.Rngs | None = None) -> jax.Array:
        """Embeddings -> final-normed hidden states [B, T, D]: dropout, the blocks, lm_head_norm."""
        cfg = self.cfg
        keys = [None] * (cfg.n_layer + 1)
        if not deterministic and cfg.dropout > 0.0:
            if rngs is None:
                raise ValueError(f"model.dropout={cfg.dropout} with deterministic=False needs nnx.Rngs(dropout=...)")
            keys = list(jax.random.split(rngs.dropout(), cfg.n_layer + 1))
        x_BxTxD = dropout(x_BxTxD, cfg.dropout, keys[-1])
        rope = rope_tables(x_BxTxD.shape[1], cfg.head_dim, cfg.rope_base) if cfg.pos_emb == "rope" else None

        def run_block(block: Block, x_BxTxD: jax.Array, key: jax.Array | None) -> jax.Array:
            return block(x_BxTxD, rope, key)

        if self.remat != "none":
            run_block = nnx.remat(run_block, policy=_REMAT_POLICIES[self.remat])
        for block, key in zip(self.h, keys[:-1]):
            x_BxTxD = run_block(block, x_BxTxD, key)
        return self.lm_head_norm(x_BxTxD)

    def hidden(self, tokens_BxT: jax.Array, *, deterministic: bool = True, rngs: nnx.Rngs | None = None) -> jax.Array:
        """Final-normed hidden states [B, T, D] in the compute dtype: everything but the vocab projection."""
        return self.decode(self.embed(tokens_BxT), deterministic=deterministic, rngs=rngs)

    def project(self, h_BxTxD: jax.Array) -> jax.Array:
        """Hidden states -> float32 logits [B, T, V]."""
        return vocab_logits(h_BxTxD, self.head_weight().astype(self.dtype))

    def head_weight(self) -> jax.Array:
        """The vocab projection [V, D] in float32: wte when tied, else lm_head."""
        return (self.wte if self.lm_head is None else self.lm_head).weight[...]

    def __call__(self, tokens_BxT: jax.Array, *, deterministic: bool = True, rngs: nnx.Rngs | None = None) -> jax.Array:
        return self.project(self.hidden(tokens_BxT, deterministic=deterministic, rngs=rngs))


# Size, FLOPs, peaks
# ------------------------------------------------------------------------------------------------------------------


def count_params(cfg: ModelConfig) -> int:
    """Closed-form parameter count (tied wte/lm_head counted once)."""
    D, V, L, K, F = cfg.n_embd, cfg.vocab_size, cfg.n_layer, cfg.head_dim, cfg.mlp_hidden
    kv = cfg.n_head_kv * K
    b = int(cfg.use_bias)
    norm = (2 if cfg.norm == "layer" else 1) * D
    qk_norm = 2 * (2 if cfg.norm == "layer" else 1) * K if cfg.qk_norm else 0
    attn = 2 * D * D + 2 * D * kv + b * (2 * D + 2 * kv)  # q, c_proj: D x D; k, v: D x kv
    mlp = 3 * D * F + b * (2 * F + D) if cfg.mlp == "swiglu" else 2 * D * F + b * (F + D)
    block = attn + qk_norm + mlp + 2 * norm
    embeddings = V * D + (cfg.seq_len * D if cfg.pos_emb == "learned" else 0) + (0 if cfg.tie_embeddings else V * D)
    return embeddings + L * block + norm


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 * N_matmul + 6 * n_layer * seq_len * n_embd.

    6N is forward (2N) plus backward (4N) over the N parameters that multiply every token: all parameters except the
    embedding lookups (wte, wpe are gathers), but with the lm_head's V x D counted (it is wte itself when tied).
    Norms and biases are included (negligible). The second term is causal self-attention: QK^T and AV take
    2 * 2 * T * D forward FLOPs per token per layer without the mask (PaLM, Chowdhery et al. 2022, appendix B:
    6N + 12 L H Q T); the causal mask halves it, so 6 * L * T * D. Same convention as nanoGPT's MFU estimate
    with the causal halving of Chinchilla-style accounting.
    """
    D = cfg.n_embd
    n_matmul = count_params(cfg) - (0 if cfg.tie_embeddings else cfg.vocab_size * D)
    n_matmul -= cfg.seq_len * D if cfg.pos_emb == "learned" else 0
    return 6.0 * n_matmul + 6.0 * cfg.n_layer * seq_len * D


# Dense bf16 peak FLOP/s per chip from vendor datasheets (no sparsity). Matched by substring of device_kind; the
# first match wins, so variants come before the names they contain ("H100 PCIe" before "H100", "L40" before "L4").
_PEAK_FLOPS = (
    ("GH200", 989e12),
    ("H200 NVL", 835e12),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("A10G", 125e12),
    ("L4", 121e12),
    ("TPU v6", 918e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 197e12),  # v5e / v5 lite
    ("TPU v4", 275e12),
)


def peak_flops(device) -> float | None:
    """Dense bf16 peak FLOP/s of one device, by device_kind; None for CPUs and unknown kinds."""
    kind = getattr(device, "device_kind", "")
    if getattr(device, "platform", "") == "cpu":
        return None
    for name, flops in _PEAK_FLOPS:
        if name.lower() in kind.lower():
            return flops
    return None


def total_peak_flops(peak_per_device: float, devices: list) -> float:
    """The peak that MFU divides by: per-device peak x devices, except on CPU, where the (fake) devices are slices of
    one host whose matmul peak was timed with all its cores, so it counts once."""
    return peak_per_device * (1 if devices[0].platform == "cpu" else len(devices))


def measure_matmul_peak(dtype=jnp.float32, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a jitted n x n x n matmul on the default device (best of `repeats`): the CPU stand-in for a peak."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    matmul = jax.jit(lambda a, b: a @ b)
    matmul(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best
