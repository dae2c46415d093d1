"""The train state in one place: its config, its structure and shardings on a mesh, its init, and the model it holds.

`StateLayout.build(cfg, mesh)` runs once per run; the train and eval steps, the checkpointer and `checkpoint.load`
(and through it generation and export) all take that one layout. Nothing here imports the train step.
"""

from __future__ import annotations

import dataclasses
import math

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from jaxgpt.config import TrainConfig
from jaxgpt.errors import ConfigError, check_int
from jaxgpt.model import GPT, ModelConfig
from jaxgpt.model.attention import Kernel, check_kernel
from jaxgpt.model.gpt import check_remat
from jaxgpt.model.loss import check_chunks
from jaxgpt.sharding import LOGICAL_AXIS_RULES
from jaxgpt.train.optim import OptimConfig, make_optimizer

DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}
AUTO_DTYPE = {"cpu": "float32"}  # train.compute_dtype="auto": CPUs emulate bfloat16 matmuls slowly; bfloat16 elsewhere


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """What the train state and the step compute with: the model, the optimizer and the train.* knobs of the step
    (their defaults are TrainConfig's)."""

    model: ModelConfig
    optim: OptimConfig
    num_steps: int  # total optimizer steps (for the lr schedule), resolved by the caller (train.num_steps may be None)
    grad_accum: int = TrainConfig.grad_accum
    compute_dtype: str = TrainConfig.compute_dtype  # a key of DTYPES, or "auto" until `resolved` picks one
    remat: str = TrainConfig.remat  # "none" | a key of model.gpt.REMAT_POLICIES
    z_loss: float = TrainConfig.z_loss
    loss_chunks: int = TrainConfig.loss_chunks  # pieces of T the fused vocab projection + cross-entropy walks
    attention: str = TrainConfig.attention  # "auto" | "xla" | "cudnn": implementation of dot_product_attention
    # (begin, end) marker ids of data.loss_mask_tokens: only targets between them count (jaxgpt.data.sft); None: all
    loss_mask_ids: tuple[int, int] | None = None

    def __post_init__(self):
        check_int("train.num_steps", self.num_steps)
        check_int("train.grad_accum", self.grad_accum)
        if self.compute_dtype not in (*DTYPES, "auto"):
            raise ConfigError(f"train.compute_dtype={self.compute_dtype!r} must be one of {(*DTYPES, 'auto')}")
        check_remat(self.remat)
        if not self.z_loss >= 0.0:
            raise ConfigError(f"train.z_loss={self.z_loss!r} must be >= 0")
        check_chunks(self.model.seq_len, self.loss_chunks)
        check_kernel(self.attention)

    @classmethod
    def from_config(
        cls, cfg: ml_collections.ConfigDict, num_steps: int, loss_mask_ids: tuple[int, int] | None = None
    ) -> StepConfig:
        """From the root config; num_steps is resolved by the caller (train.num_steps may be None: one epoch), and so
        are the ids of data.loss_mask_tokens (they need the tokenizer)."""
        train = TrainConfig.from_config(cfg)
        names = {f.name for f in dataclasses.fields(cls)} & {f.name for f in dataclasses.fields(train)}
        knobs = {name: getattr(train, name) for name in names - {"num_steps"}}
        knobs["z_loss"] = float(knobs["z_loss"])  # one type, so that 0 and 0.0 compile the step once
        knobs["loss_mask_ids"] = loss_mask_ids
        return cls(ModelConfig.from_config(cfg), OptimConfig.from_config(cfg), num_steps, **knobs)

    def resolved(self, platform: str) -> StepConfig:
        """This config with compute_dtype "auto" replaced by the dtype it means on `platform` ("cpu", "gpu", "tpu")."""
        if self.compute_dtype != "auto":
            return self
        return dataclasses.replace(self, compute_dtype=AUTO_DTYPE.get(platform, "bfloat16"))

    @property
    def dtype(self):
        if self.compute_dtype == "auto":
            raise ValueError("train.compute_dtype='auto' is resolved only on a platform: call StepConfig.resolved")
        return DTYPES[self.compute_dtype]


