"""A training run's configuration: its sections as frozen dataclasses, the ConfigDict built from their defaults, the
command line's overrides, and saved configs completed for this jaxgpt.

    --config=configs/gpt60m.py --config.train.num_steps=100 --config.mesh.fsdp=8

The sections and their knobs, each with its default and a comment where it is declared: ModelConfig
(jaxgpt/model/config.py), OptimConfig (jaxgpt/train/optim.py), and the run's own sections below (data, train, mesh,
checkpoint, wandb). `default_config()` is every knob at its default; a config file changes what differs. The model, the
step and the loop never see the ConfigDict: `RunConfig.from_config` turns it into the dataclasses at the edge.

A knob added later must default to the old behaviour: a checkpoint written before it then loads and resumes as if it
held the default (`complete`). A knob marked `resumable` may change on resume; every other must match the checkpoint.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import pathlib
import re
import typing

import ml_collections

from jaxgpt.errors import ConfigError, check_int
from jaxgpt.knobs import Section, knob
from jaxgpt.model.config import ModelConfig
from jaxgpt.train.optim import OptimConfig

WANDB_MODES = ("offline", "online", "disabled")


@dataclasses.dataclass(frozen=True)
class DataConfig(Section):
    SECTION = "data"

    # One .pbin, or several joined by ","; may move on resume (the stream record compares each file's name and size)
    train_path: str = knob("data/packed/redpajama_v2_samples_512_train.pbin", resumable=True)
    val_path: str = knob("data/packed/redpajama_v2_samples_512_test.pbin", resumable=True)  # "" disables evaluation
    # What the .pbin files were packed with; copied to DIR/tokenizer.json at start (a resume compares its bytes)
    tokenizer_file: str = knob("data/tokenizer/tokenizer.json", resumable=True)
    seq_len: int = 512  # tokens per training sequence S (windows hold S + 1 tokens)
    seed: int = 0  # shuffle seed; the batch order is a pure function of (seed, global batch, window count, step)
    prefetch: int = knob(2, resumable=True)  # global batches prepared ahead of the device
    # Instruction tuning (docs/instruction_tuning.md): the begin and end marker of the targets that count, e.g.
    # ("^", "$"), each one token of data.tokenizer_file; () counts every target
    loss_mask_tokens: tuple = ()
    # True: overlapping windows of S + 1 tokens (pretraining); False: disjoint blocks of S + 1 (Modalities' False)
    reuse_last_target: bool = True
    # The instruction-tuning YAML the data was prepared with; copied to DIR/chat_template.yaml for generate --chat
    chat_template_file: str = knob("", resumable=True)
    # A weighted mixture instead of data.train_path (docs/data.md, "Mixtures"): "NAME:PATHS:WEIGHT,...", PATHS a .pbin,
    # glob or directory (several joined by "+"), or a list of (NAME, PATHS, WEIGHT); "" = off. Resumable as the paths
    # are: the checkpoint's stream record compares the components, their files and weights
    mixture: str | tuple = knob("", resumable=True)
    # A mixture's weights from given steps on: "STEP:NAME=W,...;STEP:...", or a list of (STEP, {NAME: W}); a resume may
    # add a stage that starts after its checkpoint's step (the stream record compares the rest)
    mixture_stages: str | tuple = knob("", resumable=True)
    mixture_block: int = 512  # sequences per block of a mixture's order; each holds a fixed count of every component
    # "NAME:PATHS,...": an eval loss per component (eval_loss/NAME) and over all of them, instead of data.val_path
    val_mixture: str | tuple = knob("", resumable=True)

    def __post_init__(self):
        check_int("data.prefetch", self.prefetch, minimum=0)
        check_int("data.seed", self.seed, minimum=0)
        if isinstance(self.loss_mask_tokens, list):  # as config.json gives it back
            object.__setattr__(self, "loss_mask_tokens", tuple(self.loss_mask_tokens))
        tokens = self.loss_mask_tokens
        if (
            not isinstance(tokens, tuple)
            or tokens
            and (len(tokens) != 2 or not all(isinstance(t, str) and t for t in tokens) or tokens[0] == tokens[1])
        ):
            raise ConfigError(
                f"data.loss_mask_tokens={tokens!r} must be () or two different tokens, begin and end: ('^', '$')"
            )
        if not isinstance(self.reuse_last_target, bool):
            raise ConfigError(f"data.reuse_last_target={self.reuse_last_target!r} must be True or False")
        check_int("data.mixture_block", self.mixture_block)
        if self.mixture_stages and not self.mixture:
            raise ConfigError(f"data.mixture_stages={self.mixture_stages!r} needs data.mixture (the components)")


@dataclasses.dataclass(frozen=True)
class TrainConfig(Section):
    SECTION = "train"

    num_steps: int | None = None  # optimizer steps; None: one epoch of the training split
    # Sequences per data-parallel replica per micro batch: it follows the mesh, the global batch is compared on resume
    micro_batch_size: int = knob(8, resumable=True)
    grad_accum: int = 1  # micro batches accumulated per optimizer step (lax.scan inside the step)
    # Steps between train metric lines; None: every step in a run of at most 100 steps (a short run's plot then draws
    # its curve), else every 10 (setup.make_plan decides, config.json's "derived" records it)
    log_every: int | None = knob(None, resumable=True)
    eval_every: int = knob(100, resumable=True)  # steps between evaluations (also one at the end)
    eval_batch_size: int = knob(0, resumable=True)  # sequences per eval batch (all hosts); 0: micro batch x replicas
    eval_steps: int = knob(0, resumable=True)  # batches per evaluation; 0: a full pass over the validation split
    # Downstream tasks scored at every evaluation, after the validation loss: "NAME:KIND:PATH[@N]" specs joined by
    # ",", or a list of them (jaxgpt/evals; docs/evaluation.md); "" = none
    eval_tasks: str | tuple = knob("", resumable=True)
    # Steps between per-layer statistics (norms of params, grads, updates; block output RMS: train/layer_stats.py),
    # measured by a second jitted step on those steps only; 0: off, and the step is the plain one
    layer_stats_every: int = knob(0, resumable=True)
    seed: int = knob(0, resumable=True)  # model init and dropout seed (a resume takes both from the checkpoint)
    init_from: str = ""  # warm start at step 0: a jaxgpt workdir (PATH or PATH@STEP) or an HF folder; "" = off
    # "PATH@STEP": a new run that continues step STEP of another run's checkpoints whole (params, optimizer state,
    # step, data order) to its own train.num_steps: "decay at several budgets" from a wsd run's stable phase. Every
    # other setting a resume compares must match the source's; read only when the workdir holds no checkpoint; "" = off
    branch_from: str = ""
    compute_dtype: str = "auto"  # matmuls: "auto" (bf16 on GPU/TPU, float32 on CPU) | "bfloat16" | "float32"
    # "none" | "full" | "dots" (save matmul outputs): jax.checkpoint policy per block; the same function, less memory
    remat: str = knob("none", resumable=True)
    z_loss: float = 0.0  # weight of the z-loss log(Z)^2 on the logits (0 disables)
    # Pieces of the sequence the fused vocab projection + cross-entropy walks (must divide seq_len)
    loss_chunks: int = knob(4, resumable=True)
    # "auto" (cuDNN flash on GPU with bf16 compute, else XLA) | "xla" | "cudnn"
    attention: str = knob("auto", resumable=True)
    # FLOP/s of one device for MFU (CPU: of the host); None: the device table (CPU: a matmul timed at start-up)
    peak_flops: float | None = knob(None, resumable=True)
    # "START:STOP": a jax.profiler trace of steps START to STOP, both included, into DIR/profile/ (for Perfetto or
    # TensorBoard: docs/operations.md); "" = off. Step 1 compiles: start later to see the steps alone
    profile_steps: str = knob("", resumable=True)
    # The device memory in use after step N (pprof) to DIR/profile/memory_step{N}.prof; 0 = off
    profile_memory_step: int = knob(0, resumable=True)

    def __post_init__(self):
        if self.num_steps is not None:
            check_int("train.num_steps", self.num_steps)
        for name in ("micro_batch_size", "eval_every"):
            check_int(f"train.{name}", getattr(self, name))
        if self.log_every is not None:
            check_int("train.log_every", self.log_every, hint=" (or None: every step in runs of <= 100 steps, else 10)")
        check_int("train.eval_batch_size", self.eval_batch_size, minimum=0, hint=" (0: micro_batch_size * replicas)")
        check_int("train.eval_steps", self.eval_steps, minimum=0, hint=" (0: a full pass)")
        check_int("train.layer_stats_every", self.layer_stats_every, minimum=0, hint=" (0: off)")
        object.__setattr__(self, "eval_tasks", task_specs(self.eval_tasks))
        if self.peak_flops is not None and not self.peak_flops > 0:
            raise ConfigError(f"train.peak_flops={self.peak_flops!r} must be > 0 (or None: the device table)")
        check_int("train.profile_memory_step", self.profile_memory_step, minimum=0, hint=" (0: off)")
        if self.branch_from and not re.fullmatch(r".+@\d+", str(self.branch_from), re.ASCII | re.DOTALL):
            raise ConfigError(
                f"train.branch_from={self.branch_from!r} must be PATH@STEP: a step of another run's checkpoints"
            )
        self.profile_range  # noqa: B018 - parsed here, so that a bad value fails with the config

    @property
    def profile_range(self) -> tuple[int, int] | None:
        """train.profile_steps as (START, STOP), both traced; None when off."""
        value = self.profile_steps
        if value == "":
            return None
        steps = re.fullmatch(r"(\d+):(\d+)", value, re.ASCII) if isinstance(value, str) else None
        if steps is None or not 1 <= int(steps[1]) <= int(steps[2]):
            raise ConfigError(
                f"train.profile_steps={value!r} must be 'START:STOP', steps 1 <= START <= STOP (both traced), e.g."
                " '10:12'; '' is off"
            )
        return int(steps[1]), int(steps[2])


@dataclasses.dataclass(frozen=True)
class MeshConfig(Section):
    """The device mesh (sharding.make_mesh checks the sizes): a checkpoint reshards onto another one."""

    SECTION = "mesh"

    data: int = knob(1, resumable=True)  # pure data parallel replicas; -1: all devices left over
    fsdp: int = knob(-1, resumable=True)  # shards params and optimizer state, and also splits the batch; -1: the rest
    tensor: int = knob(1, resumable=True)  # splits heads, MLP hidden and vocab


@dataclasses.dataclass(frozen=True)
class CheckpointConfig(Section):
    SECTION = "checkpoint"

    every: int = knob(500, resumable=True)  # steps between asynchronous saves (also one at the end)
    keep: int = knob(3, resumable=True)  # most recent checkpoints kept

    def __post_init__(self):
        check_int("checkpoint.every", self.every)
        check_int("checkpoint.keep", self.keep)


@dataclasses.dataclass(frozen=True)
class WandbConfig(Section):
    SECTION = "wandb"

    mode: str = knob("offline", resumable=True)  # "offline" (files under the workdir) | "online" | "disabled"
    project: str = knob("jaxgpt", resumable=True)  # W&B project
    name: str = knob("", resumable=True)  # run name; "" lets W&B choose

    def __post_init__(self):
        if self.mode not in WANDB_MODES:
            raise ConfigError(f"wandb.mode={self.mode!r} must be 'offline', 'online' or 'disabled'")


SECTIONS: tuple[type[Section], ...] = (
    ModelConfig,
    DataConfig,
    TrainConfig,
    OptimConfig,
    MeshConfig,
    CheckpointConfig,
    WandbConfig,
)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Every section of a run's config, checked."""

    model: ModelConfig
    data: DataConfig
    train: TrainConfig
    optim: OptimConfig
    mesh: MeshConfig
    checkpoint: CheckpointConfig
    wandb: WandbConfig

    @classmethod
    def from_config(cls, cfg: ml_collections.ConfigDict) -> RunConfig:
        return cls(**{section.SECTION: section.from_config(cfg) for section in SECTIONS})


