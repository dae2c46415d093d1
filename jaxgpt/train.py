"""The training loop: `python -m jaxgpt.train --config=configs/gpt60m.py --workdir=DIR [--config.key=value ...]`.

The jitted step (train_step.py) is pure; everything impure lives here: the data iterator, logging, evaluation,
checkpointing, preemption. Metrics are read one step late, so the host never stalls the device, except at the steps
that save or evaluate, which read their own step's metrics first: after a non-finite loss nothing more is saved or
evaluated. Step k's metrics are those of the parameters before update k (the checkpoint of step k - 1), so a checkpoint
is known good only once the next step's loss is finite; the stop message names the newest such checkpoint.

`run`, piece by piece: `setup` (settings and data checked, nothing written) -> the StateLayout (state.py) ->
`restore_or_init` (a resume must continue the run exactly) -> `write_run_record` -> a Recorder (recorder.py) and an
Evaluation -> `train_loop`, which holds the order of save, evaluate and stop.

Workdir layout:
    DIR/checkpoints/    Orbax (resumed automatically when present; a damaged step is moved aside to <step>.damaged)
    DIR/run.lock        held by the run writing here: a second run started in DIR is refused (checkpoint.exclusive)
    DIR/metrics.jsonl   one JSON object per train/eval event
    DIR/metrics.png     its curves, drawn when the run ends (plots.py; tools/plot_metrics.py redraws or overlays)
    DIR/config.json     the resolved config, plus what was derived from it (steps, batch, mesh)
    DIR/wandb/          the W&B run (offline by default)
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
import signal
import sys
import threading
import warnings

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from jax.experimental import multihost_utils
from ml_collections import config_flags
from tqdm import tqdm

from jaxgpt import checkpoint, config, distributed, model, optim, sharding, train_step, warmstart
from jaxgpt.config import flatten, load_config_file
from jaxgpt.data import pipeline
from jaxgpt.data.atomic import atomic_output
from jaxgpt.data.errors import PackedDataError
from jaxgpt.data.source import PackedWindowSource
from jaxgpt.data.tokenize import load_tokenizer
from jaxgpt.recorder import Recorder, TrainingStopped, is_lead
from jaxgpt.state import StateLayout, StepConfig, TrainState

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics.jsonl, config.json, wandb/.")
_STOP_AFTER = flags.DEFINE_integer(
    "stop_after",
    None,
    "Stop with a checkpoint once this many steps are done (a time-boxed job); the lr schedule still "
    "spans train.num_steps, and running again resumes.",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for multi-host runs (jax.distributed.initialize)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-host run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-host run.")

WANDB_MODES = ("offline", "online", "disabled")

# The config keys a resume may change (declared in configs/base.py, next to the knobs); every other must match.
RESUMABLE_CHANGES = config.resumable()


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the config and the data imply for this run."""

    num_steps: int  # optimizer steps of the whole run (the lr schedule spans them)
    global_batch: int  # sequences per optimizer step, all hosts and micro batches together
    tokens_per_step: int  # global_batch * seq_len
    eval_batch: int  # sequences per evaluation batch
    steps_per_epoch: int  # full global batches in one pass over the training windows


def split_paths(value: str, key: str) -> list[str]:
    paths = [p.strip() for p in str(value).split(",") if p.strip()]
    if not paths:
        raise ValueError(f"{key} is empty; give a .pbin path (or several, joined by ',')")
    for path in paths:
        if not os.path.exists(path):
            raise ValueError(f"{path}: no such file ({key}); {how_to_pack(path)}")
    return paths


def how_to_pack(path: str) -> str:
    """The way to make a missing .pbin: on a fresh clone, the getting-started script or its two tool commands."""
    stem = os.path.splitext(os.path.basename(path))[0]
    raw = os.path.join("data", "raw", f"{stem}.jsonl")
    if not os.path.isfile(raw):  # not one of the bundled samples: the tools, from the user's own JSONL
        return (
            "pack it from your JSONL with tools/create_memmap_index.py, then tools/create_packed_data.py (README,"
            " 'Data tools')"
        )
    idx = os.path.join(os.path.dirname(path) or ".", f"{stem}.idx")
    return (
        f"make it with `bash getting_started.sh` (it indexes and packs the bundled samples), or with"
        f" `python tools/create_memmap_index.py --index_path {idx} {raw} && python tools/create_packed_data.py"
        f" --jq_pattern .raw_content --tokenizer_file data/tokenizer/tokenizer.json --index_path {idx}"
        f" --dst_path {path} {raw}`"
    )


