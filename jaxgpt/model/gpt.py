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

from typing import NamedTuple

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
    count from its own first real slot, or, with document masking, from its current document's first slot."""

    kv: list  # per layer, k and v [B, N, S, K] in the compute dtype
    end: jax.Array  # int32 []: slots written so far; the next T tokens go into end .. end+T-1
    first_B: jax.Array  # int32 [B]: the slot of each row's first real token (padding before it)
    doc_start_B: jax.Array  # int32 [B]: the slot where each row's last document starts (first_B before any eod)

    def positions(self, start_BxT: jax.Array) -> jax.Array:
        """Positions [B, T] of the next T tokens, counted from the slots start_BxT where their contexts begin."""
        T = start_BxT.shape[1]
        return jnp.maximum(self.end + jnp.arange(T)[None, :] - start_BxT, 0)

    def slots(self, start_BxT: jax.Array) -> Slots:
        """Where the next T tokens go: a new token reads the slots from start_BxT (its row's first real slot, or its
        document's) up to its own."""
        S, T = self.kv[0][0].shape[2], start_BxT.shape[1]
        key_1x1xS, slot_1xTx1 = jnp.arange(S)[None, None, :], (self.end + jnp.arange(T))[None, :, None]
        allowed_BxTxS = (key_1x1xS >= start_BxT[:, :, None]) & (key_1x1xS <= slot_1xTx1)
        # a padding query reads nothing else; let it read itself, so its softmax row is not empty (its output is unused)
        return Slots(self.end, allowed_BxTxS | (key_1x1xS == slot_1xTx1))

    def grow(self, slots: int) -> KVCache:
        """The same cache with `slots` slots in all (the new ones empty)."""
        pad = ((0, 0), (0, 0), (0, slots - self.kv[0][0].shape[2]), (0, 0))
        return self.replace(kv=[tuple(constrain(jnp.pad(c, pad), *CACHE_AXES) for c in kv) for kv in self.kv])


def document_starts(tokens_BxT: jax.Array, eod_id: int, at=0, floor_B: jax.Array | None = None):
    """(start_BxT, through_B): for tokens at indices (slots) at .. at+T-1, the index where each one's document starts,
    just after the last eod_id before it in its row and at least floor_B (default 0); and the start of the document
    after the last token (where the next tokens' document starts). A document's eod belongs to it. Two tokens of a
    row share a start exactly when they share a document, so the starts serve as segment ids."""
    B, T = tokens_BxT.shape
    floor_B = jnp.zeros((B,), jnp.int32) if floor_B is None else floor_B
    index_1xT = at + jnp.arange(T, dtype=jnp.int32)[None, :]
    after_eod_BxT = jnp.where(tokens_BxT == eod_id, index_1xT + 1, 0)
    through_BxT = jnp.maximum(jax.lax.cummax(after_eod_BxT, axis=1), floor_B[:, None])  # this token included
    start_BxT = jnp.concatenate([floor_B[:, None], through_BxT[:, :-1]], axis=1)
    return start_BxT, through_BxT[:, -1]


class Context(NamedTuple):
    """Where the T tokens of one forward pass sit: what the embeddings and every block need besides the activations."""

    positions_BxT: jax.Array | None  # each token's position; None: 0 .. T-1
    segment_BxT: jax.Array | None  # the document each token attends within (document masking); None: the whole row
    slots: Slots | None  # generation: where the tokens go in the cache and what they read; None: no cache


