"""Steady-state speed of the sharded train step, against Modalities' GPT2LLM at the same shapes.

    flock /tmp/jaxgpt-bench.lock .venv/bin/python bench/train_step.py --config=configs/gpt60m.py
    flock /tmp/jaxgpt-bench.lock .venv/bin/python bench/train_step.py --loss_mask --nomodalities   # mask overhead
    flock /tmp/jaxgpt-bench.lock .venv/bin/python bench/train_step.py --layer_stats --nomodalities  # layer statistics
    flock /tmp/jaxgpt-bench.lock .venv/bin/python bench/train_step.py --doc_mask --nomodalities  # document masking

Times `--steps` train steps after compilation and warmup on all local devices (mesh from the config), reports compile
time, peak memory, tokens/s and MFU = tokens/s * flops_per_token / (peak FLOP/s * devices). The peak is
train.peak_flops, else the device table (bf16 dense), else on CPU a 2048^3 float32 matmul timed in this run. On CPU the
compute dtype is float32 (bf16 matmuls are emulated and slow there); elsewhere the config's. Then it runs the same step
(B, T, model, AdamW, clipping) in Modalities' own GPT2LLM through --modalities_python (default: the Modalities venv) on
the same kind of device: PyTorch CPU with --torch_threads threads, or CUDA with float32 weights under bf16 autocast when
the compute dtype is bf16 (eager, as Modalities runs by default), and prints the ratio. Steps are queued back to back
and timed until the last one finishes, on both sides: the training loop also reads metrics a step late, so the device
never waits for the host between steps. The last line is `tokens_per_s=<x> mfu=<y>`.

On a GPU machine whose python has torch but not Modalities, carry the Modalities wheel (see BENCHMARKS.md) and run
    XLA_PYTHON_CLIENT_PREALLOCATE=false python bench/train_step.py --modalities_python=python3
"""

import dataclasses
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

from jaxgpt.model import count_params, flops_per_token, measure_matmul_peak, peak_flops, total_peak_flops
from jaxgpt.model.attention import attention_implementation
from jaxgpt.sharding import batch_sharding, data_parallel_size, make_mesh
from jaxgpt.train.state import StateLayout, StepConfig
from jaxgpt.train.step import make_train_step

REPO = pathlib.Path(__file__).resolve().parent.parent
MODALITIES_PYTHON = REPO / ".bench_cache" / "modalities-venv" / "bin" / "python"

_CONFIG = config_flags.DEFINE_config_file("config", str(REPO / "configs" / "gpt60m.py"), "config file")
_STEPS = flags.DEFINE_integer("steps", 5, "timed steps")
_WARMUP = flags.DEFINE_integer("warmup", 2, "untimed steps after compilation")
_MODALITIES = flags.DEFINE_bool("modalities", True, "also time Modalities' GPT2LLM (PyTorch, same device kind)")
_MODALITIES_PYTHON = flags.DEFINE_string("modalities_python", str(MODALITIES_PYTHON), "python that imports modalities")
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", 2, "PyTorch threads for the Modalities run")
_TORCH_STEPS = flags.DEFINE_integer("torch_steps", 3, "timed Modalities steps")
_LOSS_MASK = flags.DEFINE_bool(
    "loss_mask",
    False,
    "also time the step with loss masks (data.loss_mask_tokens), alternating rounds, and print the overhead",
)
_LAYER_STATS = flags.DEFINE_bool(
    "layer_stats",
    False,
    "also time the step that measures the layers (train.layer_stats_every), alternating rounds, and print the overhead",
)
_DOC_MASK = flags.DEFINE_bool(
    "doc_mask",
    False,
    "also time the step with document masking (model.doc_mask and doc_positions), alternating rounds, and print the"
    " overhead",
)
_PROFILE_DIR = flags.DEFINE_string(
    "profile_dir", "", "also trace 3 steps with jax.profiler into this folder (Perfetto)"
)


