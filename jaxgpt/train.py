"""The training loop: `python -m jaxgpt.train --config=configs/gpt60m.py --workdir=DIR [--config.key=value ...]`.

The jitted step (train_step.py) is pure; everything impure lives here: the data iterator, logging, evaluation,
checkpointing, preemption. Metrics are read one step late, so the host never stalls the device, except at the steps
that save or evaluate, which read their own step's metrics first: after a non-finite loss nothing more is saved or
evaluated. Step k's metrics are those of the parameters before update k (the checkpoint of step k - 1), so a checkpoint
is known good only once the next step's loss is finite; the stop message names the newest such checkpoint.

Workdir layout:
    DIR/checkpoints/    Orbax (resumed automatically when present)
    DIR/metrics.jsonl   one JSON object per train/eval event
    DIR/config.json     the resolved config, plus what was derived from it (steps, batch, mesh)
    DIR/wandb/          the W&B run (offline by default)
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import itertools
import json
import math
import secrets
import os
import signal
import sys
import threading
import time
import warnings

from absl import app, flags, logging
import jax
from jax.experimental import multihost_utils
import ml_collections
from ml_collections import config_flags
import numpy as np
from tqdm import tqdm

from jaxgpt import batches, checkpoint, model, optim, sharding, train_step
from jaxgpt.source import PackedWindowSource

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

# The config keys a resume may change: they decide what is logged or evaluated, when and where, or how the same arrays
# are laid out over the devices, never the numbers the training run computes. Every other key must match the checkpoint.
RESUMABLE_CHANGES = frozenset(
    {
        "train.log_every",
        "train.eval_every",
        "train.eval_batch_size",
        "train.eval_steps",
        "data.val_path",
        "train.peak_flops",  # the MFU figure only
        "train.seed",  # initialisation, and the dropout key, which a resume takes from the checkpoint
        "data.prefetch",
        "checkpoint.every",
        "checkpoint.keep",
        "wandb.mode",
        "wandb.project",
        "wandb.name",
        # A checkpoint reshards onto another mesh. The per-replica micro batch follows the mesh; what the step computes
        # is fixed by the global batch (compared in the stream) and train.grad_accum (compared).
        "mesh.data",
        "mesh.fsdp",
        "mesh.tensor",
        "train.micro_batch_size",
        # The same function with another memory/speed trade-off: only float rounding changes, as it does on a new mesh,
        # and a resume on other hardware may need them (cuDNN attention on GPU only; remat to fit in less memory).
        "train.remat",
        "train.attention",
        "train.loss_chunks",
        # Compared as the stream's train_files (each file's name and size): the same files moved or copied resume.
        "data.train_path",
    }
)


class TrainingStopped(RuntimeError):
    """The run stopped on purpose with a message for the user (a non-finite loss)."""


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
    return paths


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
    per_epoch = batches.steps_per_epoch(train_src, global_batch)
    num_steps = per_epoch if t.num_steps is None else t.num_steps  # Modalities' default: one epoch
    if num_steps < 1:
        raise ValueError(f"train.num_steps={num_steps} must be >= 1")
    eval_batch = t.eval_batch_size or t.micro_batch_size * dp
    if eval_batch % dp:
        raise ValueError(f"train.eval_batch_size={eval_batch} must be a multiple of the data-parallel size {dp}")
    return Plan(num_steps, global_batch, global_batch * cfg.data.seq_len, eval_batch, per_epoch)


def is_lead() -> bool:
    return jax.process_index() == 0


class MetricsLog:
    """DIR/metrics.jsonl, written by process 0; on resume, events past the restored step are dropped."""

    def __init__(self, path: str, resume_step: int):
        self.path = path
        self._file = None
        self.eval_steps: set[int] = set()  # steps whose eval event the file holds (process 0 only)
        if not is_lead():
            return
        if os.path.exists(path):
            # A crash after the last checkpoint leaves events the resumed run will produce again: drop them, so the file
            # reads as one uninterrupted run.
            with open(path) as f:
                kept = [line for line in f if _event_step(line) <= resume_step]
            self.eval_steps = {e["step"] for e in map(json.loads, kept) if e.get("event") == "eval"}
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(kept)
            os.replace(tmp, path)
        self._file = open(path, "a", buffering=1)

    def write(self, event: dict) -> None:
        if self._file is not None:
            self._file.write(json.dumps(event) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _event_step(line: str) -> float:
    """The step of a metrics.jsonl line; inf for a line a killed process left half-written (so it is dropped)."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


