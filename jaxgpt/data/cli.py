"""Shared plumbing of the command-line tools in tools/: bad input ends in one line, never a traceback."""

import contextlib
import sys

from jaxgpt.data.errors import PackedDataError


@contextlib.contextmanager
def clean_errors():
    """Bad input exits with `error: <path:line: reason>` and status 1; Ctrl-C with status 130."""
    try:
        yield
    except PackedDataError as e:
        raise SystemExit(f"error: {e}") from None
    except KeyboardInterrupt:
        print("interrupted; no output was left behind", file=sys.stderr)
        raise SystemExit(130) from None
