"""Orbax checkpoints of a training run, and `load()` for notebooks.

A checkpoint is one Orbax composite step directory with five items:
    params     the model's float32 parameters (nnx.State)
    opt_state  the optimizer state
    train      {"step", "rng"}: the step counter and the dropout base key
    data       JSON: where the data stream stands ({"step", "global_batch_size", "num_windows", ...}); the batch order
               is a pure function of (data.seed, global batch size, window count, step), so with the first three
               unchanged the step alone is the exact data position
    config     JSON: the resolved run config, so `load()` can rebuild the model without the config file; a knob
               added to jaxgpt after the checkpoint was written reads as its default (config.complete)

Orbax writes each step into a temporary directory and renames it when complete, so a process killed at any moment
(even mid-save) leaves only complete checkpoints behind, and `latest_step()` never sees a partial one.
Arrays are restored against abstract targets that carry the *current* mesh's shardings, which is what lets a checkpoint
written on one mesh (fsdp=8) come back on another (data=2, fsdp=4) or on a single device.

What the rename cannot prevent, a file damaged after it (a partial copy, a bad disk), is found when the step is read:
a resume and `load()` then fall back to the newest step that reads whole, with a warning naming the damaged one
(`restore_newest`); a resume also moves it aside to `<step>.damaged`, so that its step number is free to be saved again.
A save that fails (a full disk) is one CheckpointError naming the directory, and its partial step is removed.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import glob
import logging as pylogging
import os
import re
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from jaxgpt import config, rundir, sharding
from jaxgpt.distributed import all_processes, is_lead
from jaxgpt.errors import CheckpointError, ConfigError
from jaxgpt.train.state import StateLayout, StepConfig, TrainState

COMMIT_MARKER = "commit_success.txt"  # Orbax writes it into the step and each item just before the final rename
ITEMS = ("params", "opt_state", "train", "data", "config")


class DamagedCheckpoint(CheckpointError):
    """One step directory cannot be read whole: a file is missing or truncated, or the step was never committed."""

    def __init__(self, directory: str, step: int, reason: str):
        super().__init__(
            f"{directory}/{step}: cannot restore it: not a complete jaxgpt checkpoint of this model, or"
            f" not readable ({reason})"
        )
        self.step, self.reason = step, reason


class Checkpointer:
    """Asynchronous saves every `every` steps, keeping the newest `keep`."""

    def __init__(self, directory: str | os.PathLike, *, every: int, keep: int):
        self.directory = os.path.abspath(os.fspath(directory))
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            # Orbax would only fail at the first save, after a step of training.
            raise CheckpointError(f"{self.directory}: is a file, not a checkpoints directory")
        self.every = every
        self._in_flight: int | None = None  # the step of the asynchronous save not yet known to be on disk
        self._failed = False  # a save failed and was reported: later waits and the close stay quiet
        # We decide when to save (every `every` steps, at the end, on a stop signal) and always pass force=True:
        # Orbax's own policy would also save the very first step.
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True, create=True)
        try:
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        except OSError as e:  # a read-only file system, no permission
            raise CheckpointError(f"{self.directory}: cannot create or open it ({_reason(e)})") from None

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
        """Starts an asynchronous save of `state` at `state.step` (returns once the arrays are copied off the devices).
        A failure of the save before it (found here, as Orbax reports it) is a CheckpointError."""
        step = int(jax.device_get(state.step))
        self.wait()  # what Orbax's save would do first; here a failure of the previous save names that step
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(state.params),
            opt_state=ocp.args.StandardSave(state.opt_state),
            train=ocp.args.StandardSave({"step": state.step, "rng": state.rng}),
            data=ocp.args.JsonSave(data),
            config=ocp.args.JsonSave(config),
        )
        with self._save_errors(step):
            self._manager.save(step, args=args, force=True)
        self._in_flight = step

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
            raise DamagedCheckpoint(self.directory, step, "config or data is not a JSON object")
        return restored.config, restored.data

    def restore_params(self, abstract_params: Any, step: int | None = None) -> Any:
        return self._restore(step, params=ocp.args.StandardRestore(abstract_params)).params

    def restore_newest(self, read: Callable[[int], Any], *, set_aside: bool) -> tuple[int, Any] | None:
        """(step, read(step)) for the newest step that `read` gets whole; None when there is no checkpoint.

        A step that is damaged (DamagedCheckpoint) is skipped with a warning naming it and what was wrong, and with
        `set_aside` (a resume; never a reader) moved to `<step>.damaged`. Every other error of `read` (a resume under
        other settings) ends the search. Every process decides alike: a step damaged on one is damaged on all.
        """
        steps = self.all_steps()
        damaged = []
        for step in reversed(steps):
            try:
                self.check_committed(step)
                result, error = read(step), None
            except DamagedCheckpoint as e:
                result, error = None, e
            if all_processes(error is None):
                if set_aside:
                    self._set_aside([e.step for e in damaged])
                return step, result
            damaged.append(error or DamagedCheckpoint(self.directory, step, "damaged as another process reads it"))
            older = [s for s in steps if s < step]
            fallback = f"falling back to step {max(older)}" if older else "no older checkpoint"
            message = f"{self.directory}/{step}: damaged checkpoint ({damaged[-1].reason}); {fallback}"
            warnings.warn(message, stacklevel=2)
        if damaged:
            raise CheckpointError(
                f"every checkpoint is damaged: {'; '.join(map(str, damaged))}. Restore one, or start"
                " afresh in a new --workdir"
            )
        return None

    def check_committed(self, step: int) -> None:
        """A step whose directory or items lack Orbax's commit marker was never finished (or not copied whole)."""
        root = os.path.join(self.directory, str(step))
        for where in (root, *(os.path.join(root, item) for item in ITEMS)):
            if not os.path.isdir(where):
                raise DamagedCheckpoint(self.directory, step, f"{os.path.relpath(where, self.directory)} is missing")
            if not os.path.isfile(os.path.join(where, COMMIT_MARKER)):
                raise DamagedCheckpoint(
                    self.directory, step, f"{os.path.relpath(where, self.directory)} has no {COMMIT_MARKER}"
                )

    def _set_aside(self, steps: list[int]) -> None:
        """Moves damaged steps out of Orbax's view, kept for inspection, so their step numbers can be saved again."""
        if steps and is_lead():
            for step in steps:
                target = os.path.join(self.directory, f"{step}.damaged")
                suffix = 1
                while os.path.exists(target):
                    target, suffix = os.path.join(self.directory, f"{step}.damaged.{suffix}"), suffix + 1
                os.rename(os.path.join(self.directory, str(step)), target)
        if steps:
            if jax.process_count() > 1:
                multihost_utils.sync_global_devices("jaxgpt: damaged checkpoints set aside")
            self._manager.reload()

    def _restore(self, step: int | None, **items) -> Any:
        """Orbax's restore of `items`; a step directory that is damaged or foreign is a DamagedCheckpoint naming it."""
        step = self.resolve(step)
        try:
            return self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # TensorStore's read errors reach us as bare Exceptions
            raise DamagedCheckpoint(self.directory, step, _reason(e)) from e

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
        with self._save_errors(self._in_flight):
            self._manager.wait_until_finished()
        if self._in_flight is not None:
            release_freed_memory()
        self._in_flight = None

    def close(self) -> None:
        with self._save_errors(self._in_flight):
            self._manager.close()

    @contextlib.contextmanager
    def _save_errors(self, step: int | None) -> Iterator[None]:
        """Orbax's save failures (one per writer thread) -> one CheckpointError naming the directory and the cause;
        the failed step's temporary directory is removed, so nothing half-written stays behind."""
        try:
            yield
        except Exception as e:  # noqa: BLE001 - Orbax re-raises its writer threads' errors as they came
            if self._failed:  # reported once already; this is the same failure surfacing again at wait() or close()
                return
            self._failed = True
            partial = self._remove_partial()
            # The step whose temporary directory was left names the failed save best; else the one in flight.
            failed = partial[0] if partial else self._in_flight if self._in_flight is not None else step
            newest = max(self._manager.all_steps(), default=None)
            raise CheckpointError(
                f"{self.directory}: saving step {failed} failed: {_reason(e)}; "
                + ("its partial files were removed; " if partial else "")
                + (f"the newest complete checkpoint is step {newest}" if newest else "no checkpoint is complete")
            ) from None

    def _remove_partial(self) -> list[int]:
        """Deletes Orbax's temporary step directories (saves that failed midway; process 0 only); returns the steps."""
        partial = glob.glob(os.path.join(glob.escape(self.directory), "*.orbax-checkpoint-tmp*"))
        if is_lead():
            for path in partial:
                shutil.rmtree(path, ignore_errors=True)
        names = (os.path.basename(p).split(".", 1)[0] for p in partial)
        return sorted(int(n) for n in names if n.isdigit())