def make_plan(cfg: ml_collections.ConfigDict, mesh, train_src: PackedWindowSource) -> Plan:
    t = cfg.train
    if t.eval_steps < 0:
        raise ValueError(f"train.eval_steps={t.eval_steps} must be >= 0 (0: full pass)")
    if t.eval_batch_size < 0:
        raise ValueError(
            f"train.eval_batch_size={t.eval_batch_size} must be >= 0 (0: micro_batch_size * data-parallel)"
        )
    # Checked here, on every process, before any file is written: the pipeline would refuse them only once the workdir
    # is set up, and W&B only on process 0 (the other processes would go on and hang in the first collective).
    if cfg.data.prefetch < 0:
        raise ValueError(f"data.prefetch={cfg.data.prefetch} must be >= 0")
    if cfg.wandb.mode not in WANDB_MODES:
        raise ValueError(f"wandb.mode={cfg.wandb.mode!r} must be 'offline', 'online' or 'disabled'")
    for key in ("micro_batch_size", "grad_accum", "log_every", "eval_every"):
        if t[key] < 1:
            raise ValueError(f"train.{key}={t[key]} must be >= 1")
    dp = sharding.data_parallel_size(mesh)
    global_batch = t.micro_batch_size * dp * t.grad_accum
    per_epoch = pipeline.steps_per_epoch(train_src, global_batch)
    num_steps = per_epoch if t.num_steps is None else t.num_steps  # Modalities' default: one epoch; StepConfig checks
    eval_batch = t.eval_batch_size or t.micro_batch_size * dp
    if eval_batch % dp:
        raise ValueError(f"train.eval_batch_size={eval_batch} must be a multiple of the data-parallel size {dp}")
    return Plan(num_steps, global_batch, global_batch * cfg.data.seq_len, eval_batch, per_epoch)


@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything a run derives from its config and its data before it touches the workdir."""

    cfg: ml_collections.ConfigDict
    workdir: str
    mesh: jax.sharding.Mesh
    train_src: PackedWindowSource
    val_src: PackedWindowSource | None
    plan: Plan
    step_cfg: StepConfig
    end_step: int  # the last step this process runs: num_steps, or --stop_after
    # What a resume must match beyond the config: the derived batch and step counts, and the data itself, as each
    # file's name and size (not its path or mtime: the same files copied elsewhere are the same data). With data.seed
    # these fix the batch order (data/pipeline.py), and num_steps the lr schedule.
    stream: dict
    num_params: int
    flops_per_token: float
    peak_flops: float  # of all devices together, for MFU
    records_tokenizer: bool  # data.tokenizer_file fits the model: copied to DIR/tokenizer.json


def setup(cfg: ml_collections.ConfigDict, workdir: str, stop_after: int | None) -> Setup:
    """Checks the settings and opens the data; every bad setting or file fails here, before anything is written."""
    if stop_after is not None and stop_after < 1:
        raise ValueError(f"--stop_after={stop_after} must be >= 1 (leave it out to train to train.num_steps)")
    mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    # Every read is checked against the vocabulary: ids from another tokenizer must fail here, not as a NaN loss.
    d, vocab = cfg.data, cfg.model.vocab_size
    train_src = PackedWindowSource(split_paths(d.train_path, "data.train_path"), d.seq_len, vocab)
    val_src = PackedWindowSource(split_paths(d.val_path, "data.val_path"), d.seq_len, vocab) if d.val_path else None
    plan = make_plan(cfg, mesh, train_src)
    records_tokenizer = check_tokenizer(d.tokenizer_file, vocab)
    if val_src is not None:
        # Read the windows evaluation will read now (all, or the first train.eval_steps batches), so that a bad id
        # fails before step 1 and not at the first evaluation. Training data is checked batch by batch as it is read.
        steps = cfg.train.eval_steps
        num_read = len(val_src) if not steps else min(len(val_src), steps * plan.eval_batch)
        for first in range(0, num_read, 4096):
            val_src.read_windows(np.arange(first, min(first + 4096, num_read)))
    step_cfg = StepConfig.from_config(cfg, plan.num_steps).resolved(mesh.devices.flat[0].platform)
    # From here on the config names the dtype "auto" picked: config.json and the checkpoints record it, and a resume
    # compares it, so "auto" resumes a run of the dtype it picks (and refuses one of the other).
    cfg = cfg.copy_and_resolve_references()
    cfg.train.compute_dtype = step_cfg.compute_dtype
    stream = {
        "global_batch_size": plan.global_batch,
        "num_windows": len(train_src),
        "num_steps": plan.num_steps,
        "train_files": [f"{os.path.basename(p)} ({os.path.getsize(p)} bytes)" for p in train_src.paths],
    }
    return Setup(
        cfg=cfg,
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
        peak_flops=model.total_peak_flops(resolve_peak_flops(cfg), jax.devices()),
        records_tokenizer=records_tokenizer,
    )


class StopSignal:
    """SIGTERM/SIGINT ask for a clean stop with a checkpoint; a second SIGINT aborts at once."""

    def __init__(self):
        self.requested = False
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        if is_lead():
            tqdm.write(
                f"{signal.Signals(signum).name} received: saving a checkpoint and stopping after this step",
                file=sys.stderr,
            )

    def agreed(self) -> bool:
        """Every host stops at the same step, whichever of them saw the signal."""
        if jax.process_count() == 1:
            return self.requested
        return bool(multihost_utils.process_allgather(np.array(self.requested)).any())

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def resolve_peak_flops(cfg: ml_collections.ConfigDict) -> float:
    """Peak FLOP/s of one device: the config's override, else the device table, else (CPU) a measured matmul."""
    if cfg.train.peak_flops:
        return float(cfg.train.peak_flops)
    peak = model.peak_flops(jax.devices()[0])
    return peak if peak else model.measure_matmul_peak()


