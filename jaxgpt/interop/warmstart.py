"""train.init_from: a new run that starts from the parameters of an earlier one (Modalities' warmstart).

The source is a jaxgpt workdir (its newest checkpoint, or PATH@STEP), a folder written by tools/export_hf.py, or any
Hugging Face folder of a class in jaxgpt/interop/hf.py's table whose config maps onto the run's model options. Only the
parameters come over: the optimizer state, the step, the schedule and the dropout key are those of a fresh run, so
the data, optimizer and cadence settings are free; the architecture must agree, and a difference names the key and
both values. A source vocab below model.vocab_size (HF's 50257 into 50304) fills the rows it lacks as training's init
does (train.seed); so do the rows of ids the run's tokenizer has beyond the source's (special tokens added by
`jaxgpt data add_special_tokens`), when the source keeps its tokenizer.json.

Flat params: {"h.0.attn.q_attn.kernel": numpy array, ...} (interop/params.py).
"""

from __future__ import annotations

import os
import sys

import jax
import numpy as np
from flax import nnx

from jaxgpt import checkpoint, rundir
from jaxgpt.data.tokenize import load_tokenizer
from jaxgpt.errors import CheckpointError, ExportError, PackedDataError, WarmStartError
from jaxgpt.interop import hf
from jaxgpt.interop.params import flat_params, key, on_host, with_params
from jaxgpt.model import ModelConfig
from jaxgpt.train.state import StateLayout, TrainState

# ModelConfig fields that are not the architecture: a warm start may change them (seq_len: within a learned table)
_FREE = ("dropout", "init_std", "seq_len")
_VOCAB_TABLES = ("wte.weight", "lm_head.weight")


