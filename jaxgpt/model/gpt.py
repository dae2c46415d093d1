"""GPT in Flax NNX, modelled on Modalities' GPT2LLM: embeddings, blocks of attention and MLP, the final norm.

Legend: B batch, T sequence, D model dim, V vocab.

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
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from jaxgpt.errors import ConfigError
from jaxgpt.model.attention import ATTENTIONS, CACHE_AXES, Kernel, Slots
from jaxgpt.model.config import ModelConfig
from jaxgpt.model.layers import MLPS, Embedding, dropout, lookup, norm, rope_at
from jaxgpt.model.loss import vocab_logits
from jaxgpt.sharding import constrain

REMAT_POLICIES = {
    "full": None,  # save nothing inside a block, recompute it all in the backward pass
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep the weight matmul outputs
}
REMAT = ("none", *REMAT_POLICIES)  # train.remat


def check_remat(remat: str) -> None:
    if remat not in REMAT:
        raise ConfigError(f"train.remat={remat!r} must be one of {REMAT}")


class KVCache(flax.struct.PyTreeNode):
    """Generation's cache over S slots: each layer's keys and values, how many slots are written, and where each row's
    real tokens start. Rows are left-padded, so one slot index serves every row; a row's positions (rotary, wpe)
    count from its own first real slot."""

    kv: list  # per layer, k and v [B, N, S, K] in the compute dtype
    end: jax.Array  # int32 []: slots written so far; the next T tokens go into end .. end+T-1
    first_B: jax.Array  # int32 [B]: the slot of each row's first real token (padding before it)

    def positions(self, T: int) -> jax.Array:
        """Positions [B, T] of the next T tokens in their rows (0 on padding)."""
        return jnp.maximum(self.end + jnp.arange(T)[None, :] - self.first_B[:, None], 0)

    def slots(self, T: int) -> Slots:
        """Where the next T tokens go: a new token reads the slots from its row's first real one up to its own."""
        S = self.kv[0][0].shape[2]
        key_1x1xS, slot_1xTx1 = jnp.arange(S)[None, None, :], (self.end + jnp.arange(T))[None, :, None]
        allowed_BxTxS = (key_1x1xS >= self.first_B[:, None, None]) & (key_1x1xS <= slot_1xTx1)
        # a padding query reads nothing else; let it read itself, so its softmax row is not empty (its output is unused)
        return Slots(self.end, allowed_BxTxS | (key_1x1xS == slot_1xTx1))

    def grow(self, slots: int) -> KVCache:
        """The same cache with `slots` slots in all (the new ones empty)."""
        pad = ((0, 0), (0, 0), (0, slots - self.kv[0][0].shape[2]), (0, 0))
        return self.replace(kv=[tuple(constrain(jnp.pad(c, pad), *CACHE_AXES) for c in kv) for kv in self.kv])


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, dtype, kernel: Kernel, rngs: nnx.Rngs):
        self.attention_norm = norm(cfg, cfg.n_embd, dtype)
        self.attn = ATTENTIONS[cfg.attn](cfg, dtype=dtype, kernel=kernel, rngs=rngs)
        self.ffn_norm = norm(cfg, cfg.n_embd, dtype)
        self.mlp = MLPS[cfg.mlp](cfg, dtype=dtype, rngs=rngs)
        self.rate = cfg.dropout

    def __call__(self, x_BxTxD: jax.Array, rope, key: jax.Array | None = None, kv=None, slots: Slots | None = None):
        """(x [B, T, D], the layer's kv cache or None): pre-norm attention and MLP, each added to the residual."""
        attn_key, mlp_key = (None, None) if key is None else jax.random.split(key)
        y_BxTxD, kv = self.attn(self.attention_norm(x_BxTxD), rope, kv, slots)
        x_BxTxD = x_BxTxD + dropout(y_BxTxD, self.rate, attn_key)
        x_BxTxD = x_BxTxD + dropout(self.mlp(self.ffn_norm(x_BxTxD)), self.rate, mlp_key)
        return constrain(x_BxTxD, "batch", "seq", "act_embed"), kv


