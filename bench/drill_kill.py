"""kill -9 drill: a tiny run killed at random moments, restarted each time, must end exactly as if never killed.

    flock /tmp/jaxgpt-bench.lock .venv/bin/python bench/drill_kill.py [--kills 20] [--steps 100] [--seed 0]

Saves every step (checkpoint.every=1), so many kills land inside an asynchronous save. How we know one did: Orbax
writes a save into `<step>.orbax-checkpoint-tmp*` and renames it when complete, so a temporary directory found right
after the kill means the process died mid-save. Each restarted run is killed a random 0..--max_delay seconds after it
logged a random 2..6 steps past its resume point (at least 2, so that every restart gets a checkpoint further: the
first save after a start is slow, and a kill always inside it would never move the run on). Afterwards every
metrics.jsonl event (train and eval losses) and the final parameters must equal those of an uninterrupted run, bit for
bit. tests/test_reliability.py runs 3 kills of it in CI (the drill itself lives in tests/conftest.py).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import shutil
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
sys.path.insert(0, str(REPO / "tests"))
from conftest import drill  # noqa: E402  (the drill the tests run, with 3 kills)


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
