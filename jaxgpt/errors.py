"""The root of every error meant for a user, its kinds, and the one check of an integer setting.

A command catches JaxgptError (and OSError on its own outputs) and prints it as one line, `error: <message>`; any
other exception is a bug and keeps its traceback. None of these subclasses ValueError: a ValueError raised by numpy
or JAX (a shape error inside a trace) must never read like bad input.

This module imports only the standard library: every part of jaxgpt, the jax-free data tools included, raises these.
"""

from __future__ import annotations

import numbers


class JaxgptError(Exception):
    """Something the user gave (a file, a flag, a config key) that jaxgpt cannot use; the message names it."""


class ConfigError(JaxgptError):
    """A config key, command-line flag or argument whose value jaxgpt cannot use."""


class PackedDataError(JaxgptError):
    """A .idx/.pbin/.jsonl input is malformed; the message names the file and what is wrong."""


class CheckpointError(JaxgptError):
    """A checkpoint directory is missing, empty, damaged, or does not match the run; or a save failed."""


class ExportError(JaxgptError):
    """Options with no exact native class, or a model folder that jaxgpt's options cannot hold."""


class WarmStartError(JaxgptError):
    """A train.init_from source that is missing or does not fit the run's model."""


class MetricsError(JaxgptError):
    """A metrics.jsonl, config.json or output path that cannot be used; the message names the file (and line)."""


class EvalError(JaxgptError):
    """A downstream task spec or task file jaxgpt cannot score; the message names the file, line and field."""


class TrainingStopped(JaxgptError):
    """The run stopped on purpose with a message for the user (a non-finite loss)."""


def check_int(key: str, value, minimum: int = 1, hint: str = "") -> int:
    """`value` when it is an integer (numpy's too; not a bool) >= minimum; else a ConfigError `KEY=VALUE must be an
    int >= MIN`."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{key}={value!r} must be an int >= {minimum}{hint}")
    return value
