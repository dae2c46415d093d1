"""A run's start: the newest intact checkpoint when it continues this run exactly, else a branch of another run's
checkpoint (train.branch_from), else a fresh (or warm) state.

A resume or a branch may change train.num_steps only where that keeps every step taken exact: a wsd run in its
stable phase (optim.extension_refusal), which is how a wsd run is extended, or decays at several budgets.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

from jaxgpt import checkpoint, config, rundir
from jaxgpt.config import flatten
from jaxgpt.data.loader import mixture
from jaxgpt.errors import CheckpointError, ConfigError
from jaxgpt.interop import warmstart
from jaxgpt.train import optim
from jaxgpt.train.setup import Setup
from jaxgpt.train.state import StateLayout, TrainState

RESUMABLE = config.resumable()  # the config keys a resume may change; every other must match the checkpoint
# Compared apart: the run's length may change where the schedule allows it (optim.extension_refusal)
NUM_STEPS = ("train.num_steps", "num_steps")
RESTORE = "Use a new --workdir, or restore the original settings."


def restore_or_init(run: Setup, layout: StateLayout, ckpt: checkpoint.Checkpointer) -> TrainState:
    """The newest intact checkpoint's state, after checking that it continues this run exactly; else a branch of
    train.branch_from's checkpoint, checked alike; else a fresh one. A damaged newer step is set aside with a warning
    (checkpoint.Checkpointer.restore_newest). A fresh state takes its parameters from train.init_from when set
    (interop/warmstart.py). Only a run without checkpoints reads train.init_from or train.branch_from."""

    def resume(step: int) -> TrainState:
        saved_config, saved_stream = ckpt.restore_json(step)
        adopt_origins(saved_config, run.cfg, ("init_from", "branch_from"), "resuming")
        check_resumable(saved_config, saved_stream, run.cfg, run.stream, ckpt.directory, step)
        return ckpt.restore(layout, step)

    found = ckpt.restore_newest(resume, set_aside=True)
    if found is not None:
        return found[1]
    t = run.config.train
    if t.branch_from:
        return branch(run, layout, t.branch_from)
    return warmstart.init_state(layout, t.seed, t.init_from, run.config.data.tokenizer_file)


def adopt_origins(saved_config: dict, cfg, names: tuple[str, ...], doing: str) -> None:
    """Where the checkpoint's run started (train.init_from, train.branch_from): a command that continues it need not
    repeat them; config.json and the saves keep recording them, and naming another one is refused."""
    for name in names:
        origin = saved_config.get("train", {}).get(name, "")
        if origin and not cfg.train[name]:
            print(f"jaxgpt: {doing} a run that started from train.{name}={origin}", file=sys.stderr)
            cfg.train[name] = origin


def branch(run: Setup, layout: StateLayout, source: str) -> TrainState:
    """The whole train state of checkpoint PATH@STEP of another run, checked to continue that run exactly."""
    path, _, at = source.rpartition("@")  # TrainConfig checked the form
    step, directory = int(at), rundir.checkpoint_dir(path)
    if not os.path.isdir(directory):
        raise CheckpointError(f"train.branch_from={source}: {path} has no checkpoints/; is it a jaxgpt workdir?")
    ckpt = checkpoint.Checkpointer(directory, every=1, keep=1_000_000)  # keep: never delete anything of the source
    try:
        ckpt.resolve(step)  # raises, naming the steps there are
        ckpt.check_committed(step)
        saved_config, saved_stream = ckpt.restore_json(step)
        adopt_origins(saved_config, run.cfg, ("init_from",), "branching from")
        check_resumable(saved_config, saved_stream, run.cfg, run.stream, ckpt.directory, step, branch=True)
        state = ckpt.restore(layout, step)
    finally:
        ckpt.close()
    print(f"jaxgpt: branched from step {step} of {directory}: its whole train state", file=sys.stderr)
    return state


def check_resumable(
    saved_config: dict, saved_stream: dict, cfg, stream: dict, directory: str, step: int, *, branch: bool = False
) -> None:
    """Refuses to resume (or branch) under settings that would not continue the run exactly (or not fit its arrays):
    every config key but RESUMABLE, and every value of `stream`, must equal the checkpoint's; train.num_steps may
    change where optim.extension_refusal allows it. Knobs the checkpoint predates compare as their defaults; a knob of
    a newer jaxgpt is refused. A branch's own train.branch_from is not compared. A data.mixture's record may differ
    only in stages that start after `step` (mixture.resume_diffs)."""
    mixtures = saved_stream.get("mixture"), stream.get("mixture")  # None: a run without a mixture
    saved_stream = {k: v for k, v in saved_stream.items() if k != "mixture"}
    stream = {k: v for k, v in stream.items() if k != "mixture"}
    # A checkpoint of an older jaxgpt may lack a record that `stream` has now (train_files): say so, compare the rest.
    unrecorded = [k for k in stream if k not in saved_stream]
    if unrecorded:
        warnings.warn(
            f"{directory}: step {step} holds no record of {unrecorded} (an older jaxgpt); not compared", stacklevel=2
        )
    try:
        saved_config = config.complete(saved_config, f"{directory}/{step}").to_dict()
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    now_config = config.complete(cfg.to_dict(), "the run's config").to_dict()  # a config file may predate a knob too
    # Through JSON, as the checkpoint stored the config (tuples become lists).
    recorded = {k: saved_stream[k] for k in stream if k in saved_stream}
    saved = {**flatten(json.loads(json.dumps(saved_config))), **recorded}
    now = {**flatten(json.loads(json.dumps(now_config))), **{k: stream[k] for k in recorded}}
    apart = {*RESUMABLE, *NUM_STEPS, *(("train.branch_from",) if branch else ())}
    keys = sorted((saved.keys() | now.keys()) - apart)
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs now {now.get(k)!r}" for k in keys if saved.get(k) != now.get(k)]
    saved.setdefault("num_steps", saved["train.num_steps"])  # an older stream record without it: the config's
    now["num_steps"] = stream["num_steps"]
    steps = num_steps_change(saved, now, step)
    if steps:
        diffs = sorted([*diffs, steps])
    diffs += mixture.resume_diffs(mixtures[0], json.loads(json.dumps(mixtures[1])), step)  # as the checkpoint has it
    if diffs:
        doing, fix = ("branching from", "Branch with the source's settings.") if branch else ("resuming", RESTORE)
        raise CheckpointError(
            f"{directory}: step {step} was written by a run with other settings, so {doing} it would not continue it"
            f" exactly ({'; '.join(diffs)}). {fix}"
        )
    if saved["num_steps"] != now["num_steps"]:
        p = optim.phases(optim.OptimConfig.from_config(saved_config), now["num_steps"])
        print(
            f"jaxgpt: train.num_steps {saved['num_steps']} -> {p.num_steps} at step {step}, in the stable phase: the"
            f" decay now spans steps {p.decay_start}-{p.num_steps}",
            file=sys.stderr,
        )


def num_steps_change(saved: dict, now: dict, step: int) -> str:
    """The difference in the run's length that breaks exactness ("" if none): flat config keys and stream records
    ("num_steps": the steps train.num_steps resolves to, one epoch for None), the checkpoint's and the run's."""
    optim_cfg = optim.OptimConfig(**{k.split(".")[1]: v for k, v in saved.items() if k.startswith("optim.")})
    why = optim.extension_refusal(optim_cfg, saved["num_steps"], now["num_steps"], step)
    if not why:
        return ""
    shown = [f"{s['num_steps']} (one epoch)" if s["train.num_steps"] is None else s["num_steps"] for s in (saved, now)]
    return f"train.num_steps: checkpoint {shown[0]} vs now {shown[1]} ({why})"
