"""The device mesh and the one table that maps logical axis names to its axes.

Layers name logical axes only ("vocab", "embed", ...); this file alone decides which mesh axes they land on.
Mesh axes: "data" (pure replicas), "fsdp" (replicas that also shard params and optimizer state), "tensor" (splits heads,
MLP hidden and vocab). The batch is split over data x fsdp. All axes are Auto: GSPMD inserts the collectives.
"""

import math

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jaxgpt.errors import ConfigError, check_int

MESH_AXES = ("data", "fsdp", "tensor")

LOGICAL_AXIS_RULES = (
    ("batch", ("data", "fsdp")),  # activations and token arrays: rows split over every replica
    ("seq", None),  # sequence positions stay whole on a device
    ("act_embed", None),  # activations' model dim D: whole, so matmuls need no reduction over it
    ("embed", "fsdp"),  # parameters' model dim D: FSDP shards weights (and Adam moments) along it
    ("heads", "tensor"),  # query heads (and c_proj rows), in params and activations
    ("kv_heads", "tensor"),  # key/value heads
    ("mlp", "tensor"),  # MLP hidden F
    ("vocab", "tensor"),  # vocab V of wte/lm_head and of the logits
    ("norm", None),  # norm scales and biases, positions table rows: small, replicated
    ("cache_seq", None),  # generation's kv cache slots [B, N, S, K]: whole, a decode step writes one slot of every row
)
_RULES = dict(LOGICAL_AXIS_RULES)


def logical_spec(*names: str | None) -> PartitionSpec:
    """PartitionSpec for an array whose dims have these logical names (None: not sharded)."""
    unknown = [n for n in names if n is not None and n not in _RULES]
    if unknown:
        raise ValueError(f"logical axis names {unknown} are not in LOGICAL_AXIS_RULES {sorted(_RULES)}")
    return PartitionSpec(*(None if n is None else _RULES[n] for n in names))


def constrain(x: jax.Array, *names: str | None) -> jax.Array:
    """Sharding constraint by logical names; a no-op outside a mesh context (single device, notebooks)."""
    if jax.sharding.get_abstract_mesh().empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_spec(*names))


def batch_shards() -> int:
    """How many ways the mesh in context splits the batch rows (1 outside a mesh)."""
    mesh = jax.sharding.get_abstract_mesh()
    return 1 if mesh.empty else data_parallel_size(mesh)


def make_mesh(data: int, fsdp: int, tensor: int, devices=None) -> Mesh:
    """Mesh with axes ("data", "fsdp", "tensor"); at most one size may be -1 (all devices left over)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = {"mesh.data": data, "mesh.fsdp": fsdp, "mesh.tensor": tensor}
    for key, size in sizes.items():
        if size != -1:
            check_int(key, size, hint=" or -1 (all devices left over)")
    free = [key for key, size in sizes.items() if size == -1]
    if len(free) > 1:
        raise ConfigError(f"{' and '.join(free)} are both -1; at most one mesh axis may take the devices left over")
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if free:
        if len(devices) % fixed:
            n = len(devices)
            raise ConfigError(f"{sizes} cannot fill {n} devices: {n} is not a multiple of {fixed}")
        sizes[free[0]] = len(devices) // fixed
    if math.prod(sizes.values()) != len(devices):
        raise ConfigError(f"{sizes} multiply to {math.prod(sizes.values())} but there are {len(devices)} devices")
    shape = tuple(sizes.values())
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(shape), devices=devices)


def mesh_flag(text: str, devices=None) -> Mesh:
    """The mesh of a command's --mesh=DATA,FSDP,TENSOR over `devices` (default: the local ones). Sizes without a -1
    take the first devices: --mesh=1,1,1 is one device of many."""
    try:
        sizes = tuple(int(x) for x in text.split(","))
    except ValueError:  # int() of the flag's text
        sizes = ()
    if len(sizes) != 3:
        raise ConfigError(f"--mesh={text!r} must be three ints DATA,FSDP,TENSOR (-1: the devices left over)")
    devices = list(jax.local_devices() if devices is None else devices)
    if -1 not in sizes:
        devices = devices[: math.prod(sizes)]
    return make_mesh(*sizes, devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of [G, T] token arrays: rows over data x fsdp."""
    return NamedSharding(mesh, logical_spec("batch", "seq"))


def data_parallel_size(mesh) -> int:
    """How many ways the batch is split: the mesh axes of the "batch" rule (data x fsdp); a Mesh or an AbstractMesh."""
    axes = _RULES["batch"]
    return math.prod(mesh.shape[axis] for axis in ((axes,) if isinstance(axes, str) else axes))
