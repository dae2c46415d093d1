"""The sharded train and eval steps: pure functions of (state, batch), jitted once with explicit shardings.

Mixed precision: params and optimizer state float32, matmuls in the compute dtype, logits and loss float32.
The global batch [G, T] is split into grad_accum micro batches that lax.scan visits; each device only ever reads
its own rows (see `_split_micro`).
"""

import dataclasses
import functools
import math
import warnings
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from jaxgpt.loss import check_chunks, lm_loss, token_losses
from jaxgpt.model import ATTENTION, GPT, ModelConfig
from jaxgpt.optim import OptimConfig, lr_schedule, make_optimizer
from jaxgpt.sharding import LOGICAL_AXIS_RULES, batch_sharding, constrain, logical_spec

_DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}
_REMAT = ("none", "full", "dots")


@dataclasses.dataclass(frozen=True)
class StepConfig:
    model: ModelConfig
    optim: OptimConfig
    num_steps: int  # total optimizer steps (for the lr schedule)
    grad_accum: int
    compute_dtype: str  # "bfloat16" | "float32"
    remat: str  # "none" | "full" | "dots"
    z_loss: float
    loss_chunks: int  # pieces of T the fused vocab projection + cross-entropy walks through (jaxgpt/loss.py)
    attention: str  # "auto" | "xla" | "cudnn": implementation of jax.nn.dot_product_attention

    def __post_init__(self):
        if not isinstance(self.num_steps, int) or self.num_steps < 1:
            raise ValueError(f"train.num_steps={self.num_steps!r} must be a positive int")
        if not isinstance(self.grad_accum, int) or self.grad_accum < 1:
            raise ValueError(f"train.grad_accum={self.grad_accum!r} must be a positive int")
        if self.compute_dtype not in _DTYPES:
            raise ValueError(f"train.compute_dtype={self.compute_dtype!r} must be one of {tuple(_DTYPES)}")
        if self.remat not in _REMAT:
            raise ValueError(f"train.remat={self.remat!r} must be one of {_REMAT}")
        if not self.z_loss >= 0.0:
            raise ValueError(f"train.z_loss={self.z_loss!r} must be >= 0")
        check_chunks(self.model.seq_len, self.loss_chunks)
        if self.attention not in ATTENTION:
            raise ValueError(f"train.attention={self.attention!r} must be one of {ATTENTION}")

    @classmethod
    def from_config(cls, cfg: ml_collections.ConfigDict, num_steps: int) -> "StepConfig":
        """From the root config; num_steps is resolved by the caller (train.num_steps may be None: one epoch)."""
        t = cfg.train
        return cls(
            model=ModelConfig.from_config(cfg),
            optim=OptimConfig.from_config(cfg),
            num_steps=num_steps,
            grad_accum=t.grad_accum,
            compute_dtype=t.compute_dtype,
            remat=t.remat,
            z_loss=float(t.z_loss),
            loss_chunks=t.loss_chunks,
            attention=t.attention,
        )

    @property
    def dtype(self):
        return _DTYPES[self.compute_dtype]


class TrainState(flax.struct.PyTreeNode):
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: nnx.State  # the model's nnx.Param state, float32
    opt_state: optax.OptState
    rng: jax.Array  # uint32[2] raw PRNG key for dropout; each step folds in `step`


def _model(cfg: StepConfig, rngs: nnx.Rngs, platform: str) -> GPT:
    return GPT(cfg.model, rngs=rngs, dtype=cfg.dtype, remat=cfg.remat, attention=cfg.attention, platform=platform)


def _init(cfg: StepConfig, seed: int, platform: str) -> TrainState:
    model = _model(cfg, nnx.Rngs(params=seed), platform)
    params = nnx.state(model, nnx.Param)
    opt_state = make_optimizer(cfg.optim, cfg.num_steps).init(params)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state, rng=jax.random.PRNGKey(seed))


def _platform(mesh) -> str:
    return mesh.devices.flat[0].platform


def _state_shardings(abstract_state, mesh):
    """NamedSharding per leaf from each Variable's logical axis names (Adam moments inherit their param's names)."""
    with nnx.logical_axis_rules(LOGICAL_AXIS_RULES):
        specs = nnx.get_partition_spec(abstract_state)
    return jax.tree.map(lambda spec: jax.sharding.NamedSharding(mesh, spec), specs)


