"""What one train step holds per device: the exact bytes of its state, XLA's memory analysis of the compiled step, and
an analytic model of the rest (gradients, activations, attention, logits, workspace) for `jaxgpt plan`.

Legend: L layers, B micro batch per replica, T sequence, D model dim, H query heads, N kv heads, K head dim, F MLP
hidden, V vocab, t = mesh.tensor, c = bytes of the compute dtype; "per token" means per token of B * T.

The analytic model, per device (docs/operations.md, "Planning a run"):
    params, optimizer state  exact: every leaf's shard of the StateLayout (float32)
    gradients                params' bytes, twice with grad_accum > 1 (the running sum and the micro batch's)
    activations              B T c (L * saved(remat) + 2D), plus one block's "none" set under remat (its backward)
        saved("none") = 4D + (2H + 2N) K / t + 3F / t (SwiGLU; GELU 2F / t): the block input and both norm
                        outputs, q k v and the attention output, the residual, the MLP's hidden values
        saved("dots") = 3D + (H + 2N) K / t + 2F / t (GELU F / t): the block input and every weight matmul's output
        saved("full") = D: the block input only
    attention            per token per layer kept for the backward (every layer under "none", one otherwise):
        cudnn: 4 H / t (the log-sum-exp); xla: H / t * keys * (4 + c), its float32 softmax and the probabilities in c,
        keys = T, or on CPU the mean keys of a query block (jaxgpt.model.attention.query_block)
    logits chunk         B T / loss_chunks * V / t * (4 + c): float32 logits and their exp in c (jaxgpt/model/loss.py)
    workspace            V / t * D * (c + 12): the gathered head weight, its per-shard gradient in the loss, the
                         lookup's gradient and their sum; plus one block's weights / t gathered (c) and its gradient (4)
Not modelled: dropout masks, qk_norm's extra values, XLA's fusion and scheduling choices (the XLA figure has them).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from jaxgpt.model import ModelConfig
from jaxgpt.model.attention import ATTENTIONS
from jaxgpt.model.layers import MLPS, NORMS
from jaxgpt.sharding import batch_sharding
from jaxgpt.train.state import StateLayout, TrainState
from jaxgpt.train.step import make_train_step

GATED_MLPS = ("swiglu",)  # MLPs with two up projections (their hidden values: 3F per token, else 2F)


@dataclasses.dataclass(frozen=True)
class StepShape:
    """What the analytic model reads of one device's step."""

    model: ModelConfig
    micro_batch: int  # B: sequences per replica per micro batch
    grad_accum: int  # micro batches per step (> 1 keeps a running gradient sum)
    remat: str  # "none" | "dots" | "full"
    loss_chunks: int  # pieces of T the fused loss walks
    compute_bytes: int  # c: 2 (bfloat16) or 4 (float32)
    attention: str  # "cudnn" | "xla": what the backward keeps of attention
    query_block: int | None  # the CPU XLA kernel's rows per query block; None: one call over T keys
    tensor: int  # mesh.tensor: splits heads, MLP hidden and vocab


@dataclasses.dataclass(frozen=True)
class Memory:
    """Bytes per device of one train step, by what holds them."""

    params: int  # float32 parameter shards
    optimizer: int  # AdamW moments (and the step counter and rng)
    batch: int  # the int32 inputs and targets of one step
    gradients: int = 0
    activations: int = 0
    attention: int = 0
    logits: int = 0
    workspace: int = 0

    @property
    def state(self) -> int:
        """The step's arguments: what lives on the device between steps."""
        return self.params + self.optimizer + self.batch

    @property
    def temporaries(self) -> int:
        return self.gradients + self.activations + self.attention + self.logits + self.workspace

    @property
    def total(self) -> int:
        return self.state + self.temporaries


@dataclasses.dataclass(frozen=True)
class XlaMemory:
    """XLA's memory analysis of the compiled step, per device (`compiled.memory_analysis()`)."""

    arguments: int  # the state and the batch
    outputs: int  # the new state and the metrics
    aliased: int  # outputs written into donated arguments
    temporaries: int  # XLA's temp buffer: everything live only during the step

    @property
    def total(self) -> int:
        return self.arguments + self.outputs - self.aliased + self.temporaries


def state_bytes(abstract: TrainState, mesh_shape: dict[str, int]) -> tuple[int, int] | None:
    """(params, optimizer state incl. step and rng) bytes of one device's shards, were the layout's logical
    partitioning laid on a mesh of these axis sizes; None when an axis does not divide a dimension it shards."""
    totals = {"params": 0, "other": 0}
    for path, leaf in jax.tree_util.tree_leaves_with_path(abstract):
        shard = _shard_shape(leaf.shape, leaf.sharding.spec, mesh_shape)
        if shard is None:
            return None
        kind = "params" if jax.tree_util.keystr(path[:1], simple=True) == "params" else "other"
        totals[kind] += math.prod(shard) * leaf.dtype.itemsize
    return totals["params"], totals["other"]


