"""Flat params: a GPT's parameters as {"h.0.attn.q_attn.kernel": numpy array, ...}, the form every exporter and
importer maps from and to. The keys are jaxgpt's parameter paths joined by "." (Modalities' GPT2LLM module names)."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from jaxgpt.errors import WarmStartError


def key(path) -> str:
    """A parameter's flat key from its pytree path."""
    return jax.tree_util.keystr(path, simple=True, separator=".").removesuffix(".value")


def flat_params(params: nnx.State) -> dict[str, np.ndarray]:
    """nnx.State of a GPT's params -> {"h.0.attn.q_attn.kernel": float32 numpy array, ...}, whole on this host (also
    when the shards live on several processes)."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return {key(path): on_host(leaf) for path, leaf in leaves}


def on_host(x: jax.Array) -> np.ndarray:
    """The whole array on this host, also when its shards live on several processes."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def with_params(params: nnx.State, flat: dict[str, np.ndarray]) -> nnx.State:
    """`params` with every leaf replaced by flat[its key], placed on the leaf's sharding."""

    def put(path, leaf):
        value = flat[key(path)]
        if value.shape != leaf.shape:
            raise WarmStartError(f"{key(path)}: the source has shape {value.shape}, the run's model {leaf.shape}")
        value = value.astype(leaf.dtype)
        # from the host copy every process holds, each device takes its shard (multi-host too)
        return jax.make_array_from_callback(value.shape, leaf.sharding, lambda index: value[index])

    return jax.tree_util.tree_map_with_path(put, params)
