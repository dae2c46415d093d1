"""jax.distributed for multi-host runs, found in the environment, so that one command runs on a laptop and under srun.

Where the coordinates come from, first match wins:
    1. the flags --coordinator_address, --num_processes, --process_id (train.py)
    2. JAX's coordinator variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID (a plain launch)
    3. a SLURM job step of several tasks (srun): process id SLURM_PROCID of SLURM_STEP_NUM_TASKS (or SLURM_NTASKS),
       coordinator the step's first node (SLURM_STEP_NODELIST) on JAX_COORDINATOR_PORT, else on the port JAX itself
       derives from SLURM_JOB_ID; with several tasks per node, each task drives the local device SLURM_LOCALID
    4. none of these: one process, jax.distributed is not started
A batch script's own shell (sbatch, salloc) is one task of no step: it does not count, so only what srun starts joins.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxgpt.errors import ConfigError

_described: str | None = None  # how this process joined, once initialize() ran; the banner prints it


@dataclasses.dataclass(frozen=True)
class Launch:
    """The coordinates of one process of a multi-process job."""

    coordinator: str  # host:port of process 0
    num_processes: int
    process_id: int
    local_device_ids: tuple[int, ...] | None  # None: every local device
    source: str  # where the coordinates came from, for the banner

    def describe(self) -> str:
        return (
            f"jax.distributed from {self.source}: process {self.process_id} of {self.num_processes},"
            f" coordinator {self.coordinator}"
        )


def detect(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    env: Mapping[str, str] = os.environ,
) -> Launch | None:
    """The launch the flags or the environment describe, or None for a single process."""
    if coordinator or num_processes is not None or process_id is not None:
        return _complete(
            coordinator, num_processes, process_id, "flags --coordinator_address, --num_processes, --process_id"
        )
    if env.get("JAX_COORDINATOR_ADDRESS"):
        names = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
        return _complete(env["JAX_COORDINATOR_ADDRESS"], _int(env, names[1]), _int(env, names[2]), ", ".join(names))
    tasks = _int(env, "SLURM_STEP_NUM_TASKS") or _int(env, "SLURM_NTASKS")
    if "SLURM_STEP_ID" in env and tasks and tasks > 1:
        return _slurm(env, tasks)
    return None


def _slurm(env: Mapping[str, str], tasks: int) -> Launch:
    for name in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID"):
        if name not in env:
            raise ConfigError(f"SLURM: a step of {tasks} tasks without ${name}; cannot find the coordinator")
    port = env.get("JAX_COORDINATOR_PORT") or str(61440 + _int(env, "SLURM_JOB_ID") % 4096)  # JAX's own choice
    nodes = _int(env, "SLURM_STEP_NUM_NODES") or _int(env, "SLURM_NNODES") or 1
    local = (_int(env, "SLURM_LOCALID"),) if tasks > nodes and "SLURM_LOCALID" in env else None
    source = f"SLURM (srun, job {env['SLURM_JOB_ID']}, {tasks} tasks on {nodes} node(s))"
    return Launch(f"{first_host(env['SLURM_STEP_NODELIST'])}:{port}", tasks, _int(env, "SLURM_PROCID"), local, source)


def _complete(coordinator, num_processes, process_id, source: str) -> Launch:
    missing = [
        n
        for n, v in (
            ("coordinator address", coordinator),
            ("number of processes", num_processes),
            ("process id", process_id),
        )
        if v is None or v == ""
    ]
    if missing:
        raise ConfigError(f"jax.distributed from {source}: the {' and '.join(missing)} is missing; give all three")
    if not 0 <= process_id < num_processes:
        raise ConfigError(f"jax.distributed from {source}: process id {process_id} is not in [0, {num_processes})")
    return Launch(coordinator, num_processes, process_id, None, source)


def _int(env: Mapping[str, str], name: str) -> int | None:
    if name not in env:
        return None
    try:
        return int(env[name])
    except ValueError:  # int() of the variable's text
        raise ConfigError(f"${name}={env[name]!r} is not an integer") from None


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: 'node[001-004,7],gpu2' -> 'node001'; 'a,b' -> 'a'."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise ConfigError(f"SLURM_STEP_NODELIST={nodelist!r}: no host name in it")
    prefix, ranges = match.groups()
    return prefix + re.split(r"[-,]", ranges)[0] if ranges else prefix


def initialize(launch: Launch | None) -> None:
    """Starts jax.distributed for `launch` (nothing for None); before any other jax call."""
    global _described
    if launch is None:
        return
    # CPU processes need gloo for cross-process collectives (GPU backends ignore this option).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    ids = list(launch.local_device_ids) if launch.local_device_ids is not None else None
    jax.distributed.initialize(
        launch.coordinator,
        launch.num_processes,
        launch.process_id,
        local_device_ids=ids,
        cluster_detection_method="deactivate",
    )  # we detected it ourselves
    _described = launch.describe()


def describe() -> str:
    """How this process joined a multi-process job, or that it runs alone."""
    return _described or "single process (no jax.distributed)"


def is_lead() -> bool:
    """Whether this process writes the run's files (process 0)."""
    return jax.process_index() == 0


def all_processes(ok: bool) -> bool:
    """Whether `ok` holds on every process (one process: itself)."""
    if jax.process_count() == 1:
        return ok
    return bool(multihost_utils.process_allgather(np.array(ok)).all())


def any_process(flag: bool) -> bool:
    """Whether `flag` holds on some process (one process: itself)."""
    if jax.process_count() == 1:
        return flag
    return bool(multihost_utils.process_allgather(np.array(flag)).any())


def lead_says(flag: bool) -> bool:
    """Process 0's `flag`, on every process (for what only process 0 knows, such as its files)."""
    if jax.process_count() == 1:
        return flag
    return bool(multihost_utils.broadcast_one_to_all(np.array(flag)))
