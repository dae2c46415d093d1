"""Atomic outputs: every file and folder jaxgpt writes appears whole or not at all.

`atomic_output(path)` yields a temporary path in the destination's directory and renames it into place only when the
block completes; `atomic_folder(path)` does the same for a folder. An error, a crash or Ctrl-C never leaves a partial
output behind, and a file being replaced stays whole until its successor is. A SIGTERM cleans up too where the
command turned it into SystemExit (jaxgpt.cli.sigterm_exits); the training loop turns it into a stop instead, so this
module leaves signals alone.

This module imports only the standard library.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator

from jaxgpt.errors import JaxgptError


def _make_parent(path: str) -> str:
    """Creates the directory `path` goes into; a file in the way or no permission is a JaxgptError naming it."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = directory
        while not os.path.exists(blocker):
            blocker = os.path.dirname(blocker)
        raise JaxgptError(f"{path}: cannot write there, {blocker} is not a directory") from None
    except OSError as e:
        raise JaxgptError(f"{path}: cannot create its directory {directory}: {e.strerror}") from None
    return directory


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[str]:
    """Yields a temporary path next to `path`; renames it to `path` if the block succeeds, deletes it otherwise."""
    path = os.fspath(path)
    tmp = os.path.join(_make_parent(path), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:  # also KeyboardInterrupt and SystemExit: never leave a partial file behind
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, flag: str | None = None, replace: bool = False) -> Iterator[str]:
    """A temporary folder next to `path`, renamed to it when the block completes and removed if it fails. `path` must
    not exist, or be an empty folder, unless `replace`: then a folder there is swapped for the new one at the end.
    Errors name it as `flag`=path (the command's flag) when given."""
    path = os.path.abspath(os.fspath(path))
    named = f"{flag}={path}" if flag else path
    if os.path.exists(path) and (not os.path.isdir(path) or (os.listdir(path) and not replace)):
        raise JaxgptError(f"{named}: exists and is not an empty folder; pick a new one or remove it")
    tmp = os.path.join(_make_parent(path), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        os.makedirs(tmp)
    except OSError as e:
        raise JaxgptError(f"{named}: cannot create it ({e.strerror})") from None
    try:
        yield tmp
        old = f"{tmp}.old"
        if os.path.isdir(path):
            os.replace(path, old)  # empty (checked above) or replaced: set aside until the new one is in place
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
