"""An HF folder of a class in jaxgpt/interop/hf.py's table as a jaxgpt GPT (`jaxgpt eval --hf=FOLDER`): the options its
config.json fixes, the weights mapped back by `hf.from_hf`, float32, replicated on a mesh. Where the options leave a
choice (GPT-2's config does not say whether its biases or positions are all zero), the one that holds any weights is
taken: the model computes the same either way."""

from __future__ import annotations

import jax
from flax import nnx

from jaxgpt.errors import ExportError
from jaxgpt.interop import hf
from jaxgpt.interop.params import with_params
from jaxgpt.model import GPT, ModelConfig
from jaxgpt.model.layers import MLPS


def model_config(config: dict, where: str) -> ModelConfig:
    """The jaxgpt options of an HF config.json (hf.model_options), its window as data.seq_len."""
    options = hf.model_options(config, where)
    chosen = {k: (max(v) if k == "n_head_kv" else v[0]) for k, v in options.items() if k != "mlp_hidden"}
    seq_len = config.get("n_positions") or config.get("max_position_embeddings")
    if not seq_len:
        raise ExportError(f"{where}: config.json has no n_positions or max_position_embeddings (the window)")
    F = options["mlp_hidden"][0]
    ffn = ffn_hidden(chosen["mlp"], F)
    if ffn is None:
        raise ExportError(f"{where}: an MLP hidden size of {F} is not one that jaxgpt's {chosen['mlp']} MLP makes")
    return ModelConfig(**chosen, ffn_hidden=ffn, seq_len=int(seq_len))


def ffn_hidden(mlp: str, F: int) -> int | None:
    """A model.ffn_hidden whose MLP has hidden size F (SwiGLU keeps about 2/3 of it, rounded up to 256), or None."""
    for candidate in (F, (3 * F) // 2, (3 * F + 1) // 2):
        if MLPS[mlp].hidden_size(candidate) == F:
            return candidate
    return None


def load_hf(folder: str, mesh: jax.sharding.Mesh | None = None) -> GPT:
    """The folder's model in float32, its parameters replicated over `mesh` (default: the first device)."""
    config, tensors = hf.read_folder(folder)
    m = model_config(config, folder)
    flat = hf.from_hf(tensors, m, folder)
    model = GPT(m, rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    for key in ("wte.weight", "lm_head.weight"):  # an HF table without the padded rows: exactly its vocab_size rows
        if key in flat and flat[key].shape[0] != m.vocab_size:
            raise ExportError(f"{folder}: {key} has {flat[key].shape[0]} rows, config.json's vocab_size {m.vocab_size}")
    state = with_params(state, flat)
    if mesh is not None:
        state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    nnx.update(model, state)
    return model