def evaluate(
    eval_step, params, source: PackedWindowSource, plan: Plan, mesh, max_batches: int, on_batch=lambda: None
) -> dict:
    """Mean token loss over the validation windows (all of them, or the first `max_batches` batches when > 0);
    `on_batch()` after each batch (the progress bar)."""
    loss_sum, num_tokens = 0.0, 0.0
    with pipeline.eval_batches(source, global_batch_size=plan.eval_batch, sharding=sharding.batch_sharding(mesh)) as it:
        for batch in itertools.islice(it, max_batches or None):
            out = eval_step(params, batch)
            loss_sum += float(out["loss_sum"])
            num_tokens += float(out["num_tokens"])
            on_batch()
    loss = loss_sum / num_tokens
    return {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 700.0))}


class Evaluation:
    """When the run evaluates (every train.eval_every steps and at the last), and doing it into the recorder."""

    def __init__(self, run: Setup, layout: StateLayout, recorder: Recorder):
        self.run, self.recorder = run, recorder
        self.eval_fn = train_step.make_eval_step(layout) if run.val_src is not None else None

    def due(self, step: int) -> bool:
        every = self.run.cfg.train.eval_every
        return self.eval_fn is not None and (step % every == 0 or step == self.run.plan.num_steps)

    def __call__(self, step: int, params) -> None:
        r = self.run
        with self.recorder.evaluating(step, eval_batches(r)) as on_batch:
            scores = evaluate(self.eval_fn, params, r.val_src, r.plan, r.mesh, r.cfg.train.eval_steps, on_batch)
        self.recorder.eval(step, scores)

    def missed(self, start_step: int) -> bool:
        """Whether the resumed run must first do the evaluation of its start step. A stop signal at an eval step saves
        without evaluating, and a crash can land between a save and its evaluation: then metrics.jsonl (kept up to the
        resume step) lacks that eval."""
        missed = self.due(start_step) and start_step > 0 and start_step not in self.recorder.metrics.eval_steps
        if jax.process_count() > 1:  # only process 0 reads metrics.jsonl, and every process takes part in an eval
            missed = bool(multihost_utils.broadcast_one_to_all(np.array(missed)))
        return missed


def restore_or_init(run: Setup, layout: StateLayout, ckpt: checkpoint.Checkpointer) -> TrainState:
    """The newest intact checkpoint's state, after checking that it continues this run exactly; else a fresh one.
    A damaged newer step is set aside with a warning (checkpoint.Checkpointer.restore_newest). A fresh state takes
    its parameters from train.init_from when set (warmstart.py): only at step 0, a resume never reads it."""

    def resume(step: int) -> TrainState:
        saved_config, saved_stream = ckpt.restore_json(step)
        origin = saved_config.get("train", {}).get("init_from", "")
        if origin and not run.cfg.train.init_from:
            # the resume command need not repeat where the run started; config.json and the saves keep recording it
            print(f"jaxgpt: resuming a run that started from train.init_from={origin}", file=sys.stderr)
            run.cfg.train.init_from = origin
        check_resumable(saved_config, saved_stream, run.cfg, run.stream, ckpt.directory, step)
        return ckpt.restore(layout, step)

    found = ckpt.restore_newest(resume, set_aside=True)
    if found is not None:
        return found[1]
    return warmstart.init_state(layout, run.cfg.train.seed, run.cfg.train.init_from)