class Wandb:
    """W&B logging that can never stop training: any failure warns once and turns it off."""

    def __init__(self, cfg: ml_collections.ConfigDict, workdir: str, resolved: dict):
        self._run = None
        if not is_lead() or cfg.wandb.mode == "disabled":  # make_plan checked the mode
            return
        try:
            import wandb

            id_file = os.path.join(workdir, "wandb_run_id")  # the same W&B run continues across resumes
            run_id = open(id_file).read().strip() if os.path.exists(id_file) else secrets.token_hex(4)
            with open(id_file, "w") as f:
                f.write(run_id)
            self._run = wandb.init(
                project=cfg.wandb.project,
                name=cfg.wandb.name or None,
                mode=cfg.wandb.mode,
                dir=workdir,
                id=run_id,
                resume="allow",
                config=resolved,
                settings=wandb.Settings(console="off", silent=True),
            )
        except Exception as e:  # noqa: BLE001 - W&B must never stop training
            self._fail("init", e)

    def log(self, event: dict) -> None:
        if self._run is None:
            return
        try:
            self._run.log({k: v for k, v in event.items() if k not in ("step", "event")}, step=event["step"])
        except Exception as e:  # noqa: BLE001
            self._fail("log", e)

    def close(self) -> None:
        if self._run is None:
            return
        try:
            self._run.finish()
        except Exception as e:  # noqa: BLE001
            self._fail("finish", e)

    def _fail(self, what: str, e: Exception) -> None:
        warnings.warn(f"W&B {what} failed, continuing without W&B: {type(e).__name__}: {e}", stacklevel=2)
        self._run = None


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


def evaluate(eval_step, params, source: PackedWindowSource, plan: Plan, mesh, max_batches: int) -> dict:
    """Mean token loss over the validation windows (all of them, or the first `max_batches` batches when > 0)."""
    loss_sum, num_tokens = 0.0, 0.0
    with batches.eval_batches(source, global_batch_size=plan.eval_batch, sharding=sharding.batch_sharding(mesh)) as it:
        for batch in itertools.islice(it, max_batches or None):
            out = eval_step(params, batch)
            loss_sum += float(out["loss_sum"])
            num_tokens += float(out["num_tokens"])
    loss = loss_sum / num_tokens
    return {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 700.0))}