def init_state(layout: StateLayout, seed: int, init_from: str, tokenizer_file: str = "") -> TrainState:
    """A fresh train state (step 0, fresh optimizer state and dropout key) whose params are those of `init_from`
    ("": the plain init). The vocab rows of ids that the run's `tokenizer_file` (data.tokenizer_file) has and the
    source's tokenizer lacks stay as the init drew them (`new_ids`)."""
    state = layout.init(seed)
    if not init_from:
        return state
    fresh = {key(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(state.params)[0]}
    new = new_ids(init_from, tokenizer_file, layout.cfg.model.vocab_size) if tokenizer_file else None
    source = load(init_from, layout.cfg.model)
    for name in _VOCAB_TABLES:
        if name in source:
            source[name] = _fresh_rows(source[name], on_host(fresh[name]), new)
    if sorted(source) != sorted(fresh):
        missing, extra = sorted(set(fresh) - set(source)), sorted(set(source) - set(fresh))
        raise WarmStartError(f"train.init_from={init_from}: parameters differ: missing {missing}, extra {extra}")
    print(f"jaxgpt: parameters from train.init_from={init_from}", file=sys.stderr)
    if new is not None:
        tables = " and ".join(n for n in _VOCAB_TABLES if n in source)
        print(
            f"jaxgpt: {new.stop - new.start} rows of {tables} (ids {new.start}..{new.stop - 1}, new in"
            f" data.tokenizer_file) re-initialised as training's init draws them",
            file=sys.stderr,
        )
    return state.replace(params=with_params(state.params, source))


def _fresh_rows(table: np.ndarray, fresh: np.ndarray, new: range | None) -> np.ndarray:
    """The source's vocab table with the init's rows where the source has none (padded rows of a smaller table) and
    for the `new` ids: the source never saw those ids as targets, so its rows for them were only pushed down."""
    table = np.concatenate([table, fresh[table.shape[0] :]])
    if new is not None:
        table[new.start : new.stop] = fresh[new.start : new.stop]
    return table


def new_ids(init_from: str, tokenizer_file: str, vocab_size: int) -> range | None:
    """The ids that the run's tokenizer has beyond the source's (None: none, or the source's tokenizer is unknown).
    A jaxgpt workdir and an HF folder alike keep theirs as DIR/tokenizer.json (rundir.TOKENIZER)."""
    path, _ = _split_step(init_from)
    theirs = rundir.tokenizer_path(path)
    if not os.path.isfile(theirs):
        print(
            f"jaxgpt: train.init_from={init_from} has no {rundir.TOKENIZER}: cannot tell which ids of"
            f" data.tokenizer_file are new, every vocab row the source has is kept",
            file=sys.stderr,
        )
        return None
    before, after = _num_ids(theirs, "train.init_from's tokenizer"), _num_ids(tokenizer_file, "data.tokenizer_file")
    if after <= before:
        return None
    if after > vocab_size:
        raise WarmStartError(
            f"data.tokenizer_file={tokenizer_file}: its {after} ids need {after} rows, model.vocab_size={vocab_size}"
            f" has {vocab_size} ({after - before} ids are new since {theirs})"
        )
    return range(before, after)


def _num_ids(path: str, what: str) -> int:
    """The rows a tokenizer needs: its largest id + 1."""
    try:
        return load_tokenizer(path, backend="hf").max_id + 1
    except PackedDataError as e:
        raise WarmStartError(f"{what}: {e}") from None


def load(init_from: str, m: ModelConfig) -> dict[str, np.ndarray]:
    """The flat params of source `init_from` for the run's model options `m`, after checking that they agree."""
    path, step = _split_step(init_from)
    if os.path.isdir(os.path.join(path, "checkpoints")):
        return _from_workdir(path, step, m, init_from)
    if step is not None:
        raise WarmStartError(f"train.init_from={init_from}: @STEP needs a jaxgpt workdir, {path} has no checkpoints/")
    if os.path.isfile(os.path.join(path, "config.json")):
        try:
            config, tensors = hf.read_folder(path)
            check_options(hf.model_options(config, path), m, path)
            params = hf.from_hf(tensors, m, path)
        except ExportError as e:
            raise WarmStartError(f"train.init_from: {e}") from None
        return _fit_positions(params, m, path)
    raise WarmStartError(
        f"train.init_from={init_from}: neither a jaxgpt workdir (no checkpoints/) nor a Hugging Face folder"
        " (no config.json)"
    )


def _split_step(init_from: str) -> tuple[str, int | None]:
    """ "PATH@STEP" -> (PATH, STEP); "PATH" -> (PATH, None)."""
    path, at, step = init_from.rpartition("@")
    if not at or os.path.exists(init_from):
        return init_from, None
    if not step.isdigit():
        raise WarmStartError(f"train.init_from={init_from}: the part after '@' must be a step number, got {step!r}")
    return path, int(step)


def _from_workdir(path: str, step: int | None, m: ModelConfig, init_from: str) -> dict[str, np.ndarray]:
    try:
        model, cfg = checkpoint.load(path, step)
    except CheckpointError as e:
        raise WarmStartError(f"train.init_from={init_from}: {e}") from None
    source = ModelConfig.from_config(cfg)
    where = f"{path} (step {step if step is not None else 'newest'})"
    options = {f: (getattr(source, f),) for f in ModelConfig.__dataclass_fields__ if f not in _FREE}
    check_options({**options, "mlp_hidden": (source.mlp_hidden,)}, m, where)
    return _fit_positions(flat_params(nnx.state(model, nnx.Param)), m, where)


def check_options(options: dict[str, tuple], m: ModelConfig, where: str) -> None:
    """Every option the source fixes must hold the run's value; the vocab may grow (padded rows)."""
    diffs = []
    for name, allowed in options.items():
        if name == "vocab_size":
            if allowed[0] > m.vocab_size:
                diffs.append(f"model.vocab_size: the run has {m.vocab_size}, {where} {allowed[0]} (more rows)")
        elif name == "mlp_hidden":
            if m.mlp_hidden not in allowed:
                diffs.append(
                    f"model.ffn_hidden: the run's {m.ffn_hidden} gives an MLP hidden size of {m.mlp_hidden},"
                    f" {where} has {allowed[0]}"
                )
        elif getattr(m, name) not in allowed:
            theirs = " or ".join(map(repr, allowed))
            diffs.append(f"model.{name}: the run has {getattr(m, name)!r}, {where} {theirs}")
    if diffs:
        raise WarmStartError(f"train.init_from: the run's model differs from the source: {'; '.join(diffs)}")


def _fit_positions(params: dict[str, np.ndarray], m: ModelConfig, where: str) -> dict[str, np.ndarray]:
    """A learned position table keeps its first data.seq_len rows; a longer run than the table is an error."""
    if "wpe.weight" not in params:
        return params
    rows = params["wpe.weight"].shape[0]
    if rows < m.seq_len:
        raise WarmStartError(
            f"train.init_from: {where} has {rows} learned positions, data.seq_len={m.seq_len} needs more"
        )
    return {**params, "wpe.weight": params["wpe.weight"][: m.seq_len]}