def write_run_record(run: Setup) -> dict:
    """DIR/config.json: the resolved config and what was derived from it; returned for W&B."""
    derived = {
        **dataclasses.asdict(run.plan),
        "num_params": run.num_params,
        "mesh": dict(run.mesh.shape),
        "devices": jax.device_count(),
        "processes": jax.process_count(),
        "device_kind": jax.devices()[0].device_kind,
        "compute_dtype": run.step_cfg.compute_dtype,  # what train.compute_dtype="auto" picked
        "eval_batches": eval_batches(run),
    }
    resolved = {"config": run.cfg.to_dict(), "derived": derived}
    if is_lead():
        with atomic_output(os.path.join(run.workdir, "config.json")) as tmp, open(tmp, "w") as f:
            json.dump(resolved, f, indent=2)
    return resolved


def check_tokenizer(path: str, vocab_size: int) -> bool:
    """Whether data.tokenizer_file fits the model, so that the run records it for generation. A file that does not
    load is an error; one with more ids than model.vocab_size (a run on synthetic ids) is a warning, not recorded."""
    try:
        tok = load_tokenizer(path, backend="hf")
    except PackedDataError as e:
        raise ValueError(f"data.tokenizer_file={path!r}: {e}") from None
    if tok.max_id >= vocab_size:
        warnings.warn(
            f"data.tokenizer_file={path!r} has ids up to {tok.max_id}, beyond model.vocab_size={vocab_size}: this run"
            " does not record it, and generation will need --tokenizer_file",
            stacklevel=2,
        )
        return False
    return True


def record_tokenizer(run: Setup) -> None:
    """DIR/tokenizer.json: the run's tokenizer beside its checkpoints, so that the workdir alone can generate."""
    src, dst = run.cfg.data.tokenizer_file, checkpoint.tokenizer_path(run.workdir)
    if not run.records_tokenizer:
        return
    with open(src, "rb") as f:
        data = f.read()
    if os.path.exists(dst):
        with open(dst, "rb") as f:
            if f.read() != data:
                raise ValueError(
                    f"data.tokenizer_file={src!r} differs from {dst}, the tokenizer this run started with; "
                    "a run keeps one tokenizer"
                )
        return
    if is_lead():
        with atomic_output(dst) as tmp, open(tmp, "wb") as f:
            f.write(data)


def print_banner(run: Setup, start_step: int) -> None:
    if not is_lead():
        return
    plan, cfg, mesh = run.plan, run.cfg, run.mesh
    platform = mesh.devices.flat[0].platform
    warmup = optim.warmup_steps(run.step_cfg.optim, plan.num_steps)
    capped = f" (optim.warmup_steps={cfg.optim.warmup_steps}, capped at 10% of the {plan.num_steps}-step run)"
    print(
        f"jaxgpt: {run.num_params:,} parameters | mesh {dict(mesh.shape)} over {jax.device_count()} "
        f"{jax.devices()[0].device_kind} device(s), {jax.process_count()} process(es)\n"
        f"        {plan.global_batch} seqs x {cfg.data.seq_len} tokens = {plan.tokens_per_step:,} tokens/step | "
        f"{plan.num_steps} steps planned ({plan.steps_per_epoch} per epoch)"
        + (f", resuming at step {start_step}" if start_step else "")
        + (f", stopping after step {run.end_step}" if run.end_step < plan.num_steps else "")
        + f"\n        warmup: {warmup} steps"
        + (capped if warmup < cfg.optim.warmup_steps else "")
        + f" | compute: {run.step_cfg.compute_dtype} on {platform}"
        + f"\n        {eval_cost(run)}"
        + (f"\n        {distributed.describe()}" if jax.process_count() > 1 else ""),
        flush=True,
    )


