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

import jax
import jax.numpy as jnp
from flax import nnx

from jaxgpt.model.attention import ATTENTIONS, CACHE_AXES, attention_implementation, query_block
from jaxgpt.model.config import ModelConfig
from jaxgpt.model.layers import MLPS, Embedding, dropout, lookup, norm, rope_at, rope_tables
from jaxgpt.model.loss import vocab_logits
from jaxgpt.sharding import constrain

REMAT_POLICIES = {
    "full": None,  # save nothing inside a block, recompute it all in the backward pass
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep the weight matmul outputs
}
REMAT = ("none", *REMAT_POLICIES)  # train.remat


def check_remat(remat: str) -> None:
    if remat not in REMAT:
        raise ValueError(f"train.remat={remat!r} must be one of {REMAT}")


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, dtype, implementation: str, block: int | None, rngs: nnx.Rngs):
        self.attention_norm = norm(cfg, cfg.n_embd, dtype)
        attn = ATTENTIONS[cfg.attn]
        self.attn = attn(cfg, dtype=dtype, implementation=implementation, block=block, rngs=rngs)
        self.ffn_norm = norm(cfg, cfg.n_embd, dtype)
        self.mlp = MLPS[cfg.mlp](cfg, dtype=dtype, rngs=rngs)
        self.rate = cfg.dropout

    def __call__(self, x_BxTxD: jax.Array, rope, key: jax.Array | None) -> jax.Array:
        attn_key, mlp_key = (None, None) if key is None else jax.random.split(key)
        x_BxTxD = x_BxTxD + dropout(self.attn(self.attention_norm(x_BxTxD), rope), self.rate, attn_key)
        x_BxTxD = x_BxTxD + dropout(self.mlp(self.ffn_norm(x_BxTxD)), self.rate, mlp_key)
        return constrain(x_BxTxD, "batch", "seq", "act_embed")

    def cached(self, x_BxTxD: jax.Array, rope, kv, at: jax.Array, allowed_BxTxS: jax.Array):
        """__call__ for generation (no dropout): attention reads and extends the layer's kv cache."""
        y_BxTxD, kv = self.attn.cached(self.attention_norm(x_BxTxD), rope, kv, at, allowed_BxTxS)
        x_BxTxD = x_BxTxD + y_BxTxD
        x_BxTxD = x_BxTxD + self.mlp(self.ffn_norm(x_BxTxD))
        return constrain(x_BxTxD, "batch", "seq", "act_embed"), kv


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
        check_remat(remat)
        platform = jax.default_backend() if platform is None else platform
        implementation = attention_implementation(attention, dtype, cfg.head_dim, backend=platform)
        block = query_block(implementation, platform)
        self.cfg, self.dtype, self.remat = cfg, dtype, remat
        D, std = cfg.n_embd, cfg.init_std
        self.wte = Embedding(cfg.vocab_size, D, ("vocab", "embed"), std=std, rngs=rngs)
        # One assignment each: NNX fixes an attribute as data (a submodule) or static (None) when first set.
        learned, untied = cfg.pos_emb == "learned", not cfg.tie_embeddings
        self.wpe = Embedding(cfg.seq_len, D, ("norm", "embed"), std=std, rngs=rngs) if learned else None
        self.h = nnx.List(
            [Block(cfg, dtype=dtype, implementation=implementation, block=block, rngs=rngs) for _ in range(cfg.n_layer)]
        )
        self.lm_head_norm = norm(cfg, D, dtype)
        self.lm_head = Embedding(cfg.vocab_size, D, ("vocab", "embed"), std=std, rngs=rngs) if untied else None

    def embed(self, tokens_BxT: jax.Array, positions_BxT: jax.Array | None = None) -> jax.Array:
        """Token (plus learned position) embeddings [B, T, D] in the compute dtype; positions 0 .. T-1 by default."""
        T = tokens_BxT.shape[1]
        if T > self.cfg.seq_len:
            raise ValueError(f"sequence length {T} exceeds the model's data.seq_len={self.cfg.seq_len}")
        x_BxTxD = lookup(self.wte.weight[...], tokens_BxT, self.dtype)
        if self.wpe is not None:
            wpe_TxD = self.wpe.weight[...].astype(self.dtype)
            x_BxTxD = x_BxTxD + (wpe_TxD[:T][None] if positions_BxT is None else wpe_TxD[positions_BxT])
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
            run_block = nnx.remat(run_block, policy=REMAT_POLICIES[self.remat])
        for block, key in zip(self.h, keys[:-1]):
            x_BxTxD = run_block(block, x_BxTxD, key)
        return self.lm_head_norm(x_BxTxD)

    def hidden(self, tokens_BxT: jax.Array, *, deterministic: bool = True, rngs: nnx.Rngs | None = None) -> jax.Array:
        """Final-normed hidden states [B, T, D] in the compute dtype: everything but the vocab projection."""
        return self.decode(self.embed(tokens_BxT), deterministic=deterministic, rngs=rngs)

    def init_cache(self, batch: int, slots: int) -> list[tuple[jax.Array, jax.Array]]:
        """Empty kv cache: per layer, k and v [B, N, S, K] in the compute dtype."""
        shape = (batch, self.cfg.n_head_kv, slots, self.cfg.head_dim)
        return [tuple(constrain(jnp.zeros(shape, self.dtype), *CACHE_AXES) for _ in "kv") for _ in self.h]

    def cached_hidden(self, tokens_BxT, positions_BxT, cache, at: jax.Array, first_B: jax.Array):
        """Final-normed hidden states [B, T, D] of T new tokens written at cache slots at .. at+T-1, and the cache.

        Row b holds its real tokens from slot first_B[b] on (left padding before it); a new token reads the slots from
        first_B[b] up to its own. positions_BxT are the rows' real positions, which rotary and wpe follow."""
        T, S = tokens_BxT.shape[1], cache[0][0].shape[2]
        slot_T, key_S = at + jnp.arange(T), jnp.arange(S)
        key_1x1xS, slot_1xTx1 = key_S[None, None, :], slot_T[None, :, None]
        allowed_BxTxS = (key_1x1xS >= first_B[:, None, None]) & (key_1x1xS <= slot_1xTx1)
        # a padding query reads nothing else; let it read itself, so its softmax row is not empty (its output is unused)
        allowed_BxTxS |= key_1x1xS == slot_1xTx1
        cfg = self.cfg
        rope = rope_at(positions_BxT, cfg.head_dim, cfg.rope_base) if cfg.pos_emb == "rope" else None
        x_BxTxD = self.embed(tokens_BxT, positions_BxT)
        new_cache = []
        for block, kv in zip(self.h, cache):
            x_BxTxD, kv = block.cached(x_BxTxD, rope, kv, at, allowed_BxTxS)
            new_cache.append(kv)
        return self.lm_head_norm(x_BxTxD), new_cache

    def project(self, h_BxTxD: jax.Array) -> jax.Array:
        """Hidden states -> float32 logits [B, T, V]."""
        return vocab_logits(h_BxTxD, self.head_weight().astype(self.dtype))

    def head_weight(self) -> jax.Array:
        """The vocab projection [V, D] in float32: wte when tied, else lm_head."""
        return (self.wte if self.lm_head is None else self.lm_head).weight[...]

    def __call__(self, tokens_BxT: jax.Array, *, deterministic: bool = True, rngs: nnx.Rngs | None = None) -> jax.Array:
        return self.project(self.hidden(tokens_BxT, deterministic=deterministic, rngs=rngs))
