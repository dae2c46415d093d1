"""train.init_from: a new run that starts from the parameters of an earlier one (Modalities' warmstart).

The source is a jaxgpt workdir (its newest checkpoint, or PATH@STEP), a folder written by tools/export_hf.py, or any
Hugging Face folder of a class in jaxgpt/hf.py's table whose config maps onto the run's model options. Only the
parameters come over: the optimizer state, the step, the schedule and the dropout key are those of a fresh run, so
the data, optimizer and cadence settings are free; the architecture must agree, and a difference names the key and
both values. A source vocab below model.vocab_size (HF's 50257 into 50304) fills the rows it lacks as training's init
does (train.seed).

Flat params: {"h.0.attn.q_attn.kernel": numpy array, ...}, the keys of hf.py.
"""

from __future__ import annotations

import os
import sys

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from jaxgpt import checkpoint, hf
from jaxgpt.model import ModelConfig
from jaxgpt.state import StateLayout, TrainState

# ModelConfig fields that are not the architecture: a warm start may change them (seq_len: within a learned table)
_FREE = ("dropout", "init_std", "seq_len")
_VOCAB_TABLES = ("wte.weight", "lm_head.weight")


class WarmStartError(ValueError):
    """A train.init_from source that is missing or does not fit the run's model."""


def _key(path) -> str:
    return jax.tree_util.keystr(path, simple=True, separator=".").removesuffix(".value")


def flat_params(params: nnx.State) -> dict[str, np.ndarray]:
    """nnx.State of a GPT's params -> {"h.0.attn.q_attn.kernel": float32 numpy array, ...} on the host."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return {_key(path): np.asarray(jax.device_get(leaf)) for path, leaf in leaves}


def _on_host(x: jax.Array) -> np.ndarray:
    """The whole array on this host, also when its shards live on several processes."""
    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def with_params(params: nnx.State, flat: dict[str, np.ndarray]) -> nnx.State:
    """`params` with every leaf replaced by flat[its key], placed on the leaf's sharding."""

    def put(path, leaf):
        value = flat[_key(path)]
        if value.shape != leaf.shape:
            raise WarmStartError(f"{_key(path)}: the source has shape {value.shape}, the run's model {leaf.shape}")
        value = value.astype(leaf.dtype)
        # from the host copy every process holds, each device takes its shard (multi-host too)
        return jax.make_array_from_callback(value.shape, leaf.sharding, lambda index: value[index])

    return jax.tree_util.tree_map_with_path(put, params)


def init_state(layout: StateLayout, seed: int, init_from: str) -> TrainState:
    """A fresh train state (step 0, fresh optimizer state and dropout key) whose params are those of `init_from`
    ("": the plain init)."""
    state = layout.init(seed)
    if not init_from:
        return state
    fresh = {_key(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(state.params)[0]}
    source = load(init_from, layout.cfg.model)
    for key in _VOCAB_TABLES:  # padded rows the source lacks stay as the init drew them
        if key in source and source[key].shape[0] < fresh[key].shape[0]:
            source[key] = np.concatenate([source[key], _on_host(fresh[key])[source[key].shape[0] :]])
    if sorted(source) != sorted(fresh):
        missing, extra = sorted(set(fresh) - set(source)), sorted(set(source) - set(fresh))
        raise WarmStartError(f"train.init_from={init_from}: parameters differ: missing {missing}, extra {extra}")
    print(f"jaxgpt: parameters from train.init_from={init_from}", file=sys.stderr)
    return state.replace(params=with_params(state.params, source))


def load(init_from: str, m: ModelConfig) -> dict[str, np.ndarray]:
    """The flat params of source `init_from` for the run's model options `m`, after checking that they agree."""
    path, step = _split_step(init_from)
    if os.path.isdir(os.path.join(path, "checkpoints")):
        return _from_workdir(path, step, m, init_from)
    if step is not None:
        raise WarmStartError(f"train.init_from={init_from}: @STEP needs a jaxgpt workdir, {path} has no checkpoints/")
    if os.path.isfile(os.path.join(path, "config.json")):
        try:
            config, tensors = hf.read_folder(path)
            check_options(hf.model_options(config, path), m, path)
            params = hf.from_hf(tensors, m, path)
        except hf.ExportError as e:
            raise WarmStartError(f"train.init_from: {e}") from None
        return _fit_positions(params, m, path)
    raise WarmStartError(
        f"train.init_from={init_from}: neither a jaxgpt workdir (no checkpoints/) nor a Hugging Face folder"
        " (no config.json)"
    )


def _split_step(init_from: str) -> tuple[str, int | None]:
    """ "PATH@STEP" -> (PATH, STEP); "PATH" -> (PATH, None)."""
    path, at, step = init_from.rpartition("@")
    if not at or os.path.exists(init_from):
        return init_from, None
    if not step.isdigit():
        raise WarmStartError(f"train.init_from={init_from}: the part after '@' must be a step number, got {step!r}")
    return path, int(step)


def _from_workdir(path: str, step: int | None, m: ModelConfig, init_from: str) -> dict[str, np.ndarray]:
    try:
        model, cfg = checkpoint.load(path, step)
    except checkpoint.CheckpointError as e:
        raise WarmStartError(f"train.init_from={init_from}: {e}") from None
    source = ModelConfig.from_config(cfg)
    where = f"{path} (step {step if step is not None else 'newest'})"
    options = {f: (getattr(source, f),) for f in ModelConfig.__dataclass_fields__ if f not in _FREE}
    check_options({**options, "mlp_hidden": (source.mlp_hidden,)}, m, where)
    return _fit_positions(flat_params(nnx.state(model, nnx.Param)), m, where)


def check_options(options: dict[str, tuple], m: ModelConfig, where: str) -> None:
    """Every option the source fixes must hold the run's value; the vocab may grow (padded rows)."""
    diffs = []
    for name, allowed in options.items():
        if name == "vocab_size":
            if allowed[0] > m.vocab_size:
                diffs.append(f"model.vocab_size: the run has {m.vocab_size}, {where} {allowed[0]} (more rows)")
        elif name == "mlp_hidden":
            if m.mlp_hidden not in allowed:
                diffs.append(
                    f"model.ffn_hidden: the run's {m.ffn_hidden} gives an MLP hidden size of {m.mlp_hidden},"
                    f" {where} has {allowed[0]}"
                )
        elif getattr(m, name) not in allowed:
            theirs = " or ".join(map(repr, allowed))
            diffs.append(f"model.{name}: the run has {getattr(m, name)!r}, {where} {theirs}")
    if diffs:
        raise WarmStartError(f"train.init_from: the run's model differs from the source: {'; '.join(diffs)}")


def _fit_positions(params: dict[str, np.ndarray], m: ModelConfig, where: str) -> dict[str, np.ndarray]:
    """A learned position table keeps its first data.seq_len rows; a longer run than the table is an error."""
    if "wpe.weight" not in params:
        return params
    rows = params["wpe.weight"].shape[0]
    if rows < m.seq_len:
        raise WarmStartError(
            f"train.init_from: {where} has {rows} learned positions, data.seq_len={m.seq_len} needs more"
        )
    return {**params, "wpe.weight": params["wpe.weight"][: m.seq_len]}
