"""jax.distributed found in the environment: the flags, JAX's coordinator variables, or a SLURM step (srun)."""

import os
import socket
import subprocess

import pytest
from conftest import REPO, assert_close, tiny_cli, tiny_config, train_losses

from jaxgpt import distributed, train
from jaxgpt.errors import ConfigError

SLURM_STEP = {  # what srun sets in each of 2 tasks on one node (only the variables jaxgpt reads, and SLURM_NTASKS)
    "SLURM_JOB_ID": "4242",
    "SLURM_STEP_ID": "0",
    "SLURM_STEP_NUM_TASKS": "2",
    "SLURM_NTASKS": "2",
    "SLURM_STEP_NUM_NODES": "1",
    "SLURM_STEP_NODELIST": "localhost",
}


def test_the_launch_comes_from_the_flags_then_jax_variables_then_slurm():
    jax_env = {"JAX_COORDINATOR_ADDRESS": "h0:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    slurm = {**SLURM_STEP, "SLURM_PROCID": "1", "SLURM_LOCALID": "1", "SLURM_STEP_NODELIST": "gpu[07-08,11],cpu1"}
    assert distributed.detect(env={}) is None
    assert distributed.detect(env={"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2"}) is None  # sbatch's shell: not a step
    assert distributed.detect(env={**SLURM_STEP, "SLURM_STEP_NUM_TASKS": "1", "SLURM_PROCID": "0"}) is None
    launch = distributed.detect(env=slurm)
    assert (launch.coordinator, launch.num_processes, launch.process_id) == ("gpu07:61586", 2, 1)  # 61440 + 4242 % 4096
    assert launch.local_device_ids == (1,)  # 2 tasks on 1 node: one device each
    two_nodes = distributed.detect(env={**slurm, "SLURM_STEP_NUM_NODES": "2", "JAX_COORDINATOR_PORT": "999"})
    assert two_nodes.coordinator == "gpu07:999" and two_nodes.local_device_ids is None  # 1 task per node: all devices
    assert distributed.detect(env={**slurm, **jax_env}).coordinator == "h0:1234"
    assert distributed.detect("f:1", 2, 0, env={**slurm, **jax_env}).coordinator == "f:1"
    assert "SLURM (srun, job 4242, 2 tasks on 1 node(s))" in launch.describe()
    assert [distributed.first_host(n) for n in ("a", "a,b", "n[001-004]", "n[3,5-9],x")] == ["a", "a", "n001", "n3"]


@pytest.mark.parametrize(
    "kwargs, env, message",
    [
        ({"coordinator": "h:1", "num_processes": 2}, {}, "flags .*: the process id is missing"),
        ({}, {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_PROCESS_ID": "0"}, "JAX_NUM_PROCESSES.*number of processes is"),
        ({}, {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"}, r"not in \[0, 2\)"),
        ({}, {**SLURM_STEP, "SLURM_PROCID": "x"}, r"\$SLURM_PROCID='x' is not an integer"),
        (
            {},
            {k: v for k, v in SLURM_STEP.items() if k != "SLURM_STEP_NODELIST"} | {"SLURM_PROCID": "0"},
            r"without \$SLURM_STEP_NODELIST",
        ),
    ],
)
def test_an_incomplete_launch_is_one_clear_error(kwargs, env, message):
    with pytest.raises(ConfigError, match=message):
        distributed.detect(**kwargs, env=env)


def test_two_srun_tasks_on_localhost_train_like_one_process(tmp_path):
    """Simulated SLURM variables, no flags: both processes join one 8-device mesh and match the 1-process run."""
    overrides = {"train.num_steps": 3, "data.val_path": ""}
    single = str(tmp_path / "single")
    train.run(tiny_config(**overrides), single)
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = str(s.getsockname()[1])
    workdir = str(tmp_path / "srun")
    cmd = tiny_cli(workdir, "--config.train.num_steps=3", "--config.data.val_path=")
    env = {**os.environ, **SLURM_STEP, "JAX_COORDINATOR_PORT": port}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"  # 4 devices per process, 8 in the mesh
    procs = [
        subprocess.Popen(
            cmd,
            cwd=REPO,
            env={**env, "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    banner = outs[0][0]
    assert "over 8 cpu device(s), 2 process(es)" in banner, banner
    assert (
        f"jax.distributed from SLURM (srun, job 4242, 2 tasks on 1 node(s)): process 0 of 2, coordinator"
        f" localhost:{port}" in banner
    )
    a, b = train_losses(workdir), train_losses(single)
    assert a.keys() == b.keys() == {1, 2, 3}
    assert_close([a[s] for s in a], [b[s] for s in a], depth=50304 + 512)  # logsumexp over V, mean over tokens
