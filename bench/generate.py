"""Generation speed: jaxgpt's kv-cached decode against full re-forwards and Modalities' generate_text loop.

    flock /tmp/jaxgpt-bench.lock .venv/bin/python bench/generate.py --config=configs/gpt60m.py [--workdir=DIR]

A 64-token prompt and 256 new tokens (greedy, no eos, so every row decodes all of them) at batch 1 and 8, on a
randomly initialised model of the config (or the checkpoint in --workdir). Prints, per batch size:
  - cached: tokens/s of `generate.generate_ids` (prefill included), and its compile time;
  - reforward: tokens/s without a cache, a full forward over the whole 320-slot buffer for each token
    (`generate.reforward_ids`; every step has the same static shape, so --reforward_steps steps time the rate exactly);
  - modalities: Modalities 0.5.0's GPT2LLM with the same weights, decoding as its generate_text does (a forward over
    the growing sequence per token, PyTorch, float32), through its venv; all 256 new tokens at batch 1, the first
    --modalities_tokens at larger batches: the cheapest ones (short sequences), so that rate is an upper bound;
  - at batch 1, the memory-bandwidth bound: the bytes of weights (and kv cache) one decode step reads, against the
    higher of two measured bandwidths: memcpy (bytes read + written per second by numpy copying 1 GiB) and a jitted
    XLA sum reading 1 GiB.
Its last line is `batch1_tokens_per_s=X batch8_tokens_per_s=Y` (the cached path).
"""

import json
import pathlib
import subprocess
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from jaxgpt import checkpoint, generate, sharding
from jaxgpt.model import count_params
from jaxgpt.train.state import StateLayout, StepConfig

REPO = pathlib.Path(__file__).resolve().parent.parent
MODALITIES_PYTHON = REPO / ".bench_cache" / "modalities-venv" / "bin" / "python"

_CONFIG = config_flags.DEFINE_config_file("config", str(REPO / "configs" / "gpt60m.py"), "config file")
_WORKDIR = flags.DEFINE_string("workdir", "", "time a trained checkpoint instead of a random init")
_DTYPE = flags.DEFINE_string("dtype", "", "compute dtype (default: float32 on CPU, the config's elsewhere)")
_PROMPT = flags.DEFINE_integer("prompt_len", 64, "prompt tokens")
_NEW = flags.DEFINE_integer("new_tokens", 256, "new tokens per row")
_BATCHES = flags.DEFINE_list("batches", ["1", "8"], "batch sizes")
_REFORWARD_STEPS = flags.DEFINE_integer("reforward_steps", 16, "timed steps of the no-cache path")
_MODALITIES_TOKENS = flags.DEFINE_integer("modalities_tokens", 32, "new tokens timed for Modalities at batch > 1")
_MODALITIES = flags.DEFINE_bool("modalities", True, "also time Modalities' GPT2LLM through its venv")
_THREADS = flags.DEFINE_integer("torch_threads", 2, "PyTorch threads for Modalities")


def build_model():
    cfg = _CONFIG.value
    step_cfg = StepConfig.from_config(cfg, num_steps=1).resolved(jax.default_backend())  # "auto": f32 on CPU
    dtype = _DTYPE.value or ("float32" if jax.default_backend() == "cpu" else step_cfg.compute_dtype)
    cfg.train.compute_dtype = dtype
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    if _WORKDIR.value:
        model, _ = checkpoint.load(_WORKDIR.value, mesh=mesh)
        return model, dtype
    layout = StateLayout.build(StepConfig.from_config(cfg, num_steps=1), mesh)
    return layout.model(layout.init(0).params), dtype


