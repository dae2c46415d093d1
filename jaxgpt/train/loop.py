"""The training loop: `python -m jaxgpt.train --config=configs/gpt60m.py --workdir=DIR [--config.key=value ...]`.

The jitted step (step.py) is pure; everything impure lives around it, each in its room: setup.py (settings and data
checked, nothing written) -> state.py (the StateLayout) -> resume.py (a resume must continue the run exactly) ->
record.py (config.json, tokenizer.json, the banner) -> recorder.py (metrics.jsonl, W&B, the progress bar; goodput.py,
where the wall time went), evaluation.py and profile.py (traces, memory profiles) -> `train_loop` below, which holds
the order of save, evaluate and stop; signals.py turns SIGTERM into a stop. The workdir's files: jaxgpt/rundir.py.

Metrics are read one step late, so the host never stalls the device, except at the steps that save or evaluate, which
read their own step's metrics first: after a non-finite loss nothing more is saved or evaluated. Step k's metrics are
those of the parameters before update k (the checkpoint of step k - 1), so a checkpoint is known good only once the
next step's loss is finite; the stop message names the newest such checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from collections.abc import Callable

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from jaxgpt import checkpoint, distributed, rundir, sharding
from jaxgpt.cli import clean_errors
from jaxgpt.config import check_overrides
from jaxgpt.data.loader import pipeline
from jaxgpt.distributed import is_lead
from jaxgpt.errors import ConfigError
from jaxgpt.train import step
from jaxgpt.train.evaluation import Evaluation, Schedule
from jaxgpt.train.goodput import Goodput
from jaxgpt.train.profile import Profiler
from jaxgpt.train.record import banner, record_chat_template, record_tokenizer, write_run_record
from jaxgpt.train.recorder import Cadence, Recorder
from jaxgpt.train.resume import restore_or_init
from jaxgpt.train.setup import Setup, setup
from jaxgpt.train.signals import StopSignal
from jaxgpt.train.state import StateLayout


def run(cfg: ml_collections.ConfigDict, workdir: str, *, stop_after: int | None = None) -> dict:
    """Trains (or resumes) in `workdir`; returns the last train and eval events."""
    started = time.perf_counter()  # the attempt's wall time counts from here (goodput.py)
    r = setup(cfg, workdir, stop_after)
    try:
        os.makedirs(r.workdir, exist_ok=True)
    except OSError as e:  # a file in the way, or no permission
        raise ConfigError(f"--workdir={r.workdir}: cannot be used as the run directory ({e.strerror})") from None
    with contextlib.ExitStack() as cleanup:  # closes what was opened, last first, however the run ends
        cleanup.enter_context(rundir.exclusive(r.workdir))  # a second run in this workdir is refused, not mixed in
        # First in, last out: the signal handlers stay in place until the final checkpoint is on disk, so a second
        # SIGTERM during that save (a scheduler repeating itself) does not kill the process mid-write.
        stop = StopSignal()
        cleanup.callback(stop.restore)
        every, keep = r.config.checkpoint.every, r.config.checkpoint.keep
        ckpt = checkpoint.Checkpointer(rundir.checkpoint_dir(r.workdir), every=every, keep=keep)
        cleanup.callback(ckpt.close)
        cleanup.callback(ckpt.wait)  # runs before close: the last save is durable on disk
        layout = StateLayout.build(r.step_cfg, r.mesh)  # the one layout: steps, checkpoints and init share it
        state = restore_or_init(r, layout, ckpt)
        start_step = int(jax.device_get(state.step))
        # Only now: a refused resume must not overwrite the record of the run that made the checkpoints.
        record_tokenizer(r)
        record_chat_template(r)
        resolved = write_run_record(r)
        schedule = eval_schedule(r)
        if is_lead():
            print(banner(r, start_step, schedule.cost(r.plan.tokens_per_step, r.config.data.seq_len)), flush=True)
        cadence = Cadence(
            r.plan.num_steps,
            r.end_step,
            r.plan.log_every,
            r.plan.tokens_per_step,
            r.flops_per_token,
            r.peak_flops,
        )
        epochs = r.train_src.epochs(r.plan.global_batch, r.config.data.seed) if r.config.data.mixture else None
        recorder = cleanup.enter_context(
            Recorder(r.workdir, cadence, r.config.wandb, resolved, start_step, ckpt, started=started, epochs=epochs)
        )
        step_for = train_steps(layout, r.config.train.layer_stats_every, recorder.goodput)
        eval_fn = step.make_eval_step(layout) if r.val_sets else None
        tasks = None if r.tasks is None else (r.tasks, layout.model)
        evaluation = Evaluation(schedule, eval_fn, r.val_sets, r.mesh, recorder, tasks)
        if evaluation.missed(start_step):
            evaluation(start_step, state.params)
        batches = pipeline.train_batches(
            r.train_src,
            global_batch_size=r.plan.global_batch,
            seed=r.config.data.seed,
            sharding=sharding.batch_sharding(r.mesh),
            start_step=start_step,
            prefetch=r.config.data.prefetch,
        )
        cleanup.callback(batches.close)
        profiler = cleanup.enter_context(Profiler(r.workdir, r.config.train, start_step))
        recorder.goodput.book("startup")
        train_loop(r, state, step_for, batches, ckpt, recorder, evaluation, stop, profiler, start_step)
    plot_metrics(r.workdir)  # the checkpoint is on disk and metrics.jsonl closed: nothing left to wait for it
    return recorder.last


def eval_schedule(r: Setup) -> Schedule:
    t = r.config.train
    tasks, task_tokens = (0, 0) if r.tasks is None else (len(r.tasks.tasks), r.tasks.tokens())
    return Schedule(t.eval_every, r.plan.num_steps, r.eval_batches, r.plan.eval_batch, t.eval_steps, tasks, task_tokens)


def train_steps(layout: StateLayout, layer_stats_every: int, goodput: Goodput) -> Callable[[int], Callable]:
    """The jitted step for each step number: the plain one, or at multiples of train.layer_stats_every (0: never)
    the one that also measures the layers. Each one's first call is booked as compilation."""
    plain = goodput.compiling(step.make_train_step(layout))
    if not layer_stats_every:
        return lambda done: plain
    measuring = goodput.compiling(step.make_train_step(layout, layer_stats=True))
    return lambda done: measuring if done % layer_stats_every == 0 else plain


