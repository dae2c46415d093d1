"""Hosts drill: checkpoints move between 1 and 2 jax.distributed processes, and a job survives losing a process.

    flock /tmp/jaxgpt-bench.lock .venv/bin/python bench/drill_hosts.py [--steps 8] [--kill_after 180]

All on localhost CPUs: "2 hosts" are 2 processes of 4 fake devices each (gloo collectives), "1 host" one process of
8, so the mesh (fsdp=8) and the global batch are the same. Three drills:
  2 -> 1   2 processes stop after steps/2 with a checkpoint; 1 process resumes it to the end
  1 -> 2   the other way round
  kill     process 1 of a 2-process run is killed (-9) after the first checkpoint; we time how long process 0 takes
           to exit and keep the last line it printed; then both restart and resume the job to the end
Each ends with the losses of an uninterrupted 1-process run (rtol 1e-5; processes reduce in another order).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from drill_kill import checkpoints, command  # noqa: E402 - the same tiny run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start(workdir: str, steps: int, processes: int, *extra: str, stderr=subprocess.DEVNULL) -> list[subprocess.Popen]:
    """The tiny run in 1 process of 8 devices, or in 2 of 4 found through JAX's coordinator variables."""
    devices = 8 // processes
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    if processes > 1:
        env |= {"JAX_COORDINATOR_ADDRESS": f"localhost:{free_port()}", "JAX_NUM_PROCESSES": str(processes)}
    cmd = [*command(workdir, steps), "--config.checkpoint.every=2", *extra]
    return [
        subprocess.Popen(cmd, cwd=REPO, env={**env, "JAX_PROCESS_ID": str(i)}, stdout=subprocess.DEVNULL, stderr=stderr)
        for i in range(processes)
    ]


def finish(procs: list[subprocess.Popen], timeout: float = 600) -> None:
    codes = [p.wait(timeout=timeout) for p in procs]
    if any(codes):
        raise RuntimeError(f"exit codes {codes}")


def train_losses(workdir: str) -> dict[int, float]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {e["step"]: e["loss"] for e in map(json.loads, f) if e["event"] == "train"}


def same_losses(a: str, b: str) -> str:
    la, lb = train_losses(a), train_losses(b)
    if la.keys() != lb.keys():
        return f"steps differ: {sorted(la)} vs {sorted(lb)}"
    worst = max(abs(la[s] - lb[s]) / abs(lb[s]) for s in la)
    ok = np.allclose([la[s] for s in la], [lb[s] for s in la], rtol=1e-5, atol=0)
    return f"{'equal' if ok else 'DIFFERENT'} (max relative difference {worst:.1e})"


def move(root: str, reference: str, steps: int, first: int, then: int) -> str:
    workdir = os.path.join(root, f"{first}to{then}")
    finish(start(workdir, steps, first, f"--stop_after={steps // 2}"))
    finish(start(workdir, steps, then))
    return f"{first} -> {then} processes, resumed at step {steps // 2}: losses {same_losses(workdir, reference)}"


def kill_one(root: str, reference: str, steps: int, kill_after: float) -> str:
    workdir = os.path.join(root, "kill")
    with tempfile.TemporaryFile() as err0:
        procs = start(workdir, steps * 50, 2, stderr=err0)  # long enough to be mid-run when the kill lands
        while not checkpoints(workdir)[0]:
            if procs[0].poll() is not None:
                raise RuntimeError("the run ended before its first checkpoint")
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        try:
            code = procs[0].wait(timeout=kill_after)
            waited = f"process 0 exited with {code} after {time.monotonic() - killed_at:.1f} s"
        except subprocess.TimeoutExpired:
            procs[0].kill()
            code, waited = None, f"process 0 still running {kill_after:.0f} s after the kill (killed by the drill)"
        err0.seek(0)
        lines = err0.read().decode(errors="replace").splitlines()
        # What JAX and Python said, not the stack dump after it: glog-style error lines and the fatal-error line.
        said = [line for line in lines if re.match(r"[EF]\d{4} |Fatal Python error|error: ", line)]
        print(f"kill: {waited}; it said:\n    " + "\n    ".join(line[:400] for line in said[:6]))
    newest = max(checkpoints(workdir)[0])
    finish(start(workdir, steps * 50, 2, f"--stop_after={newest + 4}"))
    ref_steps = train_losses(reference)
    ours = train_losses(workdir)
    common = sorted(s for s in ours if s in ref_steps)
    ok = np.allclose([ours[s] for s in common], [ref_steps[s] for s in common], rtol=1e-5)
    return (
        f"kill: resumed from step {newest} on 2 processes to step {newest + 4}; losses of steps {common[0]}.."
        f"{common[-1]} {'equal' if ok else 'DIFFERENT'} to the uninterrupted run"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--kill_after", type=float, default=180, help="seconds the drill waits for the survivor to exit")
    p.add_argument("--only_kill", action="store_true", help="only the kill drill (and its reference)")
    args = p.parse_args()
    root = tempfile.mkdtemp(prefix="jaxgpt-drill-hosts-")
    try:
        start_time = time.perf_counter()
        # Uninterrupted 1-process runs: one of `steps` steps, and the first steps*2+40 of the kill drill's schedule.
        short, long = os.path.join(root, "reference"), os.path.join(root, "reference_long")
        finish(start(long, args.steps * 50, 1, f"--stop_after={args.steps * 2 + 40}"))
        if not args.only_kill:
            finish(start(short, args.steps, 1))
            print(move(root, short, args.steps, 2, 1))
            print(move(root, short, args.steps, 1, 2))
        print(kill_one(root, long, args.steps, args.kill_after))
        print(f"{time.perf_counter() - start_time:.0f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
