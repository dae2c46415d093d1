"""Per-layer statistics of a train step (train.layer_stats_every): for each block `h.<i>` and each top-level weight
(`wte`, `wpe`, `lm_head_norm`, `lm_head`), the norms of its parameters, its gradient and its update, the update's
ratio to the parameters, and for each block the RMS of its output activation. Keys `layers/<stat>/<layer>`, e.g.
`layers/update_ratio/h.3`, in metrics.jsonl and W&B.

Step k's statistics describe update k: `param_norm` is the norm of the parameters it gave (the checkpoint of step k),
`update_norm` that of the update itself (checkpoint k minus checkpoint k - 1, up to float32 rounding), `grad_norm`
that of the gradient before clipping (the layers' squares sum to the step's grad_norm squared), and `act_rms` the RMS
over every token and channel of the batch of each block's output, the residual stream. None of them reads the
parameters before the update: their buffers are donated to the new ones, and reading them would cost a copy of all
parameters (memory, and 113 copies in gpt60m's step).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

PREFIX = "layers/"
STATS = ("param_norm", "grad_norm", "update_norm", "update_ratio", "act_rms")


def layer_of(path) -> str:
    """The layer a parameter belongs to: "h.<i>" for a block's, else its top-level name ("wte", "lm_head_norm")."""
    keys = [getattr(k, "key", getattr(k, "name", k)) for k in path]
    return f"h.{keys[1]}" if keys[0] == "h" else str(keys[0])


def layer_norms(tree) -> dict[str, jax.Array]:
    """The float32 L2 norm of each layer's leaves taken together."""
    squares: dict[str, jax.Array] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = layer_of(path)
        squares[name] = squares.get(name, 0.0) + jnp.sum(jnp.square(leaf.astype(jnp.float32)))
    return {name: jnp.sqrt(s) for name, s in squares.items()}


def layer_stats(params, grads, updates, block_ms_L: jax.Array) -> dict[str, jax.Array]:
    """{"layers/<stat>/<layer>": float32 []} of one update: the params after it, the gradient, the update applied,
    and each block's output mean square [n_layer]."""
    stats = {"param_norm": layer_norms(params), "grad_norm": layer_norms(grads), "update_norm": layer_norms(updates)}
    stats["update_ratio"] = {k: stats["update_norm"][k] / stats["param_norm"][k] for k in stats["param_norm"]}
    stats["act_rms"] = {f"h.{i}": jnp.sqrt(block_ms_L[i]) for i in range(block_ms_L.shape[0])}
    return {f"{PREFIX}{stat}/{layer}": value for stat, by_layer in stats.items() for layer, value in by_layer.items()}
