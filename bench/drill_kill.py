"""kill -9 drill: a tiny run killed at random moments, restarted each time, must end exactly as if never killed.

    flock /tmp/jaxgpt-bench.lock .venv/bin/python bench/drill_kill.py [--kills 20] [--steps 100] [--seed 0]

Saves every step (checkpoint.every=1), so many kills land inside an asynchronous save. How we know one did: Orbax
writes a save into `<step>.orbax-checkpoint-tmp*` and renames it when complete, so a temporary directory found right
after the kill means the process died mid-save. Each restarted run is killed a random 0..--max_delay seconds after it
logged a random 2..6 steps past its resume point (at least 2, so that every restart gets a checkpoint further: the
first save after a start is slow, and a kill always inside it would never move the run on). Afterwards every
metrics.jsonl event (train and eval losses) and the final parameters must equal those of an uninterrupted run, bit for
bit. tests/test_reliability.py runs 3 kills of it in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"


def command(workdir: str, steps: int) -> list[str]:
    """The tiny run of the drill: 8 seqs x 64 tokens, evaluations every 5 steps, a checkpoint every step."""
    return [
        sys.executable,
        "-m",
        "jaxgpt.train",
        f"--config={REPO / 'configs' / 'tiny.py'}",
        f"--workdir={workdir}",
        f"--config.data.train_path={DATA / 'redpajama_v2_samples_512_train.pbin'}",
        f"--config.data.val_path={DATA / 'redpajama_v2_samples_512_test.pbin'}",
        f"--config.train.num_steps={steps}",
        "--config.train.micro_batch_size=1",
        "--config.train.eval_every=5",
        "--config.train.eval_steps=2",
        "--config.checkpoint.every=1",
        "--config.wandb.mode=disabled",
    ]


def logged_step(workdir: str) -> int:
    """The newest step metrics.jsonl holds (a half-written last line is skipped, as the run itself does)."""
    try:
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            lines = f.readlines()
    except FileNotFoundError:
        return 0
    steps = []
    for line in lines:
        try:
            steps.append(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError, TypeError):
            pass
    return max(steps, default=0)


def checkpoints(workdir: str) -> tuple[list[int], list[str]]:
    """(complete steps, Orbax temporary directories of saves in flight)."""
    directory = os.path.join(workdir, "checkpoints")
    names = os.listdir(directory) if os.path.isdir(directory) else []
    return sorted(int(n) for n in names if n.isdigit()), sorted(n for n in names if ".orbax-checkpoint-tmp" in n)


def drill(
    cmd: list[str],
    workdir: str,
    kills: int,
    rng: random.Random,
    max_delay: float,
    env: dict,
    timeout: float = 300,
    span: tuple[int, int] = (2, 6),
) -> list[dict]:
    """Kills the run `kills` times (restarting it each time), then lets it finish; one record per kill."""
    records = []
    while len(records) < kills:
        resumed_at = max(checkpoints(workdir)[0], default=0)
        target = resumed_at + rng.randint(*span)
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)
            deadline = time.monotonic() + timeout
            while proc.poll() is None and logged_step(workdir) < target and time.monotonic() < deadline:
                time.sleep(0.02)
            if proc.poll() is None:
                time.sleep(rng.uniform(0.0, max_delay))
            if proc.poll() is not None:  # finished (or failed) before the kill: no kill to count
                err.seek(0)
                if proc.returncode:
                    raise RuntimeError(f"the run failed with {proc.returncode}: {err.read()[-3000:].decode()}")
                break
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        steps, in_flight = checkpoints(workdir)
        records.append(
            {
                "kill": len(records) + 1,
                "resumed_at": resumed_at,
                "logged": logged_step(workdir),
                "newest_checkpoint": max(steps, default=0),
                "inside_save": bool(in_flight),
            }
        )
    subprocess.run(
        cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout
    )
    return records


def events(workdir: str) -> list[tuple]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [(e["event"], e["step"], e.get("loss", e.get("eval_loss"))) for e in map(json.loads, f)]


def same_params(a: str, b: str) -> bool:
    import jax
    import numpy as np
    from flax import nnx

    from jaxgpt import checkpoint

    leaves = [jax.tree.leaves(nnx.state(checkpoint.load(w)[0], nnx.Param)) for w in (a, b)]
    return len(leaves[0]) == len(leaves[1]) and all(np.array_equal(x, y) for x, y in zip(*leaves))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max_delay", type=float, default=1.0, help="seconds after the target step was logged")
    args = p.parse_args()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    root = tempfile.mkdtemp(prefix="jaxgpt-drill-kill-")
    try:
        start = time.perf_counter()
        reference, killed = os.path.join(root, "reference"), os.path.join(root, "killed")
        subprocess.run(
            command(reference, args.steps),
            cwd=REPO,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        records = drill(command(killed, args.steps), killed, args.kills, random.Random(args.seed), args.max_delay, env)
        for r in records:
            print(
                f"kill {r['kill']:2d}: resumed at {r['resumed_at']:3d}, logged up to {r['logged']:3d}, newest"
                f" checkpoint {r['newest_checkpoint']:3d}" + (", inside an async save" if r["inside_save"] else "")
            )
        same_events, params = events(killed) == events(reference), same_params(killed, reference)
        inside = sum(r["inside_save"] for r in records)
        print(
            f"{len(records)} kills ({inside} inside an async save) of a {args.steps}-step run; every logged loss"
            f" equal: {same_events}; final parameters equal: {params};"
            f" {time.perf_counter() - start:.0f} s"
        )
        if not (same_events and params and len(records) == args.kills):
            sys.exit("drill FAILED")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