class GPT(nnx.Module):
    """Decoder-only transformer: tokens [B, T] -> float32 logits [B, T, V], through one forward path for training,
    evaluation and generation (which passes a KVCache and gets it back).

    attention: train.attention's choice ("auto", "xla", "cudnn"), resolved for JAX's default backend; or a Kernel
    chosen for the devices the model will run on (the train state's layout does that for its mesh)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, remat: str = "none", attention="auto"):
        check_remat(remat)
        kernel = attention if isinstance(attention, Kernel) else Kernel.choose(attention, dtype, cfg.head_dim)
        self.cfg, self.dtype, self.remat = cfg, dtype, remat
        D, std = cfg.n_embd, cfg.init_std
        self.wte = Embedding(cfg.vocab_size, D, ("vocab", "embed"), std=std, rngs=rngs)
        # One assignment each: NNX fixes an attribute as data (a submodule) or static (None) when first set.
        learned, untied = cfg.pos_emb == "learned", not cfg.tie_embeddings
        self.wpe = Embedding(cfg.seq_len, D, ("norm", "embed"), std=std, rngs=rngs) if learned else None
        self.h = nnx.List([Block(cfg, dtype=dtype, kernel=kernel, rngs=rngs) for _ in range(cfg.n_layer)])
        self.lm_head_norm = norm(cfg, D, dtype)
        self.lm_head = Embedding(cfg.vocab_size, D, ("vocab", "embed"), std=std, rngs=rngs) if untied else None

    def __call__(
        self,
        tokens_BxT: jax.Array,
        *,
        cache: KVCache | None = None,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
    ):
        """Float32 logits [B, T, V]; with a cache, (logits, the cache holding these T tokens too)."""
        out = self.hidden(tokens_BxT, cache=cache, deterministic=deterministic, rngs=rngs)
        if cache is None:
            return self.project(out)
        h_BxTxD, cache = out
        return self.project(h_BxTxD), cache

    def hidden(
        self,
        tokens_BxT: jax.Array,
        *,
        cache: KVCache | None = None,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
        block_ms: list | None = None,
    ):
        """Final-normed hidden states [B, T, D] in the compute dtype: everything but the vocab projection (the loss
        fuses that with the cross-entropy). With a cache, (hidden states, the updated cache). block_ms: see `layers`."""
        positions_BxT = None if cache is None else cache.positions(tokens_BxT.shape[1])
        x_BxTxD = self.embed(tokens_BxT, positions_BxT)
        keys = self.dropout_keys(deterministic, rngs)
        h_BxTxD, cache = self.layers(x_BxTxD, positions_BxT, cache, keys, block_ms)
        return h_BxTxD if cache is None else (h_BxTxD, cache)

    def embed(self, tokens_BxT: jax.Array, positions_BxT: jax.Array | None = None) -> jax.Array:
        """Token (plus learned position) embeddings [B, T, D] in the compute dtype; positions 0 .. T-1 by default."""
        T = tokens_BxT.shape[1]
        if T > self.cfg.seq_len:
            raise ConfigError(f"sequence length {T} exceeds the model's data.seq_len={self.cfg.seq_len}")
        x_BxTxD = lookup(self.wte.weight[...], tokens_BxT, self.dtype)
        if self.wpe is not None:
            wpe_TxD = self.wpe.weight[...].astype(self.dtype)
            x_BxTxD = x_BxTxD + (wpe_TxD[:T][None] if positions_BxT is None else wpe_TxD[positions_BxT])
        return constrain(x_BxTxD, "batch", "seq", "act_embed")

    def layers(self, x_BxTxD: jax.Array, positions_BxT=None, cache: KVCache | None = None, keys=None, block_ms=None):
        """Embeddings -> final-normed hidden states [B, T, D]: dropout, the blocks, lm_head_norm. positions_BxT: each
        token's position (None: 0 .. T-1); keys: n_layer + 1 dropout keys (None: no dropout); block_ms: a list that
        receives each block's output mean square, float32 [] over the batch (the train step's layer statistics),
        or None: nothing extra is computed. Returns (h, cache)."""
        cfg, T = self.cfg, x_BxTxD.shape[1]
        keys = [None] * (cfg.n_layer + 1) if keys is None else keys
        x_BxTxD = dropout(x_BxTxD, cfg.dropout, keys[-1])
        rope = None
        if cfg.pos_emb == "rope":  # cos, sin [T, K], or [B, T, K] when rows sit at their own positions
            rope = rope_at(jnp.arange(T) if positions_BxT is None else positions_BxT, cfg.head_dim, cfg.rope_base)
        slots = None if cache is None else cache.slots(T)

        def run_block(block: Block, x_BxTxD: jax.Array, key, kv):
            return block(x_BxTxD, rope, key, kv, slots)

        if self.remat != "none":
            run_block = nnx.remat(run_block, policy=REMAT_POLICIES[self.remat])
        new_kv = []
        for i, block in enumerate(self.h):
            x_BxTxD, kv = run_block(block, x_BxTxD, keys[i], None if cache is None else cache.kv[i])
            new_kv.append(kv)
            if block_ms is not None:
                block_ms.append(jnp.mean(jnp.square(x_BxTxD.astype(jnp.float32))))
        if cache is not None:
            cache = cache.replace(kv=new_kv, end=cache.end + T)
        return self.lm_head_norm(x_BxTxD), cache

    def dropout_keys(self, deterministic: bool, rngs: nnx.Rngs | None) -> list | None:
        """n_layer + 1 dropout keys (the blocks', then the embeddings'), or None when nothing drops out."""
        if deterministic or self.cfg.dropout == 0.0:
            return None
        if rngs is None:
            raise ValueError(f"model.dropout={self.cfg.dropout} with deterministic=False needs nnx.Rngs(dropout=...)")
        return list(jax.random.split(rngs.dropout(), self.cfg.n_layer + 1))

    def init_cache(self, first_B: jax.Array, slots: int) -> KVCache:
        """An empty cache of `slots` slots for rows whose real tokens start at slots first_B [B]."""
        shape = (first_B.shape[0], self.cfg.n_head_kv, slots, self.cfg.head_dim)
        kv = [tuple(constrain(jnp.zeros(shape, self.dtype), *CACHE_AXES) for _ in "kv") for _ in self.h]
        return KVCache(kv=kv, end=jnp.int32(0), first_B=first_B)

    def project(self, h_BxTxD: jax.Array) -> jax.Array:
        """Hidden states -> float32 logits [B, T, V]."""
        return vocab_logits(h_BxTxD, self.head_weight().astype(self.dtype))

    def head_weight(self) -> jax.Array:
        """The vocab projection [V, D] in float32: wte when tied, else lm_head."""
        return (self.wte if self.lm_head is None else self.lm_head).weight[...]
