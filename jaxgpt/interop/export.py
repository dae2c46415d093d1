"""A run's checkpoint out to another framework: `jaxgpt export hf|modalities --workdir=DIR --out=OUT`.

Both read the newest (or --step's) checkpoint, check that the model's options have a place in the target before any
weight leaves the device, find the run's tokenizer (jaxgpt/rundir.py), and write the folder atomically.
"""

from __future__ import annotations

from collections.abc import Callable

from flax import nnx

from jaxgpt import checkpoint, rundir
from jaxgpt.errors import ExportError
from jaxgpt.interop import hf, modalities
from jaxgpt.interop.params import flat_params
from jaxgpt.model import ModelConfig


def _read(workdir: str, step: int | None, tokenizer_file: str | None, check: Callable[[ModelConfig], object]):
    """(flat params, model options, tokenizer file) of a run's checkpoint; `check` refuses options before the copy."""
    model, cfg = checkpoint.load(workdir, step)
    m = ModelConfig.from_config(cfg)
    check(m)
    tokenizer = rundir.find_tokenizer(workdir, tokenizer_file, cfg)
    return flat_params(nnx.state(model, nnx.Param)), m, tokenizer


def to_hf(
    workdir: str,
    out: str,
    *,
    step: int | None = None,
    dtype: str = "float32",
    tokenizer_file: str | None = None,
    eod_token: str = "<|endoftext|>",
) -> None:
    """An HF folder of the native class for the run's options (jaxgpt/interop/hf.py's table)."""
    if dtype not in hf.DTYPES:  # before the checkpoint is read
        raise ExportError(f"--dtype={dtype!r} must be one of {hf.DTYPES}")
    params, m, tokenizer = _read(workdir, step, tokenizer_file, hf.model_type)
    hf.write_folder(out, params, m, tokenizer_file=tokenizer, eod_token=eod_token, dtype=dtype)


def to_modalities(
    workdir: str,
    out: str,
    *,
    step: int | None = None,
    tokenizer_file: str | None = None,
    eod_token: str = "<|endoftext|>",
    prompt: str = "Once upon a time",
) -> None:
    """A Modalities folder: GPT2LLM's state dict, its model config and a generate_text config."""
    params, m, tokenizer = _read(workdir, step, tokenizer_file, modalities.model_config)
    modalities.write_folder(out, params, m, tokenizer_file=tokenizer, eod_token=eod_token, prompt=prompt)
