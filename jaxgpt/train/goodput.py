"""Where a run's wall time goes, summed over its attempts (its first start and every resume), and its goodput.

Each attempt books its time, in seconds, to one of
    startup     from `run()` being called to the first step: settings, data, restore, records (the CLI's imports
                of Python and JAX before `run()` are not counted)
    compile     the first call of each train step: tracing and XLA's compilation (the persistent cache shortens it)
    data_wait   the loop waiting for its next batch
    productive  the steps that advanced the run: the host waiting for the device, dispatching, logging
    recomputed  the steps a resume does again: those the attempt before it had logged past its last checkpoint
    checkpoint  the blocking part of the saves (the state copied off the devices, the previous save awaited), and
                the wait for the last save at the end
    eval        evaluations, their compilation included
and goodput = productive / wall, wall being the sum of every category over every attempt.

DIR/goodput.json holds the attempts, rewritten atomically at each train log line and at the run's end; a resume
reads it, so the totals survive metrics.jsonl being cut back to the resume step. A killed attempt counts up to its
last log line: its time after that, and the time until the restart, are in no category (the report gives them as
"between attempts"). The steps recomputed are those the previous attempt logged past the resume step, so they are
counted to train.log_every.
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from collections.abc import Callable, Iterator

from jaxgpt.io import atomic_output

CATEGORIES = ("productive", "recomputed", "compile", "startup", "data_wait", "checkpoint", "eval")


class Goodput:
    """One attempt's booking of its time, on top of the attempts before it that DIR/goodput.json records."""

    def __init__(self, path: str | None, start_step: int, logged_step: int, since: float | None = None):
        """path: DIR/goodput.json, or None (processes other than 0: nothing is read or written); logged_step: the
        newest step metrics.jsonl held before the resume cut it back to start_step; since: time.perf_counter() when
        the attempt started (default: now)."""
        self.path = path
        self._since = time.perf_counter() if since is None else since
        self.previous = read_attempts(path) if path else []
        # Steps up to here were done (and logged) by an earlier attempt: doing them again is lost time.
        self.redo_until = max(start_step, logged_step, *(a["step"] for a in self.previous))
        self.attempt = {
            "started": time.time() - (time.perf_counter() - self._since),  # epoch seconds
            "saved": None,  # epoch seconds of the last write
            "start_step": start_step,
            "step": start_step,  # the newest step seen to finish
            "recomputed_steps": 0,  # steps done again so far (up to redo_until)
            "seconds": dict.fromkeys(CATEGORIES, 0.0),
        }
        self.seconds = self.attempt["seconds"]

    @contextlib.contextmanager
    def timing(self, category: str) -> Iterator[None]:
        """Books the block's time to `category` (blocks never nest)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[category] += time.perf_counter() - start

    def compiling(self, step_fn: Callable) -> Callable:
        """step_fn, whose first call (tracing and compiling it, then dispatching the step) is booked as compile."""
        called = False

        def step(*args):
            nonlocal called
            if called:
                return step_fn(*args)
            called = True
            with self.timing("compile"):
                return step_fn(*args)

        return step

    def book(self, category: str) -> None:
        """Books to `category` the time since the attempt started that no booking holds yet."""
        unbooked = time.perf_counter() - self._since - sum(self.seconds.values())
        self.seconds[category] += max(unbooked, 0.0)

    def step(self, done: int) -> None:
        """Step `done` was seen to finish: the unbooked time since the step before is its time."""
        again = done <= self.redo_until
        self.book("recomputed" if again else "productive")
        self.attempt["recomputed_steps"] += int(again)
        self.attempt["step"] = done

    def totals(self) -> dict[str, float]:
        """Seconds per category over every attempt so far."""
        attempts = [*self.previous, self.attempt]
        return {c: sum(a["seconds"].get(c, 0.0) for a in attempts) for c in CATEGORIES}

    def fields(self) -> dict[str, float]:
        """What a train log line adds: goodput so far, the wall time and its categories (cumulative seconds), the
        attempts and the steps recomputed."""
        seconds = self.totals()
        wall = sum(seconds.values())
        return {
            "goodput": seconds["productive"] / wall if wall else 0.0,
            "time/wall_s": wall,
            **{f"time/{c}_s": s for c, s in seconds.items()},
            "attempts": len(self.previous) + 1,
            "recomputed_steps": sum(a["recomputed_steps"] for a in [*self.previous, self.attempt]),
        }

    def save(self) -> None:
        """Rewrites DIR/goodput.json whole (process 0)."""
        if self.path is None:
            return
        self.attempt["saved"] = time.time()
        with atomic_output(self.path) as tmp, open(tmp, "w") as f:
            json.dump({"attempts": [*self.previous, self.attempt]}, f, indent=1)

    def report(self) -> str:
        """The end-of-run block: goodput, the wall time over the attempts, and where it went."""
        f, attempts = self.fields(), [*self.previous, self.attempt]
        between = sum(max(b["started"] - (a["saved"] or a["started"]), 0.0) for a, b in zip(attempts, attempts[1:]))
        parts = " | ".join(f"{c.replace('_', ' ')} {f[f'time/{c}_s']:.1f}" for c in CATEGORIES)
        resumes = len(attempts) - 1
        return (
            f"goodput {100 * f['goodput']:.1f}%: productive steps {f['time/productive_s']:.1f} s of"
            f" {f['time/wall_s']:.1f} s wall over {len(attempts)} attempt(s)"
            + (
                f" ({resumes} resume(s), {f['recomputed_steps']} step(s) recomputed; {between:.1f} s between attempts"
                " not counted)"
                if resumes
                else ""
            )
            + f"\n  seconds: {parts}"
        )


def read_attempts(path: str) -> list[dict]:
    """The attempts DIR/goodput.json records; none for a missing file, and a warning for a damaged one (accounting
    must never stop a run)."""
    try:
        with open(path) as f:
            attempts = json.load(f)["attempts"]
        if not isinstance(attempts, list) or not all(map(_readable, attempts)):
            raise ValueError("an attempt lacks a field or holds a value of another type")
        return attempts
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as e:
        warnings.warn(f"{path}: not readable ({type(e).__name__}: {e}); goodput counts from this attempt", stacklevel=2)
        return []


def _readable(attempt) -> bool:
    """Whether an attempt of goodput.json holds the fields this module reads, each of its type."""
    number = (int, float)
    try:
        return (
            isinstance(attempt["started"], number)
            and isinstance(attempt["saved"], (*number, type(None)))
            and isinstance(attempt["step"], int)
            and isinstance(attempt["recomputed_steps"], int)
            and all(isinstance(s, number) for s in attempt["seconds"].values())
        )
    except (KeyError, TypeError, AttributeError):
        return False
