"""Writes getting_started.ipynb's cells (run from the repository root; then execute it to fill its outputs):

    .venv/bin/python notebooks/make_notebook.py
    JAXGPT_WORKDIR=runs/gpt60m_steps24 .venv/bin/jupyter nbconvert --to notebook --execute --inplace \
        notebooks/getting_started.ipynb    # or: .venv/bin/python notebooks/make_notebook.py --execute
The cells live here, as plain text a diff can show; the committed .ipynb holds them with a real run's outputs.
"""

import pathlib
import sys

import nbformat

HERE = pathlib.Path(__file__).resolve().parent

CELLS = [
    (
        "markdown",
        """# jaxgpt: use the getting-started run

Restores the checkpoint that `bash getting_started.sh` trained (Orbax, on whatever devices are present), evaluates the
validation loss, plots the run and generates text with the kv-cached sampler. Set `JAXGPT_WORKDIR` to use another """
        "run.",
    ),
    (
        "code",
        """import os

WORKDIR = os.environ.get("JAXGPT_WORKDIR", "runs/gpt60m_steps24")
if os.path.basename(os.getcwd()) == "notebooks":
    os.chdir("..")  # WORKDIR and the data paths in its config are relative to the repository root""",
    ),
    (
        "markdown",
        "## Restore\n`checkpoint.load` rebuilds the model from the config the checkpoint holds; by default on one"
        " device.",
    ),
    (
        "code",
        """import jax
from flax import nnx

from jaxgpt import checkpoint, generate, plots, rundir, sharding
from jaxgpt.data.loader import pipeline
from jaxgpt.data.loader.source import PackedWindowSource
from jaxgpt.data.tokenize import load_tokenizer
from jaxgpt.model import count_params
from jaxgpt.train.state import StateLayout, StepConfig
from jaxgpt.train.step import make_eval_step

model, cfg = checkpoint.load(WORKDIR)
print(f"{count_params(model.cfg):,} parameters, {model.cfg.n_layer} layers of width {model.cfg.n_embd}, "
      f"trained {cfg.train.num_steps} steps; devices: {jax.device_count()} x {jax.devices()[0].device_kind}")""",
    ),
    ("markdown", "Sharded instead: every parameter split over all local devices (FSDP), as training lays it out."),
    (
        "code",
        """mesh = sharding.make_mesh(1, -1, 1, devices=jax.local_devices())
model, cfg = checkpoint.load(WORKDIR, mesh=mesh)
print(dict(mesh.shape), "| wte.weight [V, D] is split as", model.wte.weight[...].sharding.spec)""",
    ),
    (
        "markdown",
        "## Validation loss\nThe eval step of training, on the first `train.eval_steps` batches of the validation"
        " split.",
    ),
    (
        "code",
        """import json

layout = StateLayout.build(StepConfig.from_config(cfg, num_steps=1), mesh)
eval_step = make_eval_step(layout)
params = nnx.state(model, nnx.Param)
val = PackedWindowSource(cfg.data.val_path.split(","), cfg.data.seq_len, cfg.model.vocab_size)
loss_sum = num_tokens = 0.0
with open(os.path.join(WORKDIR, "config.json")) as f:
    eval_batch = json.load(f)["derived"]["eval_batch"]  # the run's evaluation batch: the same windows it evaluated
batches = pipeline.eval_batches(val, global_batch_size=eval_batch, sharding=sharding.batch_sharding(mesh))
with batches:
    for i, batch in zip(range(cfg.train.eval_steps or 10**9), batches):
        out = eval_step(params, batch)
        loss_sum, num_tokens = loss_sum + float(out["loss_sum"]), num_tokens + float(out["num_tokens"])
run = plots.read_runs([WORKDIR])[0]
print(f"validation loss {loss_sum / num_tokens:.4f} over {int(num_tokens):,} tokens; "
      f"the run logged {run.eval[max(run.eval)]['eval_loss']:.4f} at step {max(run.eval)}")""",
    ),
    (
        "markdown",
        "## The run\nTrain and eval loss (tokens seen on the top axis), learning rate, gradient norm, tokens/s, from"
        " `metrics.jsonl`.",
    ),
    ("code", """plots.figure([run])"""),
    (
        "markdown",
        "## Generate\nThe tokenizer the run recorded in its workdir; one prefill, then a jitted decode loop with a kv"
        " cache.\n"
        "After the getting-started run's 24 steps (loss 8.1) the model has learnt token frequencies, not language:"
        " expect word salad.",
    ),
    (
        "code",
        """tokenizer = load_tokenizer(rundir.tokenizer_path(WORKDIR))
prompts = ["The best way to learn a language is", "In 2023, the city council"]
for c in generate.generate(model, tokenizer, prompts, max_new_tokens=32, temperature=0.8, top_p=0.95, seed=0):
    print(f"{c.prompt!r} -> {c.completion!r}")""",
    ),
]


def build() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    make = {"markdown": nbformat.v4.new_markdown_cell, "code": nbformat.v4.new_code_cell}
    nb.cells = [make[kind](text) for kind, text in CELLS]
    return nb


def execute(nb: nbformat.NotebookNode, cwd: str, timeout: int = 600) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": cwd}}).execute()
    return nb


if __name__ == "__main__":
    nb = build()
    if "--execute" in sys.argv:
        execute(nb, str(HERE.parent))
    nbformat.write(nb, HERE / "getting_started.ipynb")
