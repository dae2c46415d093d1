"""Profiles of a run's steps into DIR/profile/: a jax.profiler trace of train.profile_steps, and the device memory in
use after train.profile_memory_step (pprof).

The loop asks one question per step, `done == profiler.due`: `due` is the next step after whose dispatch the profiler
acts, and NEVER when it has nothing (left) to do, so a run without profiles pays one int compare per step. When it
acts, it first waits for that step to finish: the trace holds whole steps, the memory profile that step's state.
Waiting changes when the host reads the device, never what the device computes.
"""

from __future__ import annotations

import os
import warnings

import jax

from jaxgpt import rundir
from jaxgpt.config import TrainConfig

NEVER = 0  # steps count from 1: a `due` that no step reaches


class Profiler:
    """The trace and the memory profile of one run; a context manager, whose exit ends a trace still running (the run
    stopped, or failed, inside the traced steps)."""

    def __init__(self, workdir: str, train: TrainConfig, start_step: int):
        """start_step: the step the run resumes from (0 for a fresh run); what lies before it is not profiled."""
        self.start_step = start_step
        self.directory = profile_dir(workdir)
        steps, self.memory_step = train.profile_range, train.profile_memory_step
        self._start_after = self._stop_after = None  # the steps after which the trace starts and stops
        if steps is not None and steps[1] > start_step:
            self._start_after, self._stop_after = max(steps[0] - 1, start_step), steps[1]
        elif steps is not None:
            _passed(f"train.profile_steps={train.profile_steps!r}", start_step)
        if 0 < self.memory_step <= start_step:
            _passed(f"train.profile_memory_step={self.memory_step}", start_step)
            self.memory_step = 0
        self._tracing = False
        self.due = self._next(start_step)

    def __enter__(self) -> Profiler:
        if self._start_after == self.start_step:  # the trace starts with the first step this run dispatches
            self._start()
        return self

    def __exit__(self, *exc) -> None:
        if self._tracing:
            self._stop()

    def after(self, done: int, state) -> None:
        """After step `done` was dispatched (its new state `state`): whatever is due then, once the step is done."""
        jax.block_until_ready(state)
        if done == self._stop_after:
            self._stop()
        if done == self.memory_step:
            os.makedirs(self.directory, exist_ok=True)
            jax.profiler.save_device_memory_profile(memory_profile_path(self.directory, done))
        if done == self._start_after:
            self._start()
        self.due = self._next(done)

    def _next(self, done: int) -> int:
        later = [s for s in (self._start_after, self._stop_after, self.memory_step) if s and s > done]
        return min(later, default=NEVER)

    def _start(self) -> None:
        jax.profiler.start_trace(self.directory, create_perfetto_trace=True)
        self._tracing = True

    def _stop(self) -> None:
        self._tracing = False
        jax.profiler.stop_trace()


def _passed(knob: str, start_step: int) -> None:
    warnings.warn(f"{knob}: the run resumes past it, at step {start_step + 1}; not profiled", stacklevel=3)


def profile_dir(workdir: str) -> str:
    """DIR/profile; with several processes, DIR/profile/process<i>: each writes its own trace folder."""
    directory = rundir.path(workdir, rundir.PROFILE)
    return os.path.join(directory, f"process{jax.process_index()}") if jax.process_count() > 1 else directory


def memory_profile_path(directory: str, step: int) -> str:
    return os.path.join(directory, f"memory_step{step}.prof")


def describe(workdir: str, train: TrainConfig) -> str | None:
    """The banner's lines: what is profiled, where it goes and how to open it; None when nothing is."""
    directory, steps, lines = profile_dir(workdir), train.profile_range, []
    if steps is not None:
        lines.append(f"profile: steps {steps[0]} to {steps[1]} traced into {directory}/plugins/profile/<time>/")
        lines.append(
            "  open its perfetto_trace.json.gz at https://ui.perfetto.dev, or run"
            f" `tensorboard --logdir {directory}` (with tensorboard-plugin-profile)"
        )
    if train.profile_memory_step:
        path = memory_profile_path(directory, train.profile_memory_step)
        lines.append(
            f"profile: device memory after step {train.profile_memory_step} into {path}: `pprof -http=: {path}`"
        )
    return "\n        ".join(lines) or None
