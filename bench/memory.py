"""Host memory over time: a 2,000-step tiny training run, and the loader on a 10 GB .pbin.

    flock /tmp/jaxgpt-bench.lock .venv/bin/python bench/memory.py [--steps 2000] [--gb 10] [--batches 20000]

run     `python -m jaxgpt.train` on configs/tiny.py (1 CPU device, no evaluation, a checkpoint every --every=500
        steps); its resident set (VmRSS of /proc/PID/status) is read when metrics.jsonl first shows each of --marks
loader  the training pipeline (train_batches: shuffle, gather, device_put) over a sparse 10 GB .pbin (a header, a hole
        of zero tokens, the index pickle: no disk space used) for --batches global batches of 8 x 513 random windows;
        RSS split into anonymous memory (what the loader allocates) and file pages (the memmap's pages it touched, which
        the kernel may drop at any time)
"""

from __future__ import annotations

import argparse
import os
import pathlib
import pickle
import struct
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from drill_kill import logged_step  # noqa: E402


def rss_mib(pid: int | str = "self") -> dict[str, float]:
    """VmRSS, RssAnon and RssFile of a process, in MiB."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                fields[key] = int(value.split()[0]) / 1024
    return fields


def training_run(steps: int, marks: list[int], every: int) -> None:
    data = REPO / "tests" / "data" / "redpajama_v2_samples_512_train.pbin"
    with tempfile.TemporaryDirectory() as workdir:
        cmd = [
            sys.executable,
            "-m",
            "jaxgpt.train",
            f"--config={REPO / 'configs' / 'tiny.py'}",
            f"--workdir={workdir}",
            f"--config.data.train_path={data}",
            "--config.data.val_path=",
            f"--config.train.num_steps={steps}",
            f"--config.checkpoint.every={every}",
            "--config.wandb.mode=disabled",
        ]
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cpu"}
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pending = list(marks)
        while pending and proc.poll() is None:
            step = logged_step(workdir)
            while pending and step >= pending[0]:
                m = rss_mib(proc.pid)
                print(
                    f"run: step {step:5d} ({time.perf_counter() - start:5.0f} s): RSS {m['VmRSS']:7.1f} MiB"
                    f" (anonymous {m['RssAnon']:7.1f}, file {m['RssFile']:6.1f})",
                    flush=True,
                )
                pending.pop(0)
            time.sleep(0.05)
        if proc.wait():
            raise RuntimeError(f"the training run failed with {proc.returncode}")


def write_sparse_pbin(path: str, gigabytes: float) -> int:
    """A .pbin of `gigabytes` GB of uint16 zero tokens (a hole) as one document; returns its token count."""
    data_len = int(gigabytes * 1e9) // 2 * 2
    with open(path, "wb") as f:
        f.write(struct.pack("<QI", data_len, 2))
        f.seek(12 + data_len)
        f.write(pickle.dumps([(0, data_len)], protocol=4))
    return data_len // 2


def loader(gigabytes: float, batches: int) -> None:
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from jaxgpt.data.loader.pipeline import train_batches
    from jaxgpt.data.loader.source import PackedWindowSource

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "synthetic.pbin")
        tokens = write_sparse_pbin(path, gigabytes)
        src = PackedWindowSource(path, 512, 50304)
        sharding = NamedSharding(jax.make_mesh((jax.device_count(),), ("data",)), P("data"))
        print(
            f"loader: {os.path.getsize(path) / 1e9:.1f} GB .pbin, {tokens:,} tokens, {len(src):,} windows;"
            f" before: RSS {rss_mib()['VmRSS']:.1f} MiB",
            flush=True,
        )
        start = time.perf_counter()
        with train_batches(src, global_batch_size=8, seed=0, sharding=sharding) as it:
            for i in range(1, batches + 1):
                jax.block_until_ready(next(it))
                if i in (100, batches // 10, batches // 2, batches):
                    m = rss_mib()
                    print(
                        f"loader: batch {i:6d} ({time.perf_counter() - start:5.1f} s): RSS {m['VmRSS']:7.1f} MiB"
                        f" (anonymous {m['RssAnon']:7.1f}, file {m['RssFile']:6.1f})",
                        flush=True,
                    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--gb", type=float, default=10.0)
    p.add_argument("--batches", type=int, default=20000)
    p.add_argument("--only", choices=["run", "loader"], default=None)
    p.add_argument("--every", type=int, default=500, help="checkpoint.every of the training run")
    p.add_argument("--marks", default="100,1000", help="steps at which the run's RSS is read (and at the last)")
    args = p.parse_args()
    if args.only != "loader":
        marks = sorted({int(m) for m in args.marks.split(",") if int(m) < args.steps} | {args.steps})
        training_run(args.steps, marks, args.every)
    if args.only != "run":
        loader(args.gb, args.batches)


if __name__ == "__main__":
    main()
