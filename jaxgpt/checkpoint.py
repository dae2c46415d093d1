"""Orbax checkpoints of a training run, and `load()` for notebooks.

A checkpoint is one Orbax composite step directory with five items:
    params     the model's float32 parameters (nnx.State)
    opt_state  the optimizer state
    train      {"step", "rng"}: the step counter and the dropout base key
    data       JSON: where the data stream stands ({"step", "global_batch_size", "num_windows", ...}); the batch order is a
               pure function of (data.seed, global batch size, window count, step), so with the first three
               unchanged the step alone is the exact data position
    config     JSON: the resolved run config, so `load()` can rebuild the model without the config file; a knob
               added to jaxgpt after the checkpoint was written reads as its default (config.complete)

Orbax writes each step into a temporary directory and renames it when complete, so a process killed at any moment
(even mid-save) leaves only complete checkpoints behind, and `latest_step()` never sees a partial one.
Arrays are restored against abstract targets that carry the *current* mesh's shardings, which is what lets a checkpoint
written on one mesh (fsdp=8) come back on another (data=2, fsdp=4) or on a single device.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from jaxgpt import config, sharding
from jaxgpt.state import StateLayout, StepConfig, TrainState


class CheckpointError(RuntimeError):
    """A checkpoint directory is missing, empty, or does not match the run."""


class Checkpointer:
    """Asynchronous saves every `every` steps, keeping the newest `keep`."""

    def __init__(self, directory: str | os.PathLike, *, every: int, keep: int):
        if every < 1:
            raise ValueError(f"checkpoint.every={every} must be >= 1")
        if keep < 1:
            raise ValueError(f"checkpoint.keep={keep} must be >= 1")
        self.directory = os.path.abspath(os.fspath(directory))
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            # Orbax would only fail at the first save, after a step of training.
            raise CheckpointError(f"{self.directory}: is a file, not a checkpoints directory")
        self.every = every
        # We decide when to save (every `every` steps, at the end, on a stop signal) and always pass force=True:
        # Orbax's own policy would also save the very first step.
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def newest(self, at_most: int) -> int | None:
        """The newest complete checkpoint at or before step `at_most`; a save still in flight counts."""
        self.wait()
        return max((s for s in self.all_steps() if s <= at_most), default=None)

    def should_save(self, step: int) -> bool:
        return step % self.every == 0

    def save(self, state: TrainState, *, data: dict, config: dict) -> None:
        """Starts an asynchronous save of `state` at `state.step` (returns once the arrays are copied off the devices)."""
        step = int(jax.device_get(state.step))
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(state.params),
            opt_state=ocp.args.StandardSave(state.opt_state),
            train=ocp.args.StandardSave({"step": state.step, "rng": state.rng}),
            data=ocp.args.JsonSave(data),
            config=ocp.args.JsonSave(config),
        )
        self._manager.save(step, args=args, force=True)

    def restore(self, layout: StateLayout, step: int | None = None) -> TrainState:
        """Restores the state onto the layout's shardings."""
        abstract_state = layout.abstract
        restored = self._restore(
            step,
            params=ocp.args.StandardRestore(abstract_state.params),
            opt_state=ocp.args.StandardRestore(abstract_state.opt_state),
            train=ocp.args.StandardRestore({"step": abstract_state.step, "rng": abstract_state.rng}),
        )
        return TrainState(
            step=restored.train["step"],
            params=restored.params,
            opt_state=restored.opt_state,
            rng=restored.train["rng"],
        )

    def restore_json(self, step: int | None = None) -> tuple[dict, dict]:
        """(config, data position) of a checkpoint: cheap, so a resume can be checked before any array is read."""
        step = self.resolve(step)
        restored = self._restore(step, config=ocp.args.JsonRestore(), data=ocp.args.JsonRestore())
        if not isinstance(restored.config, dict) or not isinstance(restored.data, dict):
            raise CheckpointError(
                f"{self.directory}/{step}: not a jaxgpt checkpoint (config or data is not a JSON object)"
            )
        return restored.config, restored.data

    def restore_params(self, abstract_params: Any, step: int | None = None) -> Any:
        return self._restore(step, params=ocp.args.StandardRestore(abstract_params)).params

    def _restore(self, step: int | None, **items) -> Any:
        """Orbax's restore of `items`; a step directory that is damaged or foreign is a CheckpointError naming it."""
        step = self.resolve(step)
        try:
            return self._manager.restore(step, args=ocp.args.Composite(**items))
        except (KeyError, ValueError, OSError) as e:  # a missing item, a tree that does not match, a missing file
            raise CheckpointError(
                f"{self.directory}/{step}: cannot restore it: not a complete jaxgpt checkpoint of this model, or not"
                f" readable ({type(e).__name__}: {e})"
            ) from e

    def resolve(self, step: int | None) -> int:
        """The step to read: `step` if a checkpoint of it exists, the newest one for None."""
        steps = self._manager.all_steps()
        if not steps:
            raise CheckpointError(f"{self.directory}: holds no complete checkpoint")
        if step is None:
            return max(steps)
        if step not in steps:
            raise CheckpointError(f"{self.directory}: no checkpoint for step {step}; available: {sorted(steps)}")
        return step

    def wait(self) -> None:
        """Blocks until the asynchronous save in flight (if any) is durable on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def checkpoint_dir(workdir: str | os.PathLike) -> str:
    return os.path.join(os.path.abspath(os.fspath(workdir)), "checkpoints")


def load(workdir: str | os.PathLike, step: int | None = None, mesh: jax.sharding.Mesh | None = None):
    """Returns `(model, config)` from the newest (or given) checkpoint in `workdir`, without the optimizer state.

    The parameters land on `mesh`, by default the first local device, so a checkpoint written on 8 GPUs opens in a
    notebook on one CPU; pass a mesh (sharding.make_mesh) to spread a large model over several devices. `config` holds
    every knob of this jaxgpt, those the checkpoint predates at their defaults.
    """
    directory = checkpoint_dir(workdir)
    if not os.path.isdir(directory):
        raise CheckpointError(f"{workdir}: no checkpoints/ directory; is this a jaxgpt workdir?")
    ckpt = Checkpointer(directory, every=1, keep=1_000_000)  # keep: never delete anything from a reader
    try:
        step = ckpt.resolve(step)
        cfg = saved_config(ckpt, step)
        if mesh is None:  # one device: any model width fits, which an FSDP mesh over odd device counts would not
            mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
        layout = StateLayout.build(StepConfig.from_config(cfg, num_steps=1), mesh)
        params = ckpt.restore_params(layout.abstract.params, step)
    finally:
        ckpt.close()
    return layout.model(params), cfg


def saved_config(ckpt: Checkpointer, step: int) -> ml_collections.ConfigDict:
    """The run config a checkpoint holds, completed with the defaults of knobs it predates."""
    try:
        return config.complete(ckpt.restore_json(step)[0], f"{ckpt.directory}/{step}")
    except ValueError as e:  # a newer jaxgpt's knob, or a value that does not fit
        raise CheckpointError(str(e)) from None
