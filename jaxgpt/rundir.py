"""The run directory (--workdir=DIR): what a training run keeps there, and how the other commands find it.

    DIR/checkpoints/    Orbax steps (checkpoint.py); a damaged step is moved aside to <step>.damaged on resume
    DIR/run.lock        held by the run writing here: a second run started in DIR is refused (`exclusive`)
    DIR/metrics.jsonl   one JSON object per train/eval/layers event (train/recorder.py)
    DIR/metrics.png     its curves, drawn when the run ends (plots.py)
    DIR/goodput.json    where the wall time went, attempt by attempt (train/goodput.py), which a resume continues
    DIR/config.json     the resolved config, plus what was derived from it (steps, batch, mesh)
    DIR/tokenizer.json  the tokenizer the data was packed with, copied at the run's start: the workdir alone generates
    DIR/wandb/          the W&B run (offline by default), and wandb_run_id, which a resume continues
    DIR/profile/        jax.profiler traces and device memory profiles, when asked for (train/profile.py)
    DIR/evals/          `jaxgpt eval`'s step_<N>.json; tasks.json: the sha256 of each train.eval_tasks file, by name

This module imports only the standard library (plots.py reads a workdir without jax); `exclusive` imports jax.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
from collections.abc import Iterator

from jaxgpt.errors import CheckpointError, JaxgptError

CHECKPOINTS = "checkpoints"
LOCK = "run.lock"
METRICS = "metrics.jsonl"
GOODPUT = "goodput.json"  # where the run's wall time went, over every attempt (train/goodput.py)
PLOT = "metrics.png"
CONFIG = "config.json"
TOKENIZER = "tokenizer.json"
PROFILE = "profile"
TASKS = os.path.join("evals", "tasks.json")  # {task name: sha256} of the files train.eval_tasks has scored
CHAT_TEMPLATE = "chat_template.yaml"  # data.chat_template_file's copy: generate --chat renders with it


def path(workdir: str | os.PathLike, name: str) -> str:
    """DIR/name, absolute."""
    return os.path.join(os.path.abspath(os.fspath(workdir)), name)


def recorded_tasks(workdir: str | os.PathLike) -> dict[str, str]:
    """{task name: sha256} of the task files the run in `workdir` has scored (DIR/evals/tasks.json), or {}."""
    try:
        with open(path(workdir, TASKS), encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise JaxgptError(f"{path(workdir, TASKS)}: cannot be read ({e}); it records the run's task files") from None


def checkpoint_dir(workdir: str | os.PathLike) -> str:
    return path(workdir, CHECKPOINTS)


def tokenizer_path(workdir: str | os.PathLike) -> str:
    """DIR/tokenizer.json: the copy of its tokenizer that a run records beside its checkpoints."""
    return path(workdir, TOKENIZER)


def find_tokenizer(workdir: str | os.PathLike, given: str | None, config=None) -> str:
    """The tokenizer of a run: `given` (a --tokenizer_file flag), else the run's copy DIR/tokenizer.json, else its
    config's data.tokenizer_file (runs from before the copy) where that file still exists."""
    if given:
        return given
    tried = [tokenizer_path(workdir)]
    if config is not None and config.data.get("tokenizer_file"):
        tried.append(config.data.tokenizer_file)
    for candidate in tried:
        if os.path.isfile(candidate):
            return candidate
    raise JaxgptError(
        f"{workdir}: no tokenizer found (tried {', '.join(tried)}); pass --tokenizer_file=PATH, the tokenizer its"
        " data was packed with"
    )


@contextlib.contextmanager
def exclusive(workdir: str | os.PathLike) -> Iterator[None]:
    """Holds DIR/run.lock while a run writes the workdir: a second run started there is refused (a CheckpointError
    naming the first), instead of interleaving its checkpoints and metrics. The lock is the kernel's (flock): it goes
    with the process, even one killed with -9. Process 0 locks; every process refuses alike."""
    from jaxgpt.distributed import all_processes, is_lead

    lock_path, lock, error = path(workdir, LOCK), None, None
    if is_lead():
        try:
            lock = _take_lock(lock_path)
        except CheckpointError as e:
            error = e
    if not all_processes(error is None):
        raise error or CheckpointError(f"{lock_path}: process 0 could not lock the workdir; see its error")
    try:
        yield
    finally:
        if lock is not None:
            lock.close()  # releases the flock; the file stays, naming the last run


def _take_lock(lock_path: str):
    try:
        lock = open(lock_path, "a+")
    except OSError as e:  # a read-only workdir, no permission
        raise CheckpointError(f"{lock_path}: cannot create the workdir's lock file ({e.strerror})") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        raise CheckpointError(
            f"{os.path.dirname(lock_path)}: another run is writing this workdir ({holder}; it holds {lock_path});"
            " wait for it to end, or use another --workdir"
        ) from None
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    lock.truncate(0)
    lock.write(f"pid {os.getpid()} on {socket.gethostname()}, since {now}\n")
    lock.flush()
    return lock