def train_loop(
    r: Setup,
    state,
    step_for: Callable[[int], Callable],
    batches,
    ckpt,
    recorder: Recorder,
    evaluation: Evaluation,
    stop: StopSignal,
    profiler: Profiler,
    start_step: int,
) -> None:
    """Steps start_step + 1 .. r.end_step (step_for(k): step k's jitted step). Metrics are read one step late, so the
    host never stalls the device, except at a step that saves, evaluates or profiles: after a non-finite loss nothing
    more is saved or evaluated. Ends with the goodput report (and a mixture's epochs per component)."""
    pending = None  # (step, metrics) dispatched but not yet read
    done = start_step
    for done in range(start_step + 1, r.end_step + 1):
        with recorder.goodput.timing("data_wait"):
            batch = next(batches)
        state, metrics = step_for(done)(state, batch)
        if done == profiler.due:  # without profiles, never (profile.NEVER): this compare is all they cost
            profiler.after(done, state)
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
            with recorder.goodput.timing("checkpoint"):
                ckpt.save(state, data={**r.stream, "step": done}, config=r.cfg.to_dict())
        if evaluating:
            evaluation(done, state.params)
        if stopping:
            break
    if pending is not None:
        recorder.train(*pending)
    with recorder.goodput.timing("checkpoint"):
        ckpt.wait()  # the last save on disk: its end is part of the run's time
    recorder.report_goodput()
    recorder.report_epochs(done)


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


# The command
# ------------------------------------------------------------------------------------------------------------------

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


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _WORKDIR.value is None:
        raise app.UsageError("--workdir is required")
    if _CONFIG.value is None:
        raise app.UsageError("--config is required, e.g. --config=configs/gpt60m.py")
    logging.set_verbosity(logging.WARNING)  # the progress bar is the console; Orbax's INFO lines would bury it
    checkpoint.quiet_orbax_errors()
    # OSError: the workdir's disk is full or gone while metrics or config.json are written
    with clean_errors(OSError):
        # the flags, else JAX's coordinator variables, else a SLURM step (srun); else one process
        launch = distributed.detect(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
        distributed.initialize(launch)
        run(_CONFIG.value, _WORKDIR.value, stop_after=_STOP_AFTER.value)


def _parse_flags(argv: list[str]) -> list[str]:
    with clean_errors():
        check_overrides(argv)
        try:
            return flags.FLAGS(argv)
        except flags.Error as e:  # absl echoes the value as given: a newline in it must not break the one line
            raise ConfigError(str(e)) from None


def entry(argv: list[str] | None = None) -> None:
    """`python -m jaxgpt.train` and `jaxgpt train`: argv[0] is the program's name, as absl expects."""
    # --help lists the key flags of the program absl sees as the main module: make this module's flags its key flags
    for name in ("config", "workdir", "stop_after", "coordinator_address", "num_processes", "process_id"):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])
    app.run(main, argv=argv if argv is not None else sys.argv, flags_parser=_parse_flags)
