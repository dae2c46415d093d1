"""Where a run's numbers go: metrics.jsonl, W&B and the progress bar, with throughput, MFU and the non-finite stop.

Only process 0 writes; every process may call. The train loop hands each step's metrics over one step late
(`Recorder.train`), so reading them never stalls the device, except where the loop must know them before it saves
or evaluates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import secrets
import time
import warnings
from collections.abc import Callable

import jax
from tqdm import tqdm

from jaxgpt import rundir
from jaxgpt.config import WandbConfig
from jaxgpt.distributed import is_lead
from jaxgpt.errors import TrainingStopped
from jaxgpt.io import atomic_output
from jaxgpt.train import layer_stats
from jaxgpt.train.goodput import Goodput


@dataclasses.dataclass(frozen=True)
class Cadence:
    """Which steps the recorder logs, and what a step is worth for throughput and MFU."""

    num_steps: int  # the run's planned steps (the progress bar's total)
    end_step: int  # the last step this process runs: always logged
    log_every: int  # Plan.log_every: train.log_every, or the default for the run's length
    tokens_per_step: int
    flops_per_token: float
    peak_flops: float  # of all devices together, for MFU


class MetricsLog:
    """DIR/metrics.jsonl, written by process 0; on resume, events past the restored step are dropped."""

    def __init__(self, path: str, resume_step: int):
        self.path = path
        self._file = None
        self.eval_steps: set[int] = set()  # steps whose eval event the file holds (process 0 only)
        self.logged_step = 0  # the newest step the file held, before the cut (process 0 only)
        if not is_lead():
            return
        if os.path.exists(path):
            # A crash after the last checkpoint leaves events the resumed run will produce again: drop them, so the file
            # reads as one uninterrupted run.
            with open(path) as f:
                lines = f.readlines()
            self.logged_step = max((s for s in map(_event_step, lines) if s != math.inf), default=0)
            kept = [line for line in lines if _event_step(line) <= resume_step]
            self.eval_steps = {e["step"] for e in map(json.loads, kept) if e.get("event") == "eval"}
            with atomic_output(path) as tmp, open(tmp, "w") as f:
                f.writelines(kept)
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

    def __init__(self, cfg: WandbConfig, workdir: str, resolved: dict):
        self._run = None
        if not is_lead() or cfg.mode == "disabled":
            return
        try:
            import wandb

            id_file = os.path.join(workdir, "wandb_run_id")  # the same W&B run continues across resumes
            run_id = open(id_file).read().strip() if os.path.exists(id_file) else secrets.token_hex(4)
            with open(id_file, "w") as f:
                f.write(run_id)
            self._run = wandb.init(
                project=cfg.project,
                name=cfg.name or None,
                mode=cfg.mode,
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


class Recorder(contextlib.ExitStack):
    """A run's metrics.jsonl, W&B run and progress bar; `last` holds the newest train and eval events. Close it (or
    leave its `with` block) to close all three."""

    def __init__(
        self,
        workdir: str,
        cadence: Cadence,
        wandb: WandbConfig,
        resolved: dict,
        start_step: int,
        checkpoints,
        started: float | None = None,
        epochs: Callable[[int], dict[str, float]] | None = None,
    ):
        """resolved: the run's config.json, for W&B; checkpoints: the Checkpointer, which names the newest good one;
        started: time.perf_counter() when the run started (goodput's start-up; default: now); epochs: step -> each
        data.mixture component's passes over its windows so far (Mixture.epochs), logged with the train metrics."""
        super().__init__()
        self.cadence, self.checkpoints, self.epochs, self.workdir = cadence, checkpoints, epochs, workdir
        self.metrics = MetricsLog(rundir.path(workdir, rundir.METRICS), start_step)
        self.callback(self.metrics.close)
        goodput_path = rundir.path(workdir, rundir.GOODPUT) if is_lead() else None
        self.goodput = Goodput(goodput_path, start_step, self.metrics.logged_step, started)
        self.wandb = Wandb(wandb, workdir, resolved)
        self.callback(self.wandb.close)
        self.bar = tqdm(
            total=cadence.num_steps, initial=start_step, disable=not is_lead(), unit="step", dynamic_ncols=True
        )
        self.callback(self.bar.close)
        self.last = {"train": None, "eval": None}
        self._since = (time.perf_counter(), start_step)  # throughput is measured from here

    def train(self, done: int, metrics: dict) -> None:
        """Reads a finished step's metrics (blocking only on that step), stops on non-finite values, logs.

        Throughput counts the steps since the last moment a step was seen to finish: a read that had to wait for its
        step. A read of metrics that were ready already (the host fell behind the device, under load) cannot say
        when its step finished, so it moves nothing: its figure averages back to that moment, and never credits a
        step with less time than it took."""
        waited = not all(getattr(v, "is_ready", lambda: True)() for v in jax.tree.leaves(metrics))
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        self.goodput.step(done)
        if not (math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"])):
            raise self._nonfinite(done, m)
        layers = {k: m.pop(k) for k in [k for k in m if k.startswith(layer_stats.PREFIX)]}
        if layers:  # a step of train.layer_stats_every: its own event, whatever train.log_every says
            self._emit("layers", {"event": "layers", "step": done, **layers})
        self.bar.set_postfix(loss=f"{m['loss']:.4f}", refresh=False)
        c = self.cadence
        if done % c.log_every and done != c.end_step:
            return
        now = time.perf_counter()
        tokens_per_s = (done - self._since[1]) * c.tokens_per_step / max(now - self._since[0], 1e-9)
        if waited:
            self._since = (now, done)
        mfu = tokens_per_s * c.flops_per_token / c.peak_flops
        event = {"event": "train", "step": done, **m, "tokens_per_s": tokens_per_s, "mfu": mfu}
        event |= {**self.goodput.fields(), **(self.epochs(done) if self.epochs else {}), "time": time.time()}
        self.bar.set_postfix(loss=f"{m['loss']:.4f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
        self._emit("train", event)
        self.goodput.save()

    def report_goodput(self) -> None:
        """DIR/goodput.json, final, and its report under the bar (process 0)."""
        self.goodput.save()
        if is_lead():
            self.bar.write(self.goodput.report())

    def report_epochs(self, done: int) -> None:
        """Under the bar (process 0), with a data.mixture: each component's passes over its windows after step done."""
        if self.epochs and is_lead():
            passes = ", ".join(f"{k.rsplit('/', 1)[1]} {v:.3f}" for k, v in self.epochs(done).items())
            self.bar.write(f"epochs per mixture component after step {done}: {passes}")

    def record_tasks(self, hashes: dict[str, str]) -> None:
        """DIR/evals/tasks.json (process 0): each downstream task's file hash, which a resume must find unchanged."""
        if not is_lead():
            return
        path = rundir.path(self.workdir, rundir.TASKS)
        merged = {**rundir.recorded_tasks(self.workdir), **hashes}
        with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            json.dump(merged, f, indent=1)

    @contextlib.contextmanager
    def evaluating(self, done: int, num_batches: int | None):
        """Yields a callback counting evaluation batches into a second bar under the training one, so that a long
        validation pass shows as evaluation, not as a training step that stalls."""
        previous = self.bar.postfix
        self.bar.set_postfix_str(f"evaluating step {done}")
        bar = tqdm(
            total=num_batches,
            desc=f"eval at step {done}",
            unit="batch",
            leave=False,
            dynamic_ncols=True,
            disable=not is_lead(),
        )
        try:
            yield lambda: bar.update(1)
        finally:
            bar.close()
            self.bar.set_postfix_str(previous or "", refresh=False)

    def eval(self, done: int, scores: dict) -> None:
        """The eval event: the validation loss (without validation data, none) and the downstream tasks' metrics."""
        event = {"event": "eval", "step": done, **scores}
        shown = []
        if "eval_loss" in scores:
            shown.append(f"eval_loss {scores['eval_loss']:.4f}  eval_ppl {scores['eval_ppl']:.2f}")
        shown += [f"{k}: {v:.4f}" for k, v in scores.items() if k.startswith("eval_loss/")]
        shown += [f"{k[5:]} {v:.4f}" for k, v in scores.items() if k.startswith("eval/") and not k.endswith("_stderr")]
        self.bar.write(f"step {done}: " + "  ".join(shown))
        self._emit("eval", event)
        self._since = (time.perf_counter(), done)  # evaluation time is not training throughput

    def _emit(self, kind: str, event: dict) -> None:
        self.metrics.write(event)
        self.wandb.log(event)
        self.last[kind] = event

    def _nonfinite(self, done: int, m: dict) -> TrainingStopped:
        # Step `done` measured the parameters saved as step done - 1; a checkpoint is known good once the step after
        # it was finite, so the newest known good one is at most done - 2.
        good, directory = self.checkpoints.newest(at_most=done - 2), self.checkpoints.directory
        return TrainingStopped(
            f"step {done}: loss={m['loss']} grad_norm={m['grad_norm']} is not finite; stopping. These are the metrics"
            f" of the parameters after step {done - 1}; "
            + (
                f"the newest checkpoint known good (its next step's loss was finite) is step {good} in {directory}."
                if good is not None
                else "no checkpoint is known good."
            )
        )