def eval_batches(run: Setup) -> int:
    """Batches of one evaluation: a full pass over the validation windows, or the first train.eval_steps."""
    if run.val_src is None:
        return 0
    full = -(-len(run.val_src) // run.plan.eval_batch)  # ceil: the last batch is padded and masked
    return min(full, run.cfg.train.eval_steps) if run.cfg.train.eval_steps else full


def eval_cost(run: Setup) -> str:
    """The banner's line on evaluation: on CPU a full validation pass can cost far more than a short run's steps."""
    n, plan, t = eval_batches(run), run.plan, run.cfg.train
    if not n:
        return "evaluation: none (data.val_path is empty)"
    tokens = n * plan.eval_batch * run.cfg.data.seq_len
    count = len({s for s in range(t.eval_every, plan.num_steps + 1, t.eval_every)} | {plan.num_steps})
    return (
        f"evaluation: {n} batches of {plan.eval_batch} seqs ({tokens:,} tokens, the forward passes of"
        f" {tokens / plan.tokens_per_step:,.1f} steps' tokens) every {t.eval_every} steps and at the last:"
        f" {count} in all" + ("" if t.eval_steps else "; train.eval_steps=N caps it at N batches")
    )


def run(cfg: ml_collections.ConfigDict, workdir: str, *, stop_after: int | None = None) -> dict:
    """Trains (or resumes) in `workdir`; returns the last train and eval events."""
    r = setup(cfg, workdir, stop_after)
    try:
        os.makedirs(r.workdir, exist_ok=True)
    except OSError as e:  # a file in the way, or no permission
        raise ValueError(f"--workdir={r.workdir}: cannot be used as the run directory ({e.strerror})") from None
    with contextlib.ExitStack() as cleanup:  # closes what was opened, last first, however the run ends
        cleanup.enter_context(checkpoint.exclusive(r.workdir))  # a second run in this workdir is refused, not mixed in
        # First in, last out: the signal handlers stay in place until the final checkpoint is on disk, so a second
        # SIGTERM during that save (a scheduler repeating itself) does not kill the process mid-write.
        stop = StopSignal()
        cleanup.callback(stop.restore)
        ckpt_dir = checkpoint.checkpoint_dir(r.workdir)
        ckpt = checkpoint.Checkpointer(ckpt_dir, every=cfg.checkpoint.every, keep=cfg.checkpoint.keep)
        cleanup.callback(ckpt.close)
        cleanup.callback(ckpt.wait)  # runs before close: the last save is durable on disk
        layout = StateLayout.build(r.step_cfg, r.mesh)  # the one layout: steps, checkpoints and init share it
        state = restore_or_init(r, layout, ckpt)
        start_step = int(jax.device_get(state.step))
        # Only now: a refused resume must not overwrite the record of the run that made the checkpoints.
        record_tokenizer(r)
        resolved = write_run_record(r)
        print_banner(r, start_step)
        step_fn = train_step.make_train_step(layout)
        recorder = cleanup.enter_context(Recorder(r, resolved, start_step, ckpt))
        evaluation = Evaluation(r, layout, recorder)
        if evaluation.missed(start_step):
            evaluation(start_step, state.params)
        batches = pipeline.train_batches(
            r.train_src,
            global_batch_size=r.plan.global_batch,
            seed=cfg.data.seed,
            sharding=sharding.batch_sharding(r.mesh),
            start_step=start_step,
            prefetch=cfg.data.prefetch,
        )
        cleanup.callback(batches.close)
        train_loop(r, state, step_fn, batches, ckpt, recorder, evaluation, stop, start_step)
    plot_metrics(r.workdir)  # the checkpoint is on disk and metrics.jsonl closed: nothing left to wait for it
    return recorder.last


def plot_metrics(workdir: str) -> None:
    """DIR/metrics.png on process 0; any failure is a one-line warning, never a failed run."""
    if not is_lead():
        return
    try:
        from jaxgpt import plots  # here: matplotlib's import (0.3 s) stays off the run's start

        plots.plot_runs([workdir])
    except Exception as e:  # noqa: BLE001 - a picture of the run must never fail the run
        reason = (str(e).splitlines() or [""])[0]
        warnings.warn(f"{workdir}/metrics.png not written: {type(e).__name__}: {reason}", stacklevel=2)


def train_loop(
    r: Setup,
    state,
    step_fn,
    batches,
    ckpt,
    recorder: Recorder,
    evaluation: Evaluation,
    stop: StopSignal,
    start_step: int,
) -> None:
    """Steps start_step + 1 .. r.end_step. Metrics are read one step late, so the host never stalls the device,
    except at a step that saves or evaluates: after a non-finite loss nothing more is saved or evaluated."""
    pending = None  # (step, metrics) dispatched but not yet read
    for done in range(start_step + 1, r.end_step + 1):
        state, metrics = step_fn(state, next(batches))
        if pending is not None:
            recorder.train(*pending)
        pending = (done, metrics)
        recorder.bar.update(1)
        signalled = stop.agreed()
        stopping = signalled or done == r.end_step
        saving = stopping or ckpt.should_save(done)
        # On a stop signal: save at once, no evaluation (a full validation pass could outlast the grace period);
        # the resumed run evaluates first (Evaluation.missed).
        evaluating = evaluation.due(done) and not signalled
        if evaluating or saving:
            recorder.train(*pending)  # after a non-finite loss, neither save nor evaluate
            pending = None
        # Save before evaluating: the save goes on in the background meanwhile, and a failed evaluation keeps it.
        if saving:
            ckpt.save(state, data={**r.stream, "step": done}, config=r.cfg.to_dict())
        if evaluating:
            evaluation(done, state.params)
        if stopping:
            break
    if pending is not None:
        recorder.train(*pending)


def check_resumable(saved_config: dict, saved_stream: dict, cfg, stream: dict, directory: str, step: int) -> None:
    """Refuses to resume under settings that would not continue the run exactly (or not fit its arrays): every config
    key but RESUMABLE_CHANGES, and every value of `stream`, must equal the checkpoint's. Knobs the checkpoint predates
    compare as their defaults; a knob of a newer jaxgpt is refused."""
    # A checkpoint of an older jaxgpt may lack a record that `stream` has now (train_files): say so, compare the rest.
    unrecorded = [k for k in stream if k not in saved_stream]
    if unrecorded:
        warnings.warn(
            f"{directory}: step {step} holds no record of {unrecorded} (an older jaxgpt); not compared", stacklevel=2
        )
    stream = {k: v for k, v in stream.items() if k in saved_stream}
    try:
        saved_config = config.complete(saved_config, f"{directory}/{step}").to_dict()
    except ValueError as e:
        raise checkpoint.CheckpointError(str(e)) from None
    now_config = config.complete(cfg.to_dict(), "the run's config").to_dict()  # a config file may predate a knob too
    # Through JSON, as the checkpoint stored the config (tuples become lists).
    saved = {**flatten(json.loads(json.dumps(saved_config))), **{k: saved_stream[k] for k in stream}}
    now = {**flatten(json.loads(json.dumps(now_config))), **stream}
    keys = sorted((saved.keys() | now.keys()) - RESUMABLE_CHANGES)
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs now {now.get(k)!r}" for k in keys if saved.get(k) != now.get(k)]
    if diffs:
        raise checkpoint.CheckpointError(
            f"{directory}: step {step} was written by a run with other settings, so resuming would not continue it "
            f"exactly ({'; '.join(diffs)}). Use a new --workdir, or restore the original settings."
        )


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
        raise SystemExit(f"--config: no such config file: {path}")
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
                raise SystemExit(f"{shown}: unknown config key {key!r}: {where} has no {part!r}; its keys are: {known}")
            node = node[part]
            walked.append(part)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _WORKDIR.value is None:
        raise app.UsageError("--workdir is required")
    if _CONFIG.value is None:
        raise app.UsageError("--config is required, e.g. --config=configs/gpt60m.py")
    logging.set_verbosity(logging.WARNING)  # the progress bar is the console; Orbax's INFO lines would bury it
    try:  # the flags, else JAX's coordinator variables, else a SLURM step (srun); else one process
        launch = distributed.detect(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    except ValueError as e:
        sys.exit(f"error: {e}")
    distributed.initialize(launch)
    try:
        run(_CONFIG.value, _WORKDIR.value, stop_after=_STOP_AFTER.value)
    except (TrainingStopped, ValueError, checkpoint.CheckpointError) as e:
        # Bad input and deliberate stops end with one clear line, not a traceback.
        sys.exit(f"error: {e}")
    except OSError as e:  # the workdir's disk is full or gone while metrics or config.json are written
        sys.exit(f"error: {e.filename}: {e.strerror}" if e.filename else f"error: {e}")


def _parse_flags(argv: list[str]) -> list[str]:
    check_overrides(argv)
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:  # absl echoes the value as given: a newline in it must not break the one line
        raise SystemExit("error: " + str(e).replace("\n", "\\n")) from None


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
