"""jaxgpt: GPT pretraining in JAX/Flax NNX over Modalities' packed token files.

The data path, file by file: pbin.py (the .idx/.pbin format) -> source.py (Grain windows) -> batches.py
(sharded global batches) -> model.py -> sharding.py -> train_step.py -> checkpoint.py -> train.py.

This package file imports nothing heavy: the data tools import `jaxgpt.pbin` and must not pay for jax.
"""

__all__ = ["PackedWindowSource"]


def __getattr__(name):
    # Lazy, so that `import jaxgpt.pbin` (the CLI tools) never imports grain or jax.
    if name == "PackedWindowSource":
        from jaxgpt.source import PackedWindowSource

        return PackedWindowSource
    raise AttributeError(f"module 'jaxgpt' has no attribute {name!r}")
