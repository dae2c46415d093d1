"""Steady-state speed of the sharded train step, against Modalities' GPT2LLM at the same shapes.

    flock /tmp/jaxgpt-bench.lock .venv/bin/python bench/train_step.py --config=configs/gpt60m.py

Times `--steps` train steps after compilation and warmup on all local devices (mesh from the config), reports compile
time, peak memory, tokens/s and MFU = tokens/s * flops_per_token / (peak FLOP/s * devices). The peak is train.peak_flops,
else the device table (bf16 dense), else on CPU a 2048^3 float32 matmul timed in this run. On CPU the compute dtype is
float32 (bf16 matmuls are emulated and slow there); elsewhere the config's. Then it runs the same step (B, T, model,
AdamW, clipping) in Modalities' own GPT2LLM on PyTorch CPU with --torch_threads threads, through the Modalities venv,
and prints the ratio. The last line is `tokens_per_s=<x> mfu=<y>`.
"""

import json
import pathlib
import resource
import subprocess
import tempfile
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from jaxgpt.model import count_params, flops_per_token, measure_matmul_peak, peak_flops
from jaxgpt.sharding import batch_sharding, data_parallel_size, make_mesh
from jaxgpt.train_step import StepConfig, create_train_state, make_train_step

REPO = pathlib.Path(__file__).resolve().parent.parent
MODALITIES_PYTHON = REPO / ".bench_cache" / "modalities-venv" / "bin" / "python"

_CONFIG = config_flags.DEFINE_config_file("config", str(REPO / "configs" / "gpt60m.py"), "config file")
_STEPS = flags.DEFINE_integer("steps", 5, "timed steps")
_WARMUP = flags.DEFINE_integer("warmup", 2, "untimed steps after compilation")
_MODALITIES = flags.DEFINE_bool("modalities", True, "also time Modalities' GPT2LLM (PyTorch CPU)")
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", 2, "PyTorch threads for the Modalities run")
_TORCH_STEPS = flags.DEFINE_integer("torch_steps", 3, "timed Modalities steps")


def peak_memory_bytes() -> tuple[str, int]:
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return "device peak bytes in use", stats["peak_bytes_in_use"]
    return "process max RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_modalities(step_cfg: StepConfig, batch: int) -> dict | None:
    if not MODALITIES_PYTHON.exists():
        print(f"modalities: skipped, {MODALITIES_PYTHON} is absent")
        return None
    o = step_cfg.optim
    spec = {
        "mode": "bench",
        "model": {**step_cfg.model.__dict__},
        "batch": batch,
        "steps": _TORCH_STEPS.value,
        "warmup": 1,
        "threads": _TORCH_THREADS.value,
        "optim": {"lr": o.lr, "b1": o.b1, "b2": o.b2, "eps": o.eps, "weight_decay": o.weight_decay},
    }
    spec["optim"]["clip_norm"] = o.clip_norm if o.clip_norm > 0 else float("inf")
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump(spec, f)
        f.flush()
        cmd = [str(MODALITIES_PYTHON), str(REPO / "tools" / "modalities_gpt2.py"), f.name]
        out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        print(f"modalities: failed ({out.returncode}): {out.stderr[-2000:]}")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv):
    del argv
    cfg = _CONFIG.value
    backend = jax.default_backend()
    if backend == "cpu":
        cfg.train.compute_dtype = "float32"  # bf16 matmuls are emulated on CPU
    step_cfg = StepConfig.from_config(cfg, num_steps=1000)
    mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    dp, T = data_parallel_size(mesh), step_cfg.model.seq_len
    G = cfg.train.micro_batch_size * dp * step_cfg.grad_accum
    n_dev = mesh.devices.size
    print(f"backend={backend} devices={n_dev} ({jax.devices()[0].device_kind}) mesh={dict(mesh.shape)}")
    print(f"params={count_params(step_cfg.model):,} batch={G}x{T} grad_accum={step_cfg.grad_accum}")
    print(f"compute_dtype={step_cfg.compute_dtype} remat={step_cfg.remat}")

    start = time.perf_counter()
    graphdef, state = create_train_state(step_cfg, mesh, seed=0)
    jax.block_until_ready(state)
    print(f"init_s={time.perf_counter() - start:.1f}")
    step = make_train_step(step_cfg, graphdef, mesh)
    tokens = np.random.default_rng(0).integers(0, 50257, (G, T + 1)).astype(np.int32)
    put = lambda x: jax.device_put(x, batch_sharding(mesh))  # noqa: E731
    batch = {"inputs": put(tokens[:, :-1]), "targets": put(tokens[:, 1:])}
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    print(f"compile_s={time.perf_counter() - start:.1f}")
    for _ in range(_WARMUP.value):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(_STEPS.value):
        start = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    step_s = float(np.median(times))
    tokens_per_s = G * T / step_s
    print(f"step_s median={step_s:.3f} min={min(times):.3f} max={max(times):.3f} loss={float(metrics['loss']):.3f}")
    label, peak_mem = peak_memory_bytes()
    print(f"peak_memory={peak_mem / 2**30:.2f} GiB ({label})")

    flops_tok = flops_per_token(step_cfg.model, T)
    peak = cfg.train.peak_flops or peak_flops(jax.devices()[0])
    source = "train.peak_flops" if cfg.train.peak_flops else "device table (bf16 dense)"
    if peak is None:
        peak, source = measure_matmul_peak(), "measured 2048^3 float32 jitted matmul"
    mfu = tokens_per_s * flops_tok / (peak * n_dev)
    print(f"flops_per_token={flops_tok / 1e6:.1f}M peak={peak / 1e9:.0f} GFLOP/s per device ({source})")
    print(f"model_tflops={tokens_per_s * flops_tok / 1e12:.3f}")

    if _MODALITIES.value and backend == "cpu":
        ref = run_modalities(step_cfg, G)
        if ref is not None:
            print(
                f"modalities: params={ref['params']:,} step_s={ref['step_s']:.3f} "
                f"tokens_per_s={ref['tokens_per_s']:.0f} (PyTorch CPU, {_TORCH_THREADS.value} threads, batch {G}x{T})"
            )
            print(f"speedup_vs_modalities={tokens_per_s / ref['tokens_per_s']:.2f}x")
    print(f"tokens_per_s={tokens_per_s:.0f} mfu={mfu:.3f}")


if __name__ == "__main__":
    app.run(main)
