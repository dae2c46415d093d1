"""What a run records about itself: DIR/config.json, DIR/tokenizer.json, DIR/chat_template.yaml, and the banner it
prints at its start."""

from __future__ import annotations

import dataclasses
import json
import os

import jax

from jaxgpt import distributed, rundir
from jaxgpt.distributed import is_lead
from jaxgpt.errors import ConfigError
from jaxgpt.io import atomic_output
from jaxgpt.train import optim, profile
from jaxgpt.train.setup import Setup


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
        "eval_batches": run.eval_batches,
        # the schedule's phases in steps (plots.py marks where a wsd decay starts)
        "lr_schedule": {
            "kind": run.config.optim.schedule,
            **dataclasses.asdict(optim.phases(run.step_cfg.optim, run.plan.num_steps)),
        },
    }
    resolved = {"config": run.cfg.to_dict(), "derived": derived}
    if is_lead():
        with atomic_output(rundir.path(run.workdir, rundir.CONFIG)) as tmp, open(tmp, "w") as f:
            json.dump(resolved, f, indent=2)
    return resolved


def record_tokenizer(run: Setup) -> None:
    """DIR/tokenizer.json: the run's tokenizer beside its checkpoints, so that the workdir alone can generate."""
    src, dst = run.config.data.tokenizer_file, rundir.tokenizer_path(run.workdir)
    if not run.records_tokenizer:
        return
    with open(src, "rb") as f:
        data = f.read()
    if os.path.exists(dst):
        with open(dst, "rb") as f:
            if f.read() != data:
                raise ConfigError(
                    f"data.tokenizer_file={src!r} differs from {dst}, the tokenizer this run started with; "
                    "a run keeps one tokenizer"
                )
        return
    if is_lead():
        with atomic_output(dst) as tmp, open(tmp, "wb") as f:
            f.write(data)


def record_chat_template(run: Setup) -> None:
    """DIR/chat_template.yaml: data.chat_template_file, so that the workdir alone can chat (the newest one wins)."""
    src = run.config.data.chat_template_file
    if src and is_lead():
        with open(src, "rb") as f, atomic_output(rundir.path(run.workdir, rundir.CHAT_TEMPLATE)) as tmp:
            with open(tmp, "wb") as out:
                out.write(f.read())


def banner(run: Setup, start_step: int, eval_cost: str) -> str:
    """What the run prints before its first step: size, mesh, batch, plan, lr schedule, dtype, evaluation cost, and
    the profiles it takes."""
    plan, config, mesh = run.plan, run.config, run.mesh
    profiles = profile.describe(run.workdir, config.train)
    return (
        f"jaxgpt: {run.num_params:,} parameters | mesh {dict(mesh.shape)} over {jax.device_count()} "
        f"{jax.devices()[0].device_kind} device(s), {jax.process_count()} process(es)\n"
        f"        {plan.global_batch} seqs x {config.data.seq_len} tokens = {plan.tokens_per_step:,} tokens/step | "
        f"{plan.num_steps} steps planned ({plan.steps_per_epoch} per epoch)"
        + (f", resuming at step {start_step}" if start_step else "")
        + (f", stopping after step {run.end_step}" if run.end_step < plan.num_steps else "")
        + f"\n        {optim.describe(run.step_cfg.optim, plan.num_steps)}"
        + f"\n        compute: {run.step_cfg.compute_dtype} on {mesh.devices.flat[0].platform}"
        + f"\n        {eval_cost}"
        + (f"\n        {run.train_src.describe()}" if config.data.mixture else "")
        + (f"\n        {distributed.describe()}" if jax.process_count() > 1 else "")
        + (f"\n        {profiles}" if profiles else "")
    )
