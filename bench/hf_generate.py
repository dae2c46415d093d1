"""Hugging Face generate (torch CPU, KV cache) on jaxgpt's exported weights, beside jaxgpt.generate on the same ones.

    flock /tmp/jaxgpt-bench.lock .venv/bin/python bench/hf_generate.py [--config=configs/gpt60m.py] [--workdir=DIR]

The model (a random init of the config, or the checkpoint in --workdir) is exported with jaxgpt/interop/hf.py in float32
to a temporary folder and loaded with AutoModelForCausalLM (its native class: StableLM for gpt60m). A 64-token prompt
and 256 new tokens, greedy, at batch 1 and 8; HF runs with min_new_tokens=256 and jaxgpt with no eos, so every row
decodes all 256. Each is warmed up once (jaxgpt's compile and torch's first call excluded), then timed once. Prints one
line per (engine, batch) and a last line `hf_batch1=X hf_batch8=Y jaxgpt_batch1=Z jaxgpt_batch8=W` (tokens/s, new tokens
only).
"""

import pathlib
import tempfile
import time

import jax
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from jaxgpt import checkpoint, sharding
from jaxgpt.generate import generate_ids
from jaxgpt.interop import hf
from jaxgpt.interop.params import flat_params
from jaxgpt.train.state import StateLayout, StepConfig

REPO = pathlib.Path(__file__).resolve().parent.parent
_CONFIG = config_flags.DEFINE_config_file("config", str(REPO / "configs" / "gpt60m.py"), "config file")
_WORKDIR = flags.DEFINE_string("workdir", "", "time a trained checkpoint instead of a random init")
_PROMPT = flags.DEFINE_integer("prompt_len", 64, "prompt tokens")
_NEW = flags.DEFINE_integer("new_tokens", 256, "new tokens per row")
_BATCHES = flags.DEFINE_list("batches", ["1", "8"], "batch sizes")
_THREADS = flags.DEFINE_integer("torch_threads", 2, "PyTorch threads (the dev box has 2 cores)")
_TOKENIZER = flags.DEFINE_string("tokenizer_file", str(REPO / "data" / "tokenizer" / "tokenizer.json"), "tokenizer")


def jaxgpt_model():
    """The float32 model on one device: a random init of --config, or --workdir's newest checkpoint."""
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    if _WORKDIR.value:
        return checkpoint.load(_WORKDIR.value, mesh=mesh)[0]
    cfg = _CONFIG.value
    cfg.train.compute_dtype = "float32"
    layout = StateLayout.build(StepConfig.from_config(cfg, num_steps=1), mesh)
    return layout.model(layout.init(0).params)


def time_hf(model, prompts_BxP: np.ndarray) -> float:
    import torch

    ids = torch.from_numpy(prompts_BxP.astype(np.int64))
    kwargs = dict(max_new_tokens=_NEW.value, min_new_tokens=_NEW.value, do_sample=False, use_cache=True)
    with torch.no_grad():
        model.generate(ids, **{**kwargs, "max_new_tokens": 2, "min_new_tokens": 2})  # first-call costs
        start = time.perf_counter()
        out = model.generate(ids, **kwargs)
        seconds = time.perf_counter() - start
    assert out.shape[1] == prompts_BxP.shape[1] + _NEW.value
    return prompts_BxP.shape[0] * _NEW.value / seconds


def time_jaxgpt(model, prompts_BxP: np.ndarray, vocab: int) -> float:
    prompts = prompts_BxP.tolist()
    run = lambda: generate_ids(model, prompts, max_new_tokens=_NEW.value, eos_id=None, vocab_size=vocab)  # noqa: E731
    run()  # compiles
    start = time.perf_counter()
    out = run()
    seconds = time.perf_counter() - start
    assert all(len(row) == _NEW.value for row in out)
    return prompts_BxP.shape[0] * _NEW.value / seconds


def main(argv):
    del argv
    import torch
    import transformers

    torch.set_num_threads(_THREADS.value)
    model = jaxgpt_model()
    m = model.cfg
    _, vocab = hf.special_ids(_TOKENIZER.value, "<|endoftext|>")
    with tempfile.TemporaryDirectory() as tmp:
        params = flat_params(nnx.state(model, nnx.Param))
        hf.write_folder(f"{tmp}/hf", params, m, tokenizer_file=_TOKENIZER.value)
        hf_model = transformers.AutoModelForCausalLM.from_pretrained(f"{tmp}/hf").eval()
    print(
        f"{type(hf_model).__name__}, {sum(p.numel() for p in hf_model.parameters()):,} parameters, "
        f"torch {torch.__version__} ({_THREADS.value} threads), transformers {transformers.__version__}"
    )
    rates = {}
    for batch in map(int, _BATCHES.value):
        prompts_BxP = np.random.default_rng(batch).integers(0, vocab, (batch, _PROMPT.value)).astype(np.int32)
        rates[f"hf_batch{batch}"] = time_hf(hf_model, prompts_BxP)
        rates[f"jaxgpt_batch{batch}"] = time_jaxgpt(model, prompts_BxP, vocab)
        for engine in ("hf", "jaxgpt"):
            print(f"{engine:>6} batch {batch}: {rates[f'{engine}_batch{batch}']:.1f} tokens/s", flush=True)
    print(" ".join(f"{k}={v:.1f}" for k, v in sorted(rates.items())))


if __name__ == "__main__":
    app.run(main)
