"""Shared plumbing of the command-line tools (tools/, `jaxgpt data`): bad input ends in one line, never a traceback."""

import contextlib
import pathlib
import sys

from jaxgpt.data.errors import PackedDataError


@contextlib.contextmanager
def clean_errors(*also: type[BaseException]):
    """Bad input exits with `error: <path:line: reason>` and status 1; Ctrl-C with status 130. `also`: the other
    error types a command's clean messages come as (CheckpointError, ExportError, ValueError, ...)."""
    try:
        yield
    except (PackedDataError, *also) as e:
        raise SystemExit(f"error: {e}") from None
    except KeyboardInterrupt:
        print("interrupted; no output was left behind", file=sys.stderr)
        raise SystemExit(130) from None


def expand_pbin_paths(paths: list[str]) -> list[str]:
    """Each directory stands for every .pbin below it, in sorted path order (Modalities' glob order is the disk's)."""
    out: list[str] = []
    for p in map(pathlib.Path, paths):
        out.extend(map(str, sorted(p.glob("**/*.pbin"))) if p.is_dir() else [str(p)])
    return out