def peak_memory_bytes() -> tuple[str, int]:
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return "device peak bytes in use", stats["peak_bytes_in_use"]
    return "process max RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_modalities(step_cfg: StepConfig, batch: int, device: str) -> dict | None:
    python = _MODALITIES_PYTHON.value
    if "/" in python and not pathlib.Path(python).exists():
        print(f"modalities: skipped, {python} is absent")
        return None
    o = step_cfg.optim
    spec = {
        "mode": "bench",
        "model": {**step_cfg.model.__dict__},
        "batch": batch,
        "steps": _TORCH_STEPS.value,
        "warmup": max(1, _WARMUP.value),
        "threads": _TORCH_THREADS.value,
        "device": device,
        # Modalities' BF_16 mixed precision: float32 master weights, bf16 matmuls
        "autocast": "bfloat16" if device == "cuda" and step_cfg.compute_dtype == "bfloat16" else None,
        "optim": {"lr": o.lr, "b1": o.b1, "b2": o.b2, "eps": o.eps, "weight_decay": o.weight_decay},
    }
    spec["optim"]["clip_norm"] = o.clip_norm if o.clip_norm > 0 else float("inf")
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump(spec, f)
        f.flush()
        cmd = [python, str(REPO / "tools" / "modalities_gpt2.py"), f.name]
        out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        print(f"modalities: failed ({out.returncode}): {out.stderr[-2000:]}")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def _timed(compiled, state, batch, steps: int):
    """(state, seconds per step) of `steps` queued steps after one untimed step."""
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    return state, (time.perf_counter() - start) / steps


def _alternate(name: str, state, rounds: int, **variants):
    """Times each (compiled step, batch) of `variants` in turn, `rounds` times over, on one state; prints the best
    round of each and the last variant's overhead over the first; returns the state."""
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(rounds):
        for label, (compiled, batch) in variants.items():
            state, seconds = _timed(compiled, state, batch, _STEPS.value)
            best[label] = min(best[label], seconds)
    seconds_by_variant = list(best.values())
    base_s, other_s = seconds_by_variant[0], seconds_by_variant[-1]
    times = " ".join(f"{label}={seconds:.4f}" for label, seconds in best.items())
    print(
        f"{name}: step_s {times} (best of {rounds} alternating rounds of {_STEPS.value} steps)"
        f" {name}_overhead={100 * (other_s / base_s - 1):+.1f}%"
    )
    return state