def release_freed_memory() -> None:
    """Hands the heap's free pages back to the OS (glibc's malloc_trim), after a save landed.

    An asynchronous save copies the state into host buffers and frees them when it is on disk, but glibc keeps the
    freed pages in its arenas: a run's RSS then grew with every save (bench/memory.py; BENCHMARKS.md, "Choices").
    A no-op without glibc."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl)
        return None


def _reason(e: BaseException) -> str:
    """The innermost cause of an Orbax/TensorStore error in one line: 'No space left on device' rather than a spec."""
    while e.__cause__ is not None or (e.__context__ is not None and not e.__suppress_context__):
        e = e.__cause__ or e.__context__
    if isinstance(e, OSError) and e.strerror:
        text = f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    else:
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
    for code, name in ((errno.ENOSPC, "no space left on device"), (errno.EFBIG, "file too large")):
        if f"os_error_code='{code}'" in text or (isinstance(e, OSError) and e.errno == code):
            written = re.search(r'Failed writing: "([^"]+)"', text)  # TensorStore's wording
            return f"{name} (writing {written[1]})" if written else name
    return text if len(text) <= 400 else text[:400] + " ..."


class _DropOrbaxErrors(pylogging.Filter):
    """Error records Orbax logs itself, and asyncio's 'exception was never retrieved' for a failed Orbax write."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        if record.levelno < pylogging.ERROR:
            return True
        orbax_traceback = record.exc_info is not None and _from_orbax(record.exc_info[2])
        return not (_ORBAX in record.pathname or orbax_traceback)