def abstract_train_state(cfg: StepConfig, mesh) -> tuple[nnx.GraphDef, TrainState]:
    """The state's structure as jax.ShapeDtypeStruct leaves carrying their sharding on `mesh`; allocates nothing."""
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: _model(cfg, nnx.Rngs(params=0), _platform(mesh))))
    shapes = jax.eval_shape(lambda: _init(cfg, 0, _platform(mesh)))
    shardings = _state_shardings(shapes, mesh)
    jax.tree.map_with_path(_check_divisible, shapes, shardings)
    _check_heads(cfg.model, mesh)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)
    return graphdef, abstract


def _check_divisible(path, leaf: jax.ShapeDtypeStruct, sharding: jax.sharding.NamedSharding) -> None:
    """A clear error instead of JAX's when a mesh axis does not divide the dimension it shards."""
    for dim, (size, axes) in enumerate(zip(leaf.shape, sharding.spec)):
        axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        shards = math.prod(sharding.mesh.shape[a] for a in axes)
        if size % shards:
            mesh_sizes = ", ".join(f"mesh.{a}={sharding.mesh.shape[a]}" for a in axes)
            raise ValueError(
                f"{jax.tree_util.keystr(path, simple=True, separator='.').removesuffix('.value')} has size {size} in"
                f" dim {dim}, which {mesh_sizes} does not divide; pick mesh sizes that divide the model's heads, widths"
                " and vocab"
            )


def _check_heads(model: ModelConfig, mesh) -> None:
    """q/k/v activations are split by head: a head count the tensor axis does not divide passes the weight check
    (H * K may still divide) but makes GSPMD replicate q, k and v in every layer, silently."""
    tensor = mesh.shape["tensor"]
    for key, heads in (("model.n_head_q", model.n_head_q), ("model.n_head_kv", model.n_head_kv)):
        if heads % tensor:
            raise ValueError(f"{key}={heads} is not divisible by mesh.tensor={tensor}, which splits attention heads")


def create_train_state(cfg: StepConfig, mesh, seed: int) -> tuple[nnx.GraphDef, TrainState]:
    """Fresh state, initialised directly into its shards (never whole on one device)."""
    graphdef, abstract = abstract_train_state(cfg, mesh)
    shardings = jax.tree.map(lambda x: x.sharding, abstract)
    state = jax.jit(lambda: _init(cfg, seed, _platform(mesh)), out_shardings=shardings)()
    return graphdef, state


def merge_model(graphdef: nnx.GraphDef, params: nnx.State) -> GPT:
    """The GPT module holding these params (generation, notebooks)."""
    return nnx.merge(graphdef, params)


def _hidden(graphdef, params, inputs_BxT, dropout_key) -> tuple[jax.Array, jax.Array]:
    """Final hidden states [B, T, D] (compute dtype) and the float32 vocab projection [V, D]."""
    model = nnx.merge(graphdef, params)
    rngs = None if dropout_key is None else nnx.Rngs(dropout=dropout_key)
    h_BxTxD = model.hidden(inputs_BxT, deterministic=dropout_key is None, rngs=rngs)
    return h_BxTxD, model.head_weight()