def run(cfg: ml_collections.ConfigDict, workdir: str, *, stop_after: int | None = None) -> dict:
    """Trains (or resumes) in `workdir`; returns the last train and eval events."""
    if stop_after is not None and stop_after < 1:
        raise ValueError(f"--stop_after={stop_after} must be >= 1 (leave it out to train to train.num_steps)")
    workdir = os.path.abspath(workdir)
    mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    # Every read is checked against the vocabulary: ids from another tokenizer must fail here, not as a NaN loss.
    vocab_size = cfg.model.vocab_size
    train_src = PackedWindowSource(split_paths(cfg.data.train_path, "data.train_path"), cfg.data.seq_len, vocab_size)
    val_src = None
    if cfg.data.val_path:
        val_src = PackedWindowSource(split_paths(cfg.data.val_path, "data.val_path"), cfg.data.seq_len, vocab_size)
    plan = make_plan(cfg, mesh, train_src)
    if val_src is not None:
        # Read the windows evaluation will read now (all, or the first train.eval_steps batches), so that a bad id
        # fails before step 1 and not at the first evaluation. Training data is checked batch by batch as it is read.
        num_read = (
            len(val_src) if not cfg.train.eval_steps else min(len(val_src), cfg.train.eval_steps * plan.eval_batch)
        )
        for first in range(0, num_read, 4096):
            val_src.read_windows(np.arange(first, min(first + 4096, num_read)))
    step_cfg = train_step.StepConfig.from_config(cfg, plan.num_steps)
    num_params = model.count_params(step_cfg.model)
    flops_per_token = model.flops_per_token(step_cfg.model, cfg.data.seq_len)
    peak_flops = model.total_peak_flops(resolve_peak_flops(cfg), jax.devices())
    # What a resume must match beyond the config: the derived batch and step counts, and the data itself, as each
    # file's name and size (not its path or mtime: the same files copied elsewhere are the same data). With data.seed
    # these fix the batch order (batches.py), and num_steps the lr schedule.
    stream = {
        "global_batch_size": plan.global_batch,
        "num_windows": len(train_src),
        "num_steps": plan.num_steps,
        "train_files": [f"{os.path.basename(p)} ({os.path.getsize(p)} bytes)" for p in train_src.paths],
    }
    end_step = plan.num_steps if stop_after is None else min(plan.num_steps, stop_after)

    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:  # a file in the way, or no permission
        raise ValueError(f"--workdir={workdir}: cannot be used as the run directory ({e})") from e
    with contextlib.ExitStack() as cleanup:  # closes what was opened, last first, however the run ends
        # First in, last out: the signal handlers stay in place until the final checkpoint is on disk, so a second
        # SIGTERM during that save (a scheduler repeating itself) does not kill the process mid-write.
        stop = StopSignal()
        cleanup.callback(stop.restore)
        ckpt = checkpoint.Checkpointer(
            checkpoint.checkpoint_dir(workdir), every=cfg.checkpoint.every, keep=cfg.checkpoint.keep
        )
        cleanup.callback(ckpt.close)
        cleanup.callback(ckpt.wait)  # runs before close: the last save is durable on disk
        start_step = ckpt.latest_step() or 0
        if start_step:
            saved_config, saved_stream = ckpt.restore_json(start_step)
            check_resumable(saved_config, saved_stream, cfg, stream, ckpt.directory, start_step)
            graphdef, abstract = train_step.abstract_train_state(step_cfg, mesh)
            state = ckpt.restore(abstract, start_step)
        else:
            graphdef, state = train_step.create_train_state(step_cfg, mesh, cfg.train.seed)

        resolved = {
            "config": cfg.to_dict(),
            "derived": {
                **dataclasses.asdict(plan),
                "num_params": num_params,
                "mesh": dict(mesh.shape),
                "devices": jax.device_count(),
                "processes": jax.process_count(),
                "device_kind": jax.devices()[0].device_kind,
            },
        }
        if is_lead():  # only now: a refused resume must not overwrite the record of the run that made the checkpoints
            path = os.path.join(workdir, "config.json")
            with open(path + ".tmp", "w") as f:
                json.dump(resolved, f, indent=2)
            os.replace(path + ".tmp", path)  # never a half-written config.json

        if is_lead():
            warmup = optim.warmup_steps(step_cfg.optim, plan.num_steps)
            capped = f" (optim.warmup_steps={cfg.optim.warmup_steps}, capped at 10% of the {plan.num_steps}-step run)"
            print(
                f"jaxgpt: {num_params:,} parameters | mesh {dict(mesh.shape)} over {jax.device_count()} "
                f"{jax.devices()[0].device_kind} device(s), {jax.process_count()} process(es)\n"
                f"        {plan.global_batch} seqs x {cfg.data.seq_len} tokens = {plan.tokens_per_step:,} tokens/step | "
                f"{plan.num_steps} steps planned ({plan.steps_per_epoch} per epoch)"
                + (f", resuming at step {start_step}" if start_step else "")
                + (f", stopping after step {end_step}" if end_step < plan.num_steps else "")
                + f"\n        warmup: {warmup} steps"
                + (capped if warmup < cfg.optim.warmup_steps else ""),
                flush=True,
            )

        step_fn = train_step.make_train_step(step_cfg, graphdef, mesh)
        eval_fn = train_step.make_eval_step(step_cfg, graphdef, mesh) if val_src is not None else None
        metrics_log = MetricsLog(os.path.join(workdir, "metrics.jsonl"), start_step)
        cleanup.callback(metrics_log.close)
        wandb_log = Wandb(cfg, workdir, resolved)
        cleanup.callback(wandb_log.close)
        bar = tqdm(total=plan.num_steps, initial=start_step, disable=not is_lead(), unit="step", dynamic_ncols=True)
        cleanup.callback(bar.close)
        last = {"train": None, "eval": None}
        timer = {"time": time.perf_counter(), "step": start_step}

        def emit(event: dict) -> None:
            metrics_log.write(event)
            wandb_log.log(event)

        def record(done: int, metrics: dict) -> None:
            """Reads a finished step's metrics (blocking only on that step), stops on non-finite values, logs."""
            m = {k: float(v) for k, v in jax.device_get(metrics).items()}
            if not (math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"])):
                # Step `done` measured the parameters saved as step done - 1; a checkpoint is known good once the step
                # after it was finite, so the newest known good one is at most done - 2.
                ckpt.wait()  # a save still in flight counts
                good = max((s for s in ckpt.all_steps() if s <= done - 2), default=None)
                raise TrainingStopped(
                    f"step {done}: loss={m['loss']} grad_norm={m['grad_norm']} is not finite; stopping. These are the "
                    f"metrics of the parameters after step {done - 1}; "
                    + (
                        f"the newest checkpoint known good (its next step's loss was finite) is step {good} in "
                        f"{ckpt.directory}."
                        if good is not None
                        else "no checkpoint is known good."
                    )
                )
            bar.set_postfix(loss=f"{m['loss']:.4f}", refresh=False)
            if done % cfg.train.log_every == 0 or done == end_step:
                now = time.perf_counter()
                tokens_per_s = (done - timer["step"]) * plan.tokens_per_step / max(now - timer["time"], 1e-9)
                timer.update(time=now, step=done)
                event = {
                    "event": "train",
                    "step": done,
                    **m,
                    "tokens_per_s": tokens_per_s,
                    "mfu": tokens_per_s * flops_per_token / peak_flops,
                    "time": time.time(),
                }
                bar.set_postfix(loss=f"{m['loss']:.4f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
                emit(event)
                last["train"] = event

        def is_eval_step(step: int) -> bool:
            return eval_fn is not None and (step % cfg.train.eval_every == 0 or step == plan.num_steps)

        def run_eval(done: int, params) -> None:
            scores = evaluate(eval_fn, params, val_src, plan, mesh, cfg.train.eval_steps)
            event = {"event": "eval", "step": done, **scores}
            bar.write(f"step {done}: eval_loss {event['eval_loss']:.4f}  eval_ppl {event['eval_ppl']:.2f}")
            emit(event)
            last["eval"] = event
            timer.update(time=time.perf_counter(), step=done)  # evaluation time is not training throughput

        # A stop signal at an eval step saves without evaluating, and a crash can land between a save and its
        # evaluation: then metrics.jsonl (kept up to the resume step) lacks that eval, and the resumed run does it first.
        missed_eval = is_eval_step(start_step) and start_step > 0 and start_step not in metrics_log.eval_steps
        if jax.process_count() > 1:  # only process 0 reads metrics.jsonl, and every process takes part in an eval
            missed_eval = bool(multihost_utils.broadcast_one_to_all(np.array(missed_eval)))
        if missed_eval:
            run_eval(start_step, state.params)

        train_iter = batches.train_batches(
            train_src,
            global_batch_size=plan.global_batch,
            seed=cfg.data.seed,
            sharding=sharding.batch_sharding(mesh),
            start_step=start_step,
            prefetch=cfg.data.prefetch,
        )
        cleanup.callback(train_iter.close)
        pending = None  # (step, metrics) dispatched but not yet read
        for done in range(start_step + 1, end_step + 1):
            state, metrics = step_fn(state, next(train_iter))
            if pending is not None:
                record(*pending)
            pending = (done, metrics)
            bar.update(1)
            signalled = stop.agreed()
            stopping = signalled or done == end_step
            saving = stopping or ckpt.should_save(done)
            # On a stop signal: save at once, no evaluation (a full validation pass could outlast the grace period);
            # the resumed run evaluates first (missed_eval above).
            evaluating = is_eval_step(done) and not signalled
            if evaluating or saving:
                record(*pending)  # after a non-finite loss, neither save nor evaluate
                pending = None
            # Save before evaluating: the save goes on in the background meanwhile, and a failed evaluation keeps it.
            if saving:
                ckpt.save(state, data={**stream, "step": done}, config=cfg.to_dict())
            if evaluating:
                run_eval(done, state.params)
            if stopping:
                break
        if pending is not None:
            record(*pending)
    return last


def check_resumable(saved_config: dict, saved_stream: dict, cfg, stream: dict, directory: str, step: int) -> None:
    """Refuses to resume under settings that would not continue the run exactly (or not fit its arrays): every config
    key but RESUMABLE_CHANGES, and every value of `stream`, must equal the checkpoint's."""
    # A checkpoint of an older jaxgpt may lack a record that `stream` has now (train_files): say so, compare the rest.
    unrecorded = [k for k in stream if k not in saved_stream]
    if unrecorded:
        warnings.warn(f"{directory}: step {step} holds no record of {unrecorded} (an older jaxgpt); not compared")
    stream = {k: v for k, v in stream.items() if k in saved_stream}
    # Through JSON, as the checkpoint stored the config (tuples become lists).
    saved = {**flatten(saved_config), **{k: saved_stream[k] for k in stream}}
    now = {**flatten(json.loads(json.dumps(cfg.to_dict()))), **stream}
    keys = sorted((saved.keys() | now.keys()) - RESUMABLE_CHANGES)
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs now {now.get(k)!r}" for k in keys if saved.get(k) != now.get(k)]
    if diffs:
        raise checkpoint.CheckpointError(
            f"{directory}: step {step} was written by a run with other settings, so resuming would not continue it "
            f"exactly ({'; '.join(diffs)}). Use a new --workdir, or restore the original settings."
        )


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"train": {"z_loss": 0.0}} -> {"train.z_loss": 0.0}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def load_config_file(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """Calls `get_config()` of a config file, as `--config=path` does (for tests and notebooks)."""
    spec = importlib.util.spec_from_file_location("_jaxgpt_config", os.fspath(path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


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
                raise SystemExit(f"{arg}: unknown config key {key!r}: {where} has no {part!r}; its keys are: {known}")
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
    if _COORDINATOR.value or _NUM_PROCESSES.value:
        # CPU processes need gloo for cross-process collectives (GPU backends ignore this option).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    try:
        run(_CONFIG.value, _WORKDIR.value, stop_after=_STOP_AFTER.value)
    except (TrainingStopped, ValueError, checkpoint.CheckpointError) as e:
        # Bad input and deliberate stops end with one clear line, not a traceback.
        sys.exit(f"error: {e}")


def _parse_flags(argv: list[str]) -> list[str]:
    check_overrides(argv)
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
