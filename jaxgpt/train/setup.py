"""A run's setup: the config checked, the mesh built, the data opened, the plan derived; nothing written yet.

Every bad setting or data file fails here, before the workdir is touched (a refused run leaves no trace).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings

import jax
import ml_collections
import numpy as np

from jaxgpt import model, rundir, sharding
from jaxgpt.config import RunConfig, TrainConfig
from jaxgpt.data.loader import mixture, pipeline
from jaxgpt.data.loader.source import PackedWindowSource
from jaxgpt.data.tokenize import EOD_TOKEN, Tokenizer, load_tokenizer
from jaxgpt.errors import ConfigError, EvalError, PackedDataError, check_int
from jaxgpt.evals.run import TaskSet
from jaxgpt.train import optim
from jaxgpt.train.state import StepConfig


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the config and the data imply for this run."""

    num_steps: int  # optimizer steps of the whole run (the lr schedule spans them)
    global_batch: int  # sequences per optimizer step, all hosts and micro batches together
    tokens_per_step: int  # global_batch * seq_len
    eval_batch: int  # sequences per evaluation batch
    steps_per_epoch: int  # full global batches in one pass over the training windows
    log_every: int  # steps between train metric lines: train.log_every, or what a run of num_steps logs without it


@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything a run derives from its config and its data before it touches the workdir."""

    cfg: ml_collections.ConfigDict  # resolved (compute_dtype "auto" replaced): what config.json and checkpoints hold
    config: RunConfig  # the same, checked, as dataclasses
    workdir: str
    mesh: jax.sharding.Mesh
    train_src: PackedWindowSource | mixture.Mixture  # data.train_path's windows, or data.mixture's
    val_src: PackedWindowSource | None  # data.val_path's windows; None without it, or with data.val_mixture
    plan: Plan
    step_cfg: StepConfig
    end_step: int  # the last step this process runs: num_steps, or --stop_after
    # What a resume must match beyond the config: the derived batch and step counts, and the data itself, as each
    # file's name and size (not its path or mtime: the same files copied elsewhere are the same data). With data.seed
    # these fix the batch order (jaxgpt/data/loader/pipeline.py), and num_steps the lr schedule.
    stream: dict
    num_params: int
    flops_per_token: float
    peak_flops: float  # of all devices together, for MFU
    records_tokenizer: bool  # data.tokenizer_file fits the model: copied to DIR/tokenizer.json
    val_parts: dict[str, PackedWindowSource] = dataclasses.field(default_factory=dict)  # data.val_mixture's windows
    tasks: TaskSet | None = None  # train.eval_tasks, read and encoded; None: none

    @property
    def val_sets(self) -> dict[str, PackedWindowSource]:
        """What evaluation reads: {"": data.val_path's windows}, data.val_mixture's by name, or nothing."""
        return self.val_parts or ({"": self.val_src} if self.val_src is not None else {})

    @property
    def eval_batches(self) -> int:
        """Batches of one evaluation: a full pass over the validation windows (of each data.val_mixture component),
        or the first train.eval_steps of each."""
        steps = self.config.train.eval_steps
        full = [-(-len(src) // self.plan.eval_batch) for src in self.val_sets.values()]  # ceil: the last is masked
        return sum(min(n, steps) if steps else n for n in full)


def setup(cfg: ml_collections.ConfigDict, workdir: str, stop_after: int | None) -> Setup:
    """Checks the settings and opens the data; every bad setting or file fails here, before anything is written."""
    if stop_after is not None:
        check_int("--stop_after", stop_after, hint=" (leave it out to train to train.num_steps)")
    config = RunConfig.from_config(cfg)
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    # Every read is checked against the vocabulary: ids from another tokenizer must fail here, not as a NaN loss.
    d, vocab = config.data, config.model.vocab_size
    windows = functools.partial(
        PackedWindowSource, seq_len=d.seq_len, vocab_size=vocab, reuse_last_target=d.reuse_last_target
    )
    if d.mixture:
        train_src = mixture.open_train(d, windows)
    else:
        train_src = windows(split_paths(d.train_path, "data.train_path"))
    val_parts = mixture.open_validation(d.val_mixture, windows) if d.val_mixture else {}
    val_src = windows(split_paths(d.val_path, "data.val_path")) if d.val_path and not val_parts else None
    plan = make_plan(config, mesh, train_src)
    check_profiles(config.train, plan.num_steps)
    optim.check_schedule(config.optim, plan.num_steps)
    tokenizer = read_tokenizer(d.tokenizer_file)  # read once for the three checks below
    records_tokenizer = check_tokenizer(tokenizer, d.tokenizer_file, vocab)
    mask_ids = loss_mask_ids(tokenizer, d.tokenizer_file, d.loss_mask_tokens)
    if config.model.documents:
        check_eod_token(tokenizer, d.tokenizer_file, config.model.eod_token_id)
    if d.chat_template_file:  # a bad template fails now, not when the finished run is asked to chat
        check_chat_template(d.chat_template_file)
    tasks = open_tasks(config, tokenizer, workdir)
    for src in [*val_parts.values(), *([val_src] if val_src is not None else [])]:  # one of the two, or neither
        check_validation_windows(src, config.train.eval_steps * plan.eval_batch)
    step_cfg = StepConfig.from_config(cfg, plan.num_steps, mask_ids).resolved(mesh.devices.flat[0].platform)
    # From here on the config names the dtype "auto" picked: config.json and the checkpoints record it, and a resume
    # compares it, so "auto" resumes a run of the dtype it picks (and refuses one of the other).
    cfg = cfg.copy_and_resolve_references()
    cfg.train.compute_dtype = step_cfg.compute_dtype
    stream = {
        "global_batch_size": plan.global_batch,
        "num_windows": len(train_src),
        "num_steps": plan.num_steps,
        "train_files": [mixture.file_record(p) for p in train_src.paths],
    }
    if d.mixture:  # only then: a run without one records what it always did
        stream["mixture"] = train_src.record()
    return Setup(
        cfg=cfg,
        config=config,
        workdir=os.path.abspath(workdir),
        mesh=mesh,
        train_src=train_src,
        val_src=val_src,
        plan=plan,
        step_cfg=step_cfg,
        end_step=plan.num_steps if stop_after is None else min(plan.num_steps, stop_after),
        stream=stream,
        num_params=model.count_params(step_cfg.model),
        flops_per_token=model.flops_per_token(step_cfg.model, d.seq_len),
        peak_flops=model.total_peak_flops(peak_flops(config), jax.devices()),
        records_tokenizer=records_tokenizer,
        val_parts=val_parts,
        tasks=tasks,
    )


def open_tasks(config: RunConfig, tokenizer: Tokenizer, workdir: str) -> TaskSet | None:
    """train.eval_tasks read, checked and encoded with data.tokenizer_file; a task whose file differs from the one
    this run evaluated before under that name (DIR/evals/tasks.json) is refused: its curve would mix two tasks."""
    if not config.train.eval_tasks:
        return None
    try:
        tasks = TaskSet(list(config.train.eval_tasks), tokenizer, config.data.seq_len)
    except EvalError as e:
        raise ConfigError(f"train.eval_tasks: {e}") from None
    before = rundir.recorded_tasks(workdir)
    record = rundir.path(workdir, rundir.TASKS)
    for task in tasks.tasks:
        if before.get(task.name, task.sha256) != task.sha256:
            raise ConfigError(
                f"train.eval_tasks: {task.spec.path} is not the file this run evaluated as {task.name!r} before"
                f" (sha256 {before[task.name][:12]}... in {record}, now {task.sha256[:12]}...);"
                " give the new file another name"
            )
    return tasks


def make_plan(config: RunConfig, mesh, train_src: PackedWindowSource | mixture.Mixture) -> Plan:
    """The batch sizes and step counts the config implies on this mesh and these training windows."""
    t = config.train
    dp = sharding.data_parallel_size(mesh)
    global_batch = t.micro_batch_size * dp * t.grad_accum
    per_epoch = pipeline.steps_per_epoch(train_src, global_batch)
    num_steps = per_epoch if t.num_steps is None else t.num_steps  # Modalities' default: one epoch
    eval_batch = t.eval_batch_size or t.micro_batch_size * dp
    if eval_batch % dp:
        raise ConfigError(f"train.eval_batch_size={eval_batch} must be a multiple of the data-parallel size {dp}")
    log_every = default_log_every(num_steps) if t.log_every is None else t.log_every
    return Plan(num_steps, global_batch, global_batch * config.data.seq_len, eval_batch, per_epoch, log_every)


def default_log_every(num_steps: int) -> int:
    """Every step in a run of at most 100 steps, so that its plot draws the curve from step 1; else every 10."""
    return 1 if num_steps <= 100 else 10


def check_profiles(t: TrainConfig, num_steps: int) -> None:
    """The steps train.profile_steps and train.profile_memory_step name are steps of the run."""
    steps = t.profile_range
    if steps is not None and steps[1] > num_steps:
        raise ConfigError(f"train.profile_steps={t.profile_steps!r} ends past the run's last step, {num_steps}")
    if t.profile_memory_step > num_steps:
        raise ConfigError(f"train.profile_memory_step={t.profile_memory_step} is past the run's last step, {num_steps}")


def split_paths(value: str, key: str) -> list[str]:
    """The paths a data.*_path knob names ("a.pbin,b.pbin"); a missing one is an error saying how to make it."""
    paths = [p.strip() for p in str(value).split(",") if p.strip()]
    if not paths:
        raise ConfigError(f"{key} is empty; give a .pbin path (or several, joined by ',')")
    for path in paths:
        if not os.path.exists(path):
            raise ConfigError(f"{path}: no such file ({key}); {how_to_pack(path)}")
    return paths


def how_to_pack(path: str) -> str:
    """The way to make a missing .pbin: on a fresh clone, the getting-started script or its two commands."""
    stem = os.path.splitext(os.path.basename(path))[0]
    raw = os.path.join("data", "raw", f"{stem}.jsonl")
    if not os.path.isfile(raw):  # not one of the bundled samples: the tools, from the user's own JSONL
        return (
            "pack it from your JSONL with `jaxgpt create_memmap_index`, then `jaxgpt create_packed_data` (docs/data.md)"
        )
    idx = os.path.join(os.path.dirname(path) or ".", f"{stem}.idx")
    return (
        "make it with `bash getting_started.sh` (it indexes and packs the bundled samples), or with"
        f" `python tools/create_memmap_index.py --index_path {idx} {raw} && python tools/create_packed_data.py"
        f" --jq_pattern .raw_content --tokenizer_file data/tokenizer/tokenizer.json --index_path {idx}"
        f" --dst_path {path} {raw}`"
    )


def check_validation_windows(val_src: PackedWindowSource, num_read: int) -> None:
    """Reads the windows evaluation will read (all of them for num_read 0), so that a bad id fails before step 1 and
    not at the first evaluation. Training data is checked batch by batch as it is read."""
    num_read = min(len(val_src), num_read) if num_read else len(val_src)
    for first in range(0, num_read, 4096):
        val_src.read_windows(np.arange(first, min(first + 4096, num_read)))


def read_tokenizer(path: str) -> Tokenizer:
    """data.tokenizer_file, loaded; a file that does not load is a ConfigError naming the key."""
    try:
        return load_tokenizer(path, backend="hf")
    except PackedDataError as e:
        raise ConfigError(f"data.tokenizer_file={path!r}: {e}") from None


def check_tokenizer(tok: Tokenizer, path: str, vocab_size: int) -> bool:
    """Whether data.tokenizer_file (`tok`, read from `path`) fits the model, so that the run records it for
    generation. One with more ids than model.vocab_size (a run on synthetic ids) is a warning, not recorded."""
    if tok.max_id >= vocab_size:
        warnings.warn(
            f"data.tokenizer_file={path!r} has ids up to {tok.max_id}, beyond model.vocab_size={vocab_size}: this run"
            " does not record it, and generation will need --tokenizer_file",
            stacklevel=2,
        )
        return False
    return True


def loss_mask_ids(tokenizer: Tokenizer, tokenizer_file: str, tokens: tuple[str, ...]) -> tuple[int, int] | None:
    """The ids of data.loss_mask_tokens in data.tokenizer_file (`tokenizer`); each must be one token of it."""
    if not tokens:
        return None
    ids = tuple(tokenizer.token_id(t) for t in tokens)
    for i, (token, token_id) in enumerate(zip(tokens, ids)):
        if token_id is None:
            raise ConfigError(
                f"data.loss_mask_tokens[{i}]={token!r} is not a token of data.tokenizer_file={tokenizer_file!r}"
                " (`jaxgpt data add_special_tokens` adds one)"
            )
    return ids


def check_eod_token(tokenizer: Tokenizer, tokenizer_file: str, eod_token_id: int) -> None:
    """Document masking splits at model.eod_token_id: it must be data.tokenizer_file's <|endoftext|>, or any id of a
    tokenizer that has none (a word-level one), so that a GPT-2 run cannot split at another tokenizer's id."""
    eod = tokenizer.token_id(EOD_TOKEN)
    if eod is not None and eod != eod_token_id:
        raise ConfigError(
            f"model.eod_token_id={eod_token_id} but data.tokenizer_file={tokenizer_file!r} has {EOD_TOKEN} = {eod}:"
            f" set --config.model.eod_token_id={eod}"
        )


def check_chat_template(path: str) -> None:
    from jaxgpt.data.prepare.instruction import read_recipe
    from jaxgpt.errors import JaxgptError

    try:
        read_recipe(path)
    except JaxgptError as e:
        raise ConfigError(f"data.chat_template_file: {e}") from None


def peak_flops(config: RunConfig) -> float:
    """Peak FLOP/s of one device: the config's override, else the device table, else (CPU) a measured matmul."""
    if config.train.peak_flops:
        return float(config.train.peak_flops)
    peak = model.peak_flops(jax.devices()[0])
    return peak if peak else model.measure_matmul_peak()