def task_specs(value) -> tuple[str, ...]:
    """train.eval_tasks as a tuple of "NAME:KIND:PATH[@N]" strings, each checked (not yet read: setup reads them)."""
    from jaxgpt.evals.tasks import parse_specs

    if isinstance(value, str):
        specs = tuple(s.strip() for s in value.split(",") if s.strip())
    elif isinstance(value, (list, tuple)) and all(isinstance(s, str) for s in value):
        specs = tuple(value)
    else:
        raise ConfigError(f"train.eval_tasks={value!r} must be NAME:KIND:PATH specs joined by ',', or a list of them")
    parse_specs(specs, "train.eval_tasks")
    return specs


def default_config() -> ml_collections.ConfigDict:
    """A fresh ConfigDict of every knob at its default, section by section; what a config file starts from."""
    cfg = ml_collections.ConfigDict()
    for section in SECTIONS:
        hints = typing.get_type_hints(section)
        node = ml_collections.ConfigDict()
        for f in section.own_fields():
            kinds = [t for t in typing.get_args(hints[f.name]) if t is not type(None)]
            if f.default is None:  # a typed reference, so that --config.train.num_steps=100 parses as an int
                node[f.name] = ml_collections.FieldReference(None, field_type=kinds[0])
            elif len(kinds) > 1:  # a string or a list (data.mixture): the flag parses a Python literal, else a string
                node[f.name] = ml_collections.FieldReference(f.default, field_type=object)
            else:
                node[f.name] = f.default
        cfg[section.SECTION] = node
    return cfg


