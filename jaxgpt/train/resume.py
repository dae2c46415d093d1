"""A run's start: the newest intact checkpoint when it continues this run exactly, else a fresh (or warm) state."""

from __future__ import annotations

import json
import sys
import warnings

from jaxgpt import checkpoint, config
from jaxgpt.config import flatten
from jaxgpt.data.loader import mixture
from jaxgpt.errors import CheckpointError, ConfigError
from jaxgpt.interop import warmstart
from jaxgpt.train.setup import Setup
from jaxgpt.train.state import StateLayout, TrainState

RESUMABLE = config.resumable()  # the config keys a resume may change; every other must match the checkpoint


def restore_or_init(run: Setup, layout: StateLayout, ckpt: checkpoint.Checkpointer) -> TrainState:
    """The newest intact checkpoint's state, after checking that it continues this run exactly; else a fresh one.
    A damaged newer step is set aside with a warning (checkpoint.Checkpointer.restore_newest). A fresh state takes
    its parameters from train.init_from when set (interop/warmstart.py): only at step 0, a resume never reads it."""

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
    t = run.config.train
    return warmstart.init_state(layout, t.seed, t.init_from, run.config.data.tokenizer_file)


def check_resumable(saved_config: dict, saved_stream: dict, cfg, stream: dict, directory: str, step: int) -> None:
    """Refuses to resume under settings that would not continue the run exactly (or not fit its arrays): every config
    key but RESUMABLE, and every value of `stream`, must equal the checkpoint's. Knobs the checkpoint predates
    compare as their defaults; a knob of a newer jaxgpt is refused. A data.mixture's record may differ only in
    stages that start after `step` (mixture.resume_diffs)."""
    mixtures = saved_stream.get("mixture"), stream.get("mixture")  # None: a run without a mixture
    saved_stream = {k: v for k, v in saved_stream.items() if k != "mixture"}
    stream = {k: v for k, v in stream.items() if k != "mixture"}
    # A checkpoint of an older jaxgpt may lack a record that `stream` has now (train_files): say so, compare the rest.
    unrecorded = [k for k in stream if k not in saved_stream]
    if unrecorded:
        warnings.warn(
            f"{directory}: step {step} holds no record of {unrecorded} (an older jaxgpt); not compared", stacklevel=2
        )
    stream = {k: v for k, v in stream.items() if k in saved_stream}
    try:
        saved_config = config.complete(saved_config, f"{directory}/{step}").to_dict()
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    now_config = config.complete(cfg.to_dict(), "the run's config").to_dict()  # a config file may predate a knob too
    # Through JSON, as the checkpoint stored the config (tuples become lists).
    saved = {**flatten(json.loads(json.dumps(saved_config))), **{k: saved_stream[k] for k in stream}}
    now = {**flatten(json.loads(json.dumps(now_config))), **stream}
    keys = sorted((saved.keys() | now.keys()) - RESUMABLE)
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs now {now.get(k)!r}" for k in keys if saved.get(k) != now.get(k)]
    diffs += mixture.resume_diffs(mixtures[0], json.loads(json.dumps(mixtures[1])), step)  # as the checkpoint has it
    if diffs:
        raise CheckpointError(
            f"{directory}: step {step} was written by a run with other settings, so resuming would not continue it "
            f"exactly ({'; '.join(diffs)}). Use a new --workdir, or restore the original settings."
        )