_ORBAX = f"{os.sep}orbax{os.sep}"


def _from_orbax(exc_traceback) -> bool:
    while exc_traceback is not None:
        if _ORBAX in exc_traceback.tb_frame.f_code.co_filename:
            return True
        exc_traceback = exc_traceback.tb_next
    return False


def quiet_orbax_errors() -> None:
    """Called once by the commands that read or write checkpoints (it sets a process-wide hook, so no library call
    does). Orbax logs each failing writer or reader thread's error with its traceback (16 of them for one full disk),
    asyncio may log a failed write's sibling futures as 'exception was never retrieved', and the sibling reads of a
    failed restore die later as 'Exception ignored' coroutines; we turn what Orbax raises into one CheckpointError,
    so these copies are dropped (every other log line and unraisable error still shows)."""
    for name in ("absl", "asyncio"):  # a failed write's sibling futures end up in asyncio's log
        logger = pylogging.getLogger(name)
        if not any(isinstance(f, _DropOrbaxErrors) for f in logger.filters):
            logger.addFilter(_DropOrbaxErrors())
    previous = sys.unraisablehook
    if getattr(previous, "_jaxgpt", False):
        return

    def hook(unraisable):
        # The second kind: TensorStore's read callbacks of a failed restore landing on Orbax's closed event loop.
        late = unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed"
        if not (late or _from_orbax(unraisable.exc_traceback)):
            previous(unraisable)

    hook._jaxgpt = True
    sys.unraisablehook = hook


def load(workdir: str | os.PathLike, step: int | None = None, mesh: jax.sharding.Mesh | None = None):
    """`(model, config)` of `load_step`: the newest intact checkpoint of `workdir`, or the given step."""
    model, cfg, _ = load_step(workdir, step, mesh)
    return model, cfg


def load_step(workdir: str | os.PathLike, step: int | None = None, mesh: jax.sharding.Mesh | None = None):
    """Returns `(model, config, step)` from the newest intact (or the given) checkpoint in `workdir`, without the
    optimizer state, and prints which step it loaded.

    The parameters land on `mesh`, by default the first local device, so a checkpoint written on 8 GPUs opens in a
    notebook on one CPU; pass a mesh (sharding.make_mesh) to spread a large model over several devices. `config` holds
    every knob of this jaxgpt, those the checkpoint predates at their defaults. A damaged newest step is skipped with a
    warning; a damaged `step=` is a CheckpointError.
    """
    directory = rundir.checkpoint_dir(workdir)
    if not os.path.isdir(directory):
        raise CheckpointError(f"{workdir}: no checkpoints/ directory; is this a jaxgpt workdir?")
    ckpt = Checkpointer(directory, every=1, keep=1_000_000)  # keep: never delete anything from a reader
    if mesh is None:  # one device: any model width fits, which an FSDP mesh over odd device counts would not
        mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])

    def read(at: int):
        cfg = saved_config(ckpt, at)
        layout = StateLayout.build(StepConfig.from_config(cfg, num_steps=1), mesh)
        return layout.model(ckpt.restore_params(layout.abstract.params, at)), cfg

    try:
        if step is None:
            found = ckpt.restore_newest(read, set_aside=False)
            if found is None:
                ckpt.resolve(None)  # raises: no checkpoint
            step, (model, cfg) = found
        else:
            ckpt.resolve(step)
            ckpt.check_committed(step)
            model, cfg = read(step)
    finally:
        ckpt.close()
    print(f"jaxgpt: loaded step {step} of {directory}", file=sys.stderr)
    return model, cfg, step


def saved_config(ckpt: Checkpointer, step: int) -> ml_collections.ConfigDict:
    """The run config a checkpoint holds, completed with the defaults of knobs it predates."""
    try:
        return config.complete(ckpt.restore_json(step)[0], f"{ckpt.directory}/{step}")
    except ConfigError as e:  # a newer jaxgpt's knob, or a value that does not fit
        raise CheckpointError(str(e)) from None
