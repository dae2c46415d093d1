"""Shared CLI plumbing for tools/: import jaxgpt from this checkout, turn PackedDataError into a one-line exit."""

import contextlib
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # works without `pip install -e .` too

from jaxgpt.pbin import PackedDataError  # noqa: E402


@contextlib.contextmanager
def clean_errors():
    """Bad input exits with `error: <path:line: reason>` and status 1; Ctrl-C with status 130; no tracebacks."""
    try:
        yield
    except PackedDataError as e:
        raise SystemExit(f"error: {e}") from None
    except KeyboardInterrupt:
        print("interrupted; no output was left behind", file=sys.stderr)
        raise SystemExit(130) from None