class TrainState(flax.struct.PyTreeNode):
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: nnx.State  # the model's nnx.Param state, float32
    opt_state: optax.OptState
    rng: jax.Array  # uint32[2] raw PRNG key for dropout; each step folds in `step`


@dataclasses.dataclass(frozen=True)
class StateLayout:
    """The train state's structure on a mesh: the model's graph and every leaf's shape, dtype and sharding."""

    cfg: StepConfig
    mesh: jax.sharding.Mesh
    graphdef: nnx.GraphDef  # the GPT module without its parameters
    abstract: TrainState  # jax.ShapeDtypeStruct leaves carrying their NamedSharding; allocates nothing

    @classmethod
    def build(cls, cfg: StepConfig, mesh: jax.sharding.Mesh) -> StateLayout:
        """Traces the model and the optimizer once, abstractly; checks that the mesh can shard them."""
        platform = mesh.devices.flat[0].platform
        cfg = cfg.resolved(platform)
        graphdef = nnx.graphdef(nnx.eval_shape(lambda: _model(cfg, nnx.Rngs(params=0), platform)))
        shapes = jax.eval_shape(lambda: _init(cfg, 0, platform))
        with nnx.logical_axis_rules(LOGICAL_AXIS_RULES):  # Adam moments inherit their param's logical names
            specs = nnx.get_partition_spec(shapes)
        shardings = jax.tree.map(lambda spec: jax.sharding.NamedSharding(mesh, spec), specs)
        jax.tree.map_with_path(_check_divisible, shapes, shardings)
        _check_heads(cfg.model, mesh)
        abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)
        return cls(cfg, mesh, graphdef, abstract)

    @property
    def platform(self) -> str:
        """The platform of the mesh's devices ("cpu", "gpu"), which the attention kernel and compile options follow."""
        return self.mesh.devices.flat[0].platform

    @property
    def shardings(self) -> TrainState:
        """A NamedSharding per leaf."""
        return jax.tree.map(lambda x: x.sharding, self.abstract)

    def init(self, seed: int) -> TrainState:
        """Fresh state, initialised directly into its shards (never whole on one device)."""
        return jax.jit(lambda: _init(self.cfg, seed, self.platform), out_shardings=self.shardings)()

    def model(self, params: nnx.State) -> GPT:
        """The GPT module holding these params (the steps, generation, notebooks)."""
        return nnx.merge(self.graphdef, params)


def _model(cfg: StepConfig, rngs: nnx.Rngs, platform: str) -> GPT:
    """The model for devices of `platform`: the attention kernel is chosen for them, not for JAX's default backend."""
    kernel = Kernel.choose(cfg.attention, cfg.dtype, cfg.model.head_dim, platform, doc_mask=cfg.model.doc_mask)
    return GPT(cfg.model, rngs=rngs, dtype=cfg.dtype, remat=cfg.remat, attention=kernel)


def _init(cfg: StepConfig, seed: int, platform: str) -> TrainState:
    model = _model(cfg, nnx.Rngs(params=seed), platform)
    params = nnx.state(model, nnx.Param)
    opt_state = make_optimizer(cfg.optim, cfg.num_steps).init(params)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state, rng=jax.random.PRNGKey(seed))


def _check_divisible(path, leaf: jax.ShapeDtypeStruct, sharding: jax.sharding.NamedSharding) -> None:
    """A clear error instead of JAX's when a mesh axis does not divide the dimension it shards."""
    for dim, (size, axes) in enumerate(zip(leaf.shape, sharding.spec)):
        axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        shards = math.prod(sharding.mesh.shape[a] for a in axes)
        if size % shards:
            mesh_sizes = ", ".join(f"mesh.{a}={sharding.mesh.shape[a]}" for a in axes)
            raise ConfigError(
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
            raise ConfigError(f"{key}={heads} is not divisible by mesh.tensor={tensor}, which splits attention heads")
