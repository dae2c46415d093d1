"""jaxgpt: GPT pretraining in JAX/Flax NNX over Modalities' packed token files.

The path of the data, by folder:
    data/       prepare/ (jsonl -> .idx -> .pbin, shuffles, chunks), format/ (.idx/.pbin), loader/ (windows, batches)
    model/      config, layers, attention, gpt (one forward path, kv cache), loss, flops
    train/      state, step (pure, jitted), optim, setup, resume, record, recorder, evaluation, signals, loop
    checkpoint.py (Orbax; `load()`), generate.py (kv-cached sampling), plots.py, interop/ (HF, Modalities, warm starts)
and around them: config.py (the knobs and their defaults), errors.py (JaxgptError, the root of every user-facing
error), io.py (atomic outputs), rundir.py (the run directory), sharding.py (one table), distributed.py, cli.py
(`jaxgpt`).

This package file imports nothing heavy: the data tools import `jaxgpt.data.format.pbin` and must not pay for jax.
"""

__all__ = ["PackedWindowSource"]


def __getattr__(name):
    # Lazy, so that the data tools never import grain or jax.
    if name == "PackedWindowSource":
        from jaxgpt.data.loader.source import PackedWindowSource

        return PackedWindowSource
    raise AttributeError(f"module 'jaxgpt' has no attribute {name!r}")