ONE_DOCUMENT = Context(None, None, None)  # positions 0 .. T-1 of one document, no cache: a plain forward pass


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, dtype, kernel: Kernel, rngs: nnx.Rngs):
        self.attention_norm = norm(cfg, cfg.n_embd, dtype)
        self.attn = ATTENTIONS[cfg.attn](cfg, dtype=dtype, kernel=kernel, rngs=rngs)
        self.ffn_norm = norm(cfg, cfg.n_embd, dtype)
        self.mlp = MLPS[cfg.mlp](cfg, dtype=dtype, rngs=rngs)
        self.rate = cfg.dropout

    def __call__(self, x_BxTxD: jax.Array, rope, ctx: Context = ONE_DOCUMENT, key: jax.Array | None = None, kv=None):
        """(x [B, T, D], the layer's kv cache or None): pre-norm attention and MLP, each added to the residual."""
        attn_key, mlp_key = (None, None) if key is None else jax.random.split(key)
        y_BxTxD, kv = self.attn(self.attention_norm(x_BxTxD), rope, kv, ctx.slots, ctx.segment_BxT)
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
        kernel = attention
        if not isinstance(kernel, Kernel):
            kernel = Kernel.choose(attention, dtype, cfg.head_dim, doc_mask=cfg.doc_mask)
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
        ctx, cache = self.context(tokens_BxT, cache)
        x_BxTxD = self.embed(tokens_BxT, ctx.positions_BxT)
        keys = self.dropout_keys(deterministic, rngs)
        h_BxTxD, cache = self.layers(x_BxTxD, ctx, cache, keys, block_ms)
        return h_BxTxD if cache is None else (h_BxTxD, cache)

    def context(self, tokens_BxT: jax.Array, cache: KVCache | None = None) -> tuple[Context, KVCache | None]:
        """Where the tokens sit, and the cache that knows where its rows' documents start. With model.doc_mask a
        token attends only within its document; with model.doc_positions its position counts from the document's
        first token. Documents end at model.eod_token_id, found here in the tokens, inside the step: no [T, T] mask
        ever comes from the host."""
        cfg, (B, T) = self.cfg, tokens_BxT.shape
        if cache is None:
            if not cfg.documents:
                return ONE_DOCUMENT, None
            start_BxT, _ = document_starts(tokens_BxT, cfg.eod_token_id)
            positions_BxT = jnp.arange(T)[None, :] - start_BxT if cfg.doc_positions else None
            return Context(positions_BxT, start_BxT if cfg.doc_mask else None, None), None
        row_start_BxT = doc_start_BxT = jnp.broadcast_to(cache.first_B[:, None], (B, T))
        if cfg.documents:
            doc_start_BxT, doc_start_B = document_starts(tokens_BxT, cfg.eod_token_id, cache.end, cache.doc_start_B)
            cache = cache.replace(doc_start_B=doc_start_B)
        positions_BxT = cache.positions(doc_start_BxT if cfg.doc_positions else row_start_BxT)
        slots = cache.slots(doc_start_BxT if cfg.doc_mask else row_start_BxT)
        return Context(positions_BxT, None, slots), cache

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

    def layers(
        self, x_BxTxD: jax.Array, ctx: Context | None = None, cache: KVCache | None = None, keys=None, block_ms=None
    ):
        """Embeddings -> final-normed hidden states [B, T, D]: dropout, the blocks, lm_head_norm. ctx: where the
        tokens sit (`context`; None: positions 0 .. T-1 of one document, no cache); keys: n_layer + 1 dropout keys
        (None: no dropout); block_ms: a list that receives each block's output mean square, float32 [] over the
        batch (the train step's layer statistics), or None: nothing extra is computed. Returns (h, cache)."""
        cfg, T = self.cfg, x_BxTxD.shape[1]
        ctx = ONE_DOCUMENT if ctx is None else ctx
        keys = [None] * (cfg.n_layer + 1) if keys is None else keys
        x_BxTxD = dropout(x_BxTxD, cfg.dropout, keys[-1])
        rope = None
        if cfg.pos_emb == "rope":  # cos, sin [T, K], or [B, T, K] when tokens sit at their own positions
            positions = jnp.arange(T) if ctx.positions_BxT is None else ctx.positions_BxT
            rope = rope_at(positions, cfg.head_dim, cfg.rope_base)

        def run_block(block: Block, x_BxTxD: jax.Array, key, kv):
            return block(x_BxTxD, rope, ctx, key, kv)

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
        return KVCache(kv=kv, end=jnp.int32(0), first_B=first_B, doc_start_B=first_B)

    def project(self, h_BxTxD: jax.Array) -> jax.Array:
        """Hidden states -> float32 logits [B, T, V]."""
        return vocab_logits(h_BxTxD, self.head_weight().astype(self.dtype))

    def head_weight(self) -> jax.Array:
        """The vocab projection [V, D] in float32: wte when tied, else lm_head."""
        return (self.wte if self.lm_head is None else self.lm_head).weight[...]