def memory_bandwidth(nbytes: int = 1 << 30) -> tuple[float, float]:
    """(memcpy, XLA read) bandwidth in bytes/s, the best of 5 each: numpy copying nbytes (read + written counted),
    and a jitted sum over nbytes on the default device (read only, as many threads as the decode step gets)."""
    src, dst = np.ones(nbytes // 4, np.float32), np.empty(nbytes // 4, np.float32)
    x = jnp.ones(nbytes // 4, jnp.float32)
    total = jax.jit(jnp.sum)
    total(x).block_until_ready()
    best_copy = best_read = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        np.copyto(dst, src)
        best_copy = min(best_copy, time.perf_counter() - start)
        start = time.perf_counter()
        total(x).block_until_ready()
        best_read = min(best_read, time.perf_counter() - start)
    return 2 * nbytes / best_copy, nbytes / best_read


def time_cached(model, prompts, new_tokens) -> tuple[float, float, list]:
    """(seconds per call, compile seconds, ids) of the cached path."""
    kw = {"max_new_tokens": new_tokens, "eos_id": None, "batch_size": len(prompts)}
    start = time.perf_counter()
    ids = generate.generate_ids(model, prompts, **kw)
    first = time.perf_counter() - start
    runs = []
    for _ in range(3):
        start = time.perf_counter()
        generate.generate_ids(model, prompts, **kw)
        runs.append(time.perf_counter() - start)
    return min(runs), first - min(runs), ids


def time_reforward(model, prompts, new_tokens, steps) -> float:
    """Seconds per new token (one full forward over prompt + new_tokens slots) of the no-cache path."""
    graphdef, params = nnx.split(model)
    B, P = len(prompts), len(prompts[0])
    tokens = jnp.zeros((B, P + new_tokens), jnp.int32).at[:, :P].set(jnp.asarray(prompts))
    lengths = jnp.full((B,), P, jnp.int32)
    vocab = model.cfg.vocab_size
    for _ in range(2):  # compile, for uncommitted and then for device-resident inputs
        tokens = generate._reforward_step(graphdef, params, tokens, lengths, vocab_limit=vocab)
    start = time.perf_counter()
    for i in range(steps):
        tokens = generate._reforward_step(graphdef, params, tokens, lengths + i, vocab_limit=vocab)
    tokens.block_until_ready()
    return (time.perf_counter() - start) / steps


def run_modalities(model, prompts, new_tokens) -> dict | None:
    python = MODALITIES_PYTHON
    if not python.exists():
        print(f"modalities: skipped, its venv is absent ({python}); bench/pack.py creates it")
        return None
    params = nnx.state(model, nnx.Param)
    weights = {".".join(map(str, path)): np.asarray(var.get_value()) for path, var in nnx.to_flat_state(params)}
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(f"{tmp}/w.npz", **weights)
        np.save(f"{tmp}/x.npy", np.asarray(prompts, np.int64))
        spec = {"mode": "generate", "model": model.cfg.__dict__, "weights": f"{tmp}/w.npz", "tokens": f"{tmp}/x.npy"}
        spec |= {"new_tokens": new_tokens, "threads": _THREADS.value}
        pathlib.Path(f"{tmp}/spec.json").write_text(json.dumps(spec))
        cmd = [str(python), str(REPO / "tools" / "modalities_gpt2.py"), f"{tmp}/spec.json"]
        out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        print(f"modalities: failed ({out.returncode}): {out.stderr[-2000:]}")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def bandwidth_bound(model, dtype: str, prompt_len: int, new_tokens: int, bandwidth: float) -> tuple[float, int]:
    """(tokens/s if each decode step only read its bytes at `bandwidth`, the bytes): every weight once, in the
    dtype the step reads it in (float32 parameters, cast at use when the compute dtype is narrower: the cast reads
    the float32 copy), plus the kv cache at its mean length."""
    cfg = model.cfg
    weight_bytes = count_params(cfg) * 4
    mean_slots = prompt_len + new_tokens / 2
    cache_bytes = cfg.n_layer * 2 * mean_slots * cfg.n_head_kv * cfg.head_dim * jnp.dtype(dtype).itemsize
    step_bytes = int(weight_bytes + cache_bytes)
    return bandwidth / step_bytes, step_bytes


def main(argv):
    del argv
    model, dtype = build_model()
    P, M = _PROMPT.value, _NEW.value
    device = f"{jax.devices()[0].device_kind} ({jax.default_backend()})"
    print(f"{count_params(model.cfg):,} params, compute dtype {dtype}, {device}, prompt {P}, new tokens {M}")
    rng = np.random.default_rng(0)
    results = {}
    for B in (int(b) for b in _BATCHES.value):
        prompts = rng.integers(0, 50257, size=(B, P)).tolist()
        seconds, compile_s, ids = time_cached(model, prompts, M)
        cached = B * M / seconds
        per_token = time_reforward(model, prompts, M, _REFORWARD_STEPS.value)
        reforward = B / per_token
        results[B] = cached
        print(
            f"batch {B}: cached {cached:.1f} tokens/s ({seconds:.2f} s for {M} tokens, prefill included; compile "
            f"{compile_s:.1f} s) | no cache {reforward:.2f} tokens/s ({per_token * 1e3:.0f} ms per token, "
            f"{_REFORWARD_STEPS.value} steps timed) | cached / no cache {cached / reforward:.1f}x",
            flush=True,
        )
        if _MODALITIES.value:
            mod_tokens = M if B == 1 else _MODALITIES_TOKENS.value
            mod = run_modalities(model, prompts, mod_tokens)
            if mod is not None:
                same = all(a[: len(b)] == b for a, b in zip(ids, mod["ids"]))  # the first tokens, greedy both
                print(
                    f"batch {B}: modalities {mod['tokens_per_s']:.2f} tokens/s (first {mod_tokens} "
                    f"tokens, {mod['seconds']:.1f} s) | jaxgpt / modalities {cached / mod['tokens_per_s']:.1f}x | "
                    f"same greedy tokens: {same}",
                    flush=True,
                )
        if B == 1:
            copy_bw, read_bw = memory_bandwidth()
            bw = max(copy_bw, read_bw)  # the higher bandwidth gives the higher bound: the stricter target
            bound, step_bytes = bandwidth_bound(model, dtype, P, M, bw)
            print(
                f"batch 1: bandwidth bound {bound:.1f} tokens/s ({step_bytes / 1e6:.0f} MB per step at "
                f"{bw / 1e9:.1f} GB/s: memcpy {copy_bw / 1e9:.1f} GB/s, XLA read {read_bw / 1e9:.1f} GB/s) | "
                f"cached reaches {cached / bound:.0%} of it",
                flush=True,
            )
    print(" ".join(f"batch{b}_tokens_per_s={v:.1f}" for b, v in results.items()))


if __name__ == "__main__":
    app.run(main)