def _split_micro(x_GxT: jax.Array, accum: int) -> jax.Array:
    """[G, T] -> [A, G/A, T] with micro batch a = rows a, a+A, a+2A, ...: a device's block of rows stays its own."""
    G, T = x_GxT.shape
    x_AxMxT = x_GxT.reshape(G // accum, accum, T).swapaxes(0, 1)  # [G, T] -> [G/A, A, T] -> [A, G/A, T]
    return constrain(x_AxMxT, None, "batch", "seq")


# XLA's CPU backend runs matmuls through YNNPACK and by default also pulls the elementwise ops and reductions next
# to a dot into the same YNNPACK call. Those fused calls ran slower than XLA's own loops, worst for the exp-sum over
# the logits in the fused loss (~1.7x slower). "Individual dots" keeps YNNPACK for the matmuls alone. gpt60m float32
# step on the 2-core dev box, A/B in one process: 23.9 -> 21.4 s (see BENCHMARKS.md).
_CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


@functools.cache
def compiler_options(platform: str) -> dict | None:
    """XLA compile options for steps on devices of this platform; None keeps XLA's defaults (GPU, TPU)."""
    if platform != "cpu":
        return None
    cpu = jax.devices("cpu")[0]
    try:  # the option is experimental: an XLA without it must not stop training, only slow it down
        probe = jax.jit(lambda x: x @ x, compiler_options=_CPU_COMPILER_OPTIONS)
        probe.lower(jax.device_put(jnp.ones((8, 8)), cpu)).compile()
    except jax.errors.JaxRuntimeError as e:
        warnings.warn(f"XLA rejected the CPU compile options {_CPU_COMPILER_OPTIONS}, keeping its defaults: {e}")
        return None
    return dict(_CPU_COMPILER_OPTIONS)


def make_train_step(cfg: StepConfig, graphdef, mesh) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """(state, {"inputs", "targets": int32[G, T]}) -> (new state, {"loss", "grad_norm", "lr"}); donates the state."""
    tx = make_optimizer(cfg.optim, cfg.num_steps)
    schedule = lr_schedule(cfg.optim, cfg.num_steps)
    accum = cfg.grad_accum
    use_dropout = cfg.model.dropout > 0.0

    def loss_fn(params, inputs_BxT, targets_BxT, key):
        h_BxTxD, w_VxD = _hidden(graphdef, params, inputs_BxT, key)
        return lm_loss(h_BxTxD, w_VxD, targets_BxT, cfg.z_loss, cfg.loss_chunks)  # (loss, ce)

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            G = batch["inputs"].shape[0]
            if G % accum:
                raise ValueError(f"global batch {G} is not a multiple of train.grad_accum={accum}")
            inputs_AxMxT = _split_micro(batch["inputs"], accum)
            targets_AxMxT = _split_micro(batch["targets"], accum)
            step_key = jax.random.fold_in(state.rng, state.step)

            def micro(carry, xs):
                grads_sum, ce_sum = carry
                index, inputs_MxT, targets_MxT = xs
                key = jax.random.fold_in(step_key, index) if use_dropout else None
                (_, ce), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, inputs_MxT, targets_MxT, key)
                return (jax.tree.map(jnp.add, grads_sum, grads), ce_sum + ce), None

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            xs = (jnp.arange(accum), inputs_AxMxT, targets_AxMxT)
            (grads_sum, ce_sum), _ = jax.lax.scan(micro, (zeros, jnp.zeros((), jnp.float32)), xs)
            # equal-size micro batches: the mean of their means is the mean over the whole batch
            grads = jax.tree.map(lambda g: g / accum, grads_sum)
            grad_norm = optax.tree.norm(grads)
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
            metrics = {"loss": ce_sum / accum, "grad_norm": grad_norm, "lr": schedule(state.step)}
        return new_state, metrics

    _, abstract = abstract_train_state(cfg, mesh)
    state_sh = jax.tree.map(lambda x: x.sharding, abstract)
    batch_sh = {"inputs": batch_sharding(mesh), "targets": batch_sharding(mesh)}
    scalar = jax.sharding.NamedSharding(mesh, logical_spec())
    metrics_sh = {"loss": scalar, "grad_norm": scalar, "lr": scalar}
    return jax.jit(
        step,
        in_shardings=(state_sh, batch_sh),
        out_shardings=(state_sh, metrics_sh),
        donate_argnums=0,
        compiler_options=compiler_options(_platform(mesh)),
    )


def make_eval_step(cfg: StepConfig, graphdef, mesh) -> Callable[[nnx.State, dict], dict]:
    """(params, {"inputs", "targets": int32[G, T], "mask": float32[G, T]}) -> {"loss_sum", "num_tokens"}."""

    def eval_step(params: nnx.State, batch: dict) -> dict:
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            h_GxTxD, w_VxD = _hidden(graphdef, params, batch["inputs"], None)
            ce_GxT, _ = token_losses(h_GxTxD, w_VxD, batch["targets"], cfg.loss_chunks)
            mask_GxT = batch["mask"].astype(jnp.float32)
            return {"loss_sum": jnp.sum(ce_GxT * mask_GxT), "num_tokens": jnp.sum(mask_GxT)}

    _, abstract = abstract_train_state(cfg, mesh)
    params_sh = jax.tree.map(lambda x: x.sharding, abstract.params)
    tokens = batch_sharding(mesh)
    scalar = jax.sharding.NamedSharding(mesh, logical_spec())
    batch_sh = {"inputs": tokens, "targets": tokens, "mask": tokens}
    out_sh = {"loss_sum": scalar, "num_tokens": scalar}
    return jax.jit(
        eval_step,
        in_shardings=(params_sh, batch_sh),
        out_shardings=out_sh,
        compiler_options=compiler_options(_platform(mesh)),
    )
