"""The one atomic writer of the project: every output (.idx, .pbin, the training run's own files) goes through it.

`atomic_output(path)` yields a temporary path in the destination's directory and renames it into place only when the
block completes, so an error, a crash, Ctrl-C or SIGTERM never leaves a partial file behind, and a file being replaced
stays whole until its successor is.

This module imports only the standard library.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

from jaxgpt.data.errors import PackedDataError


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # the exit status the default action would give (143)


@contextlib.contextmanager
def _sigterm_raises_system_exit() -> Iterator[None]:
    """SIGTERM's default action ends the process at once, skipping every cleanup: make it raise SystemExit instead.

    Only the main thread can set a signal handler; elsewhere this does nothing. The previous handler is restored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)  # None: set outside Python


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[str]:
    """Yields a temporary path next to `path`; renames it to `path` if the block succeeds, deletes it otherwise."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = directory
        while not os.path.exists(blocker):
            blocker = os.path.dirname(blocker)
        raise PackedDataError(f"{path}: cannot write there, {blocker} is not a directory") from None
    except OSError as e:
        raise PackedDataError(f"{path}: cannot create its directory {directory}: {e.strerror}") from None
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with _sigterm_raises_system_exit():
        try:
            yield tmp
            os.replace(tmp, path)
        except BaseException:  # also KeyboardInterrupt and SIGTERM: never leave a partial file behind
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
            raise
