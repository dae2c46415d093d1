"""Predicted against measured peak memory per device of the train step on CPU: `jaxgpt plan`'s figures against a run.

    python bench/plan.py --config=configs/tiny.py [--devices=8] [--config.key=value ...]
    python bench/plan.py --config=configs/gpt60m.py --config.train.micro_batch_size=1   # 8 x 0.5 GB

Plans the config as `jaxgpt plan --device=cpu` does (XLA's memory analysis of the compiled step, and the analytic
model), then runs that step twice on the same fake CPU devices and measures the process's peak resident memory:
- jax 0.10.2 has no memory_stats() on CPU (None), so the peak is the kernel's: VmHWM of /proc/self/status, reset to
  the current resident set (echo 5 > /proc/self/clear_refs) once the compiles are done, less VmRSS before the state
  was allocated: the state, the batch and the step's temporaries, nothing of the compiler's own peak;
- the child runs with GLIBC_TUNABLES=glibc.malloc.mmap_threshold=65536, so that glibc returns every freed block over
  64 KiB to the system: a buffer freed earlier is not reused unseen, and a freed one leaves the resident set;
- one host's fake devices run the step side by side, so the peak per device is the measured peak / devices;
- a config whose plan does not fit this host (its RAM / devices each, less the headroom) is not run.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
CHILD = "JAXGPT_BENCH_PLAN_CHILD"


def status_kib(field: str) -> int:
    """A field of /proc/self/status (VmRSS, VmHWM) in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def release_and_reset() -> int:
    """Frees what can be freed, returns the resident bytes and resets the high-water mark to them."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status_kib("VmRSS") * 1024


def measure(argv: list[str]) -> None:
    import jax
    import numpy as np
    from ml_collections import config_flags

    from jaxgpt import plan
    from jaxgpt.sharding import batch_sharding, make_mesh
    from jaxgpt.train import memory
    from jaxgpt.train.state import StateLayout

    fv = plan.parse(argv)
    n = fv.devices
    cpus = plan.cpu_devices(n)
    p = plan.make(fv.config, cpus, plan.device("cpu", n), fv.mfu, fv.headroom)
    print(plan.render(p, config_flags.get_config_filename(fv["config"])), flush=True)
    if not p.fits:  # running it would take the host's memory from everyone on it
        raise SystemExit("not run: the plan does not fit this host; pick a smaller --config.train.micro_batch_size")

    # the program the plan compiled: the same config, mesh and devices
    layout = StateLayout.build(dataclasses.replace(p.step, attention="xla"), make_mesh(**p.mesh, devices=cpus))
    compiled = memory.compile_step(layout, p.micro_batch)
    G, T = p.global_batch, p.step.model.seq_len
    tokens = np.random.default_rng(0).integers(0, p.step.model.vocab_size, (G, T + 1)).astype(np.int32)
    put = lambda x: jax.device_put(x, batch_sharding(layout.mesh))  # noqa: E731
    jax.block_until_ready(layout.init(0))  # compiles the init; what it allocated is freed below
    before = release_and_reset()
    state = jax.block_until_ready(layout.init(0))
    batch = {"inputs": put(tokens[:, :-1]), "targets": put(tokens[:, 1:])}
    release_and_reset()  # forget init's temporaries: from here the mark is the state and what the steps add
    for _ in range(2):
        state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
    peak = status_kib("VmHWM") * 1024 - before
    measured, predicted, analytic = peak / n, p.xla.total, p.compiled.total
    print(
        f"measured peak per device: {measured / 1e6:.1f} MB ({peak / 1e6:.1f} MB over {n} fake devices: VmHWM during"
        f" 2 steps less VmRSS before the state); predicted by XLA {predicted / 1e6:.1f} MB"
        f" ({100 * (predicted / measured - 1):+.1f}%), analytic {analytic / 1e6:.1f} MB"
        f" ({100 * (analytic / measured - 1):+.1f}%); loss {float(metrics['loss']):.3f}"
    )


def main() -> None:
    if os.environ.get(CHILD):
        measure(sys.argv[1:])
        return
    devices = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--devices=")), "8")
    env = {
        **os.environ,
        CHILD: "1",
        "JAX_NUM_CPU_DEVICES": devices,
        "JAX_PLATFORMS": "cpu",
        "GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    raise SystemExit(subprocess.run([sys.executable, __file__, *sys.argv[1:]], env=env).returncode)


if __name__ == "__main__":
    main()