def time_loss_mask(layout: StateLayout, state, tokens, put, rounds: int = 4):
    """The step with and without loss masks, in alternating rounds on the same state layout; the best round of each.
    The masked batch holds an assistant turn (begin .. end marker) in every row, so a third of its targets count."""
    begin, end = 61, 3  # "^" and "$" in GPT-2
    T = tokens.shape[1] - 1
    chat = tokens.copy()
    chat[:, T // 3], chat[:, 2 * T // 3] = begin, end
    plain_batch = {"inputs": put(tokens[:, :-1]), "targets": put(tokens[:, 1:])}
    chat_batch = {"inputs": put(chat[:, :-1]), "targets": put(chat[:, 1:])}
    masked_layout = StateLayout.build(dataclasses.replace(layout.cfg, loss_mask_ids=(begin, end)), layout.mesh)
    plain = make_train_step(layout).lower(state, plain_batch).compile()
    masked = make_train_step(masked_layout).lower(state, chat_batch).compile()
    return _alternate("loss_mask", state, rounds, plain=(plain, plain_batch), masked=(masked, chat_batch))


def time_layer_stats(layout: StateLayout, state, batch, rounds: int = 4):
    """The step with and without per-layer statistics, in alternating rounds on the same state; the best round of
    each. The loop runs the measuring step only every train.layer_stats_every steps: this is its cost on those."""
    plain = make_train_step(layout).lower(state, batch).compile()
    measuring = make_train_step(layout, layer_stats=True).lower(state, batch).compile()
    return _alternate("layer_stats", state, rounds, plain=(plain, batch), measuring=(measuring, batch))


def time_doc_mask(layout: StateLayout, state, tokens, put, rounds: int = 4):
    """The step with and without document masking, in alternating rounds on the same state; the best round of each.
    Both read one batch of documents of 50 to 400 tokens ending at <|endoftext|>; the masked step splits at them."""
    eod = 50256
    docs = tokens.copy()
    rng = np.random.default_rng(1)
    for row in docs:
        ends = np.cumsum(rng.integers(50, 400, size=len(row) // 50))
        row[ends[ends < len(row)]] = eod
    batch = {"inputs": put(docs[:, :-1]), "targets": put(docs[:, 1:])}
    model = dataclasses.replace(layout.cfg.model, doc_mask=True, doc_positions=True, eod_token_id=eod)
    masked_layout = StateLayout.build(dataclasses.replace(layout.cfg, model=model), layout.mesh)
    plain = make_train_step(layout).lower(state, batch).compile()
    masked = make_train_step(masked_layout).lower(state, batch).compile()
    return _alternate("doc_mask", state, rounds, plain=(plain, batch), masked=(masked, batch))


def main(argv):
    del argv
    cfg = _CONFIG.value
    backend = jax.default_backend()
    step_cfg = StepConfig.from_config(cfg, num_steps=1000).resolved(backend)  # "auto": float32 on CPU, bf16 on GPU
    mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    dp, T = data_parallel_size(mesh), step_cfg.model.seq_len
    G = cfg.train.micro_batch_size * dp * step_cfg.grad_accum
    n_dev = mesh.devices.size
    print(f"backend={backend} devices={n_dev} ({jax.devices()[0].device_kind}) mesh={dict(mesh.shape)}")
    print(f"params={count_params(step_cfg.model):,} batch={G}x{T} grad_accum={step_cfg.grad_accum}")
    m = step_cfg.model
    attention = attention_implementation(step_cfg.attention, step_cfg.dtype, m.head_dim, doc_mask=m.doc_mask)
    print(
        f"compute_dtype={step_cfg.compute_dtype} remat={step_cfg.remat} loss_chunks={step_cfg.loss_chunks}"
        f" attention={attention} doc_mask={m.doc_mask} doc_positions={m.doc_positions}"
    )

    start = time.perf_counter()
    layout = StateLayout.build(step_cfg, mesh)
    state = jax.block_until_ready(layout.init(0))
    print(f"init_s={time.perf_counter() - start:.1f}")
    step = make_train_step(layout)
    tokens = np.random.default_rng(0).integers(0, 50257, (G, T + 1)).astype(np.int32)
    put = lambda x: jax.device_put(x, batch_sharding(mesh))  # noqa: E731
    batch = {"inputs": put(tokens[:, :-1]), "targets": put(tokens[:, 1:])}
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    print(f"compile_s={time.perf_counter() - start:.1f}")
    for _ in range(_WARMUP.value):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(_STEPS.value):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - start) / _STEPS.value
    if _PROFILE_DIR.value:
        with jax.profiler.trace(_PROFILE_DIR.value, create_perfetto_trace=True):
            for _ in range(3):
                state, metrics = compiled(state, batch)
            jax.block_until_ready(metrics)
    tokens_per_s = G * T / step_s
    print(f"step_s={step_s:.4f} (mean of {_STEPS.value} queued steps) loss={float(metrics['loss']):.3f}")
    label, peak_mem = peak_memory_bytes()
    print(f"peak_memory={peak_mem / 2**30:.2f} GiB ({label})")

    flops_tok = flops_per_token(step_cfg.model, T)
    peak = cfg.train.peak_flops or peak_flops(jax.devices()[0])
    source = "train.peak_flops" if cfg.train.peak_flops else "device table (bf16 dense)"
    if peak is None:
        peak, source = measure_matmul_peak(), "measured 2048^3 float32 jitted matmul"
    mfu = tokens_per_s * flops_tok / total_peak_flops(peak, list(mesh.devices.flat))
    print(f"flops_per_token={flops_tok / 1e6:.1f}M peak={peak / 1e9:.0f} GFLOP/s per device ({source})")
    print(f"model_tflops={tokens_per_s * flops_tok / 1e12:.3f}")

    if _LOSS_MASK.value:
        state = time_loss_mask(layout, state, tokens, put)
    if _LAYER_STATS.value:
        state = time_layer_stats(layout, state, batch)
    if _DOC_MASK.value:
        state = time_doc_mask(layout, state, tokens, put)

    if _MODALITIES.value and backend in ("cpu", "gpu"):
        device = "cuda" if backend == "gpu" else "cpu"
        ref = run_modalities(step_cfg, G, device)
        if ref is not None:
            how = f"CPU, {_TORCH_THREADS.value} threads" if device == "cpu" else "CUDA, bf16 autocast"
            mem = f" peak_memory={ref['peak_memory_bytes'] / 2**30:.2f} GiB" if ref.get("peak_memory_bytes") else ""
            print(
                f"modalities: params={ref['params']:,} step_s={ref['step_s']:.4f} "
                f"tokens_per_s={ref['tokens_per_s']:.0f} (PyTorch {how}, batch {G}x{T}){mem}"
            )
            print(f"speedup_vs_modalities={tokens_per_s / ref['tokens_per_s']:.2f}x")
    print(f"tokens_per_s={tokens_per_s:.0f} mfu={mfu:.3f}")


if __name__ == "__main__":
    app.run(main)