def resumable() -> frozenset[str]:
    """The config keys a resume may change."""
    return frozenset(s.knob_key(f) for s in SECTIONS for f in s.own_fields() if f.metadata.get("resumable"))


def load_config_file(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """Calls `get_config()` of a config file, as `--config=path` does (for tests and notebooks)."""
    spec = importlib.util.spec_from_file_location(f"_jaxgpt_config_{pathlib.Path(path).stem}", os.fspath(path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def complete(saved: dict, where: str) -> ml_collections.ConfigDict:
    """A saved config (a checkpoint's) with every knob it predates at its default; refuses knobs of a newer jaxgpt,
    naming them and `where` the config came from."""
    cfg = default_config()
    known = flatten(cfg.to_dict())
    unknown = sorted(set(flatten(saved)) - set(known))
    if unknown:
        raise ConfigError(
            f"{where}: holds config key(s) {unknown} that this jaxgpt does not know: knobs of a newer jaxgpt (upgrade"
            " to read it) or misspelt keys"
        )
    for key, value in flatten(saved).items():
        section, name = key.split(".")
        try:
            cfg[section][name] = value
        except TypeError as e:  # ConfigDict refuses a value of another type than the knob's
            raise ConfigError(f"{where}: config key {key}={value!r} does not fit this jaxgpt's knob ({e})") from None
    return cfg


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"train": {"z_loss": 0.0}} -> {"train.z_loss": 0.0}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_overrides(argv: list[str]) -> None:
    """Turns `--config.no.such.key=...` into one clear error naming the key (absl would print a traceback)."""
    path = None
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
    if path is None:
        return
    if not os.path.isfile(path):
        raise ConfigError(f"--config: no such config file: {path}")
    cfg = load_config_file(path)
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        key = arg[len("--config.") :].split("=", 1)[0]
        node, walked = cfg, []
        for part in key.split("."):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                known = ", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) else "(none)"
                where = ".".join(walked) or "the config"
                shown = arg.replace("\n", "\\n")  # one line, whatever the value holds
                raise ConfigError(
                    f"{shown}: unknown config key {key!r}: {where} has no {part!r}; its keys are: {known}"
                )
            node = node[part]
            walked.append(part)
