"""jaxgpt: GPT pretraining in JAX/Flax NNX over Modalities' packed token files.

The data path, file by file (jaxgpt/data/): index.py (jsonl -> .idx) -> pack.py + tokenize.py (.idx -> .pbin) ->
pbin.py (the .idx/.pbin format; pickles.py, atomic.py) -> source.py (windows) -> pipeline.py (sharded global batches)
-> model/ (config.py, layers.py, attention.py, gpt.py, loss.py, flops.py) -> state.py (the train state) ->
train_step.py (pure jitted steps) -> train.py (the loop; recorder.py logs it) -> checkpoint.py (Orbax; `load()`).
configs/base.py declares every knob once; config.py derives the dataclass defaults and the resumable keys from it.

This package file imports nothing heavy: the data tools import `jaxgpt.data.pbin` and must not pay for jax.
"""

__all__ = ["PackedWindowSource"]


def __getattr__(name):
    # Lazy, so that `import jaxgpt.data.pbin` (the CLI tools) never imports grain or jax.
    if name == "PackedWindowSource":
        from jaxgpt.data.source import PackedWindowSource

        return PackedWindowSource
    raise AttributeError(f"module 'jaxgpt' has no attribute {name!r}")