def _shard_shape(shape: tuple[int, ...], spec, mesh_shape: dict[str, int]) -> tuple[int, ...] | None:
    shard = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        ways = math.prod(mesh_shape[a] for a in axes)
        if dim % ways:
            return None
        shard.append(dim // ways)
    return tuple(shard)


def batch_bytes(micro_batch: int, grad_accum: int, seq_len: int) -> int:
    """One device's rows of a step's int32 inputs and targets."""
    return 2 * micro_batch * grad_accum * seq_len * 4


def analytic(shape: StepShape, params: int, optimizer: int) -> Memory:
    """The model in this module's docstring, on top of the exact state bytes."""
    m, s, c, t = shape.model, shape, shape.compute_bytes, shape.tensor
    D, T, L = m.n_embd, m.seq_len, m.n_layer
    tokens = s.micro_batch * T
    none = saved_per_token(m, "none", t)
    kept = L * saved_per_token(m, s.remat, t) + 2 * D + (none if s.remat != "none" else 0)
    attention_layers = L if s.remat == "none" else 1
    return Memory(
        params=params,
        optimizer=optimizer,
        batch=batch_bytes(s.micro_batch, s.grad_accum, T),
        gradients=params * (2 if s.grad_accum > 1 else 1),
        activations=int(tokens * c * kept),
        attention=int(tokens * attention_layers * attention_per_token(shape)),
        logits=int(tokens // s.loss_chunks * m.vocab_size / t * (4 + c)),
        workspace=int(m.vocab_size / t * D * (c + 12) + block_params(m) / t * (c + 4)),
    )


def saved_per_token(m: ModelConfig, remat: str, t: int) -> float:
    """Elements per token one block keeps for its backward under this remat policy (the module docstring)."""
    D, H, N, K, F = m.n_embd, m.n_head_q, m.n_head_kv, m.head_dim, m.mlp_hidden
    gated = m.mlp in GATED_MLPS
    if remat == "full":
        return D
    if remat == "dots":
        return 3 * D + (H + 2 * N) * K / t + (2 if gated else 1) * F / t
    return 4 * D + (2 * H + 2 * N) * K / t + (3 if gated else 2) * F / t


def attention_per_token(s: StepShape) -> float:
    """Bytes per token one layer's attention keeps beyond q, k, v and its output."""
    heads = s.model.n_head_q / s.tensor
    if s.attention == "cudnn":
        return 4 * heads
    return heads * mean_keys(s.model.seq_len, s.query_block) * (4 + s.compute_bytes)


def mean_keys(T: int, block: int | None) -> float:
    """Keys a query's scores span: all T in one call; with query blocks, its block's end (the mean over queries)."""
    if block is None or T <= block:
        return float(T)
    return sum((end - start) * end for start, end in _blocks(T, block)) / T


def _blocks(T: int, block: int):
    return [(start, min(start + block, T)) for start in range(0, T, block)]


def block_params(m: ModelConfig) -> int:
    return ATTENTIONS[m.attn].num_params(m) + MLPS[m.mlp].num_params(m) + 2 * NORMS[m.norm].num_params(m.n_embd)


def compiled_memory(layout: StateLayout, micro_batch: int) -> XlaMemory:
    """XLA's memory analysis of the real train step on the layout's mesh, lowered from abstract values: nothing is
    allocated, and nothing runs."""
    return xla_memory(compile_step(layout, micro_batch))


def compile_step(layout: StateLayout, micro_batch: int):
    """The train step compiled for the layout's mesh and a batch of `micro_batch` sequences per replica."""
    mesh, cfg = layout.mesh, layout.cfg
    dp = mesh.shape["data"] * mesh.shape["fsdp"]
    tokens = jax.ShapeDtypeStruct(
        (micro_batch * dp * cfg.grad_accum, cfg.model.seq_len), jnp.int32, sharding=batch_sharding(mesh)
    )
    return make_train_step(layout).lower(layout.abstract, {"inputs": tokens, "targets": tokens}).compile()


def xla_memory(compiled) -> XlaMemory:
    stats = compiled.memory_analysis()
    return XlaMemory(
        arguments=stats.argument_size_in_bytes,
        outputs=stats.output_size_in_bytes,
        aliased=stats.alias_size_in_bytes,
        temporaries=stats.temp_size_in_bytes,
    )
