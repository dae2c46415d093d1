"""JSONL -> .idx, byte-identical to Modalities 0.5.0 for clean input, streaming and strict.

    index_jsonl / create_index   one pass over the JSONL: (byte offset, byte length) per line, every line parsed as JSON

What Modalities' index does and jaxgpt keeps: lines split on b"\\n" only (a "\\r" stays in the line), a last line
without "\\n" counts, a final "\\n" adds no line; every line must be JSON (json.loads on its bytes); the .idx is the
pickle of a list of tuples, protocol 4.

Where jaxgpt diverges from Modalities on purpose: the index refuses surrogates encoded as UTF-8 bytes
(b"\\xed\\xa0\\x80"). Modalities' index lets them through (json.loads decodes bytes with "surrogatepass") and its packer
later drops the line (see pack.py). Other invalid UTF-8 both indexes refuse alike.

The reasons a line is refused (`LineFault`, `decode_line`, `parse_json`) are worded here once, for the index and for
the packer alike. Memory: the JSONL is read in chunks; the index costs 16 bytes per line.

This module imports only numpy and the standard library; it is also home to the output-path rules the tools share
(`check_output`, the default paths).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from jaxgpt.data.format.pbin import write_idx
from jaxgpt.errors import PackedDataError

FILE_EXISTENCE_POLICIES = ("error", "skip", "override")
EMPTY_LINE = "empty line"


class JsonlError(PackedDataError):
    """A line of a JSONL file cannot be indexed or packed; the message is `path:line: reason`."""


class LineFault(Exception):
    """One line cannot be indexed or packed; the message is the reason (the caller adds path and line)."""


def check_output(dst: str, policy: str, inputs: list[str]) -> bool:
    """Applies the file existence policy to `dst`; returns False when the work should be skipped."""
    if policy not in FILE_EXISTENCE_POLICIES:
        raise PackedDataError(f"file_existence_policy must be one of {FILE_EXISTENCE_POLICIES}, got {policy!r}")
    for p in inputs:
        if os.path.abspath(p) == os.path.abspath(dst):
            raise PackedDataError(f"{dst}: the output path is also an input")
    if os.path.isdir(dst):
        raise PackedDataError(f"{dst}: the output path is a directory")
    if not os.path.exists(dst):
        return True
    if policy == "error":
        raise PackedDataError(f"{dst}: file exists (choose file_existence_policy skip or override, or delete it)")
    if policy == "skip":
        print(f"{dst}: file exists, skipping", file=sys.stderr)
        return False
    print(f"{dst}: file exists, it will be replaced when the new one is complete", file=sys.stderr)
    return True


def default_index_path(src: str | os.PathLike) -> str:
    """Modalities' default: next to the JSONL, its stem + ".idx"."""
    root, _ = os.path.splitext(os.fspath(src))
    return root + ".idx"


def default_pbin_path(src: str | os.PathLike) -> str:
    root, _ = os.path.splitext(os.fspath(src))
    return root + ".pbin"


def decode_line(raw: bytes) -> str:
    """The line as text; LineFault naming the first byte that is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LineFault(f"invalid UTF-8 at byte {e.start} of the line ({raw[e.start : e.start + 4]!r})") from None


def parse_json(line: bytes | str):
    """json.loads of one line; LineFault saying why it is not JSON."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise LineFault(f"invalid JSON: {e.msg} at column {e.colno}") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits; UnicodeDecodeError for bytes
        raise LineFault(f"invalid JSON: {e}") from None
    except RecursionError:  # json.loads recurses once per "[" or "{"; Modalities' index refuses such lines too
        raise LineFault("invalid JSON: nesting too deep") from None


def json_fault(line: bytes) -> str | None:
    """Why `line` is not a JSON document as Modalities' index accepts it (json.loads on the bytes), or None."""
    if not line.strip():
        return EMPTY_LINE if not line else "line holds only whitespace"
    try:
        parse_json(line)
    except LineFault as e:
        return str(e)
    return None


def _check_lines(src: str, lines: list[bytes], body: bytes, first_line_no: int) -> None:
    """Raises JsonlError for the first line of `lines` (whose bytes `body` spans) that Modalities' index refuses."""
    try:  # one C-speed UTF-8 check for the whole block; the rare failure is then located line by line
        body.decode("utf-8")
    except UnicodeDecodeError:
        for k, line in enumerate(lines):
            try:
                decode_line(line)
            except LineFault as e:
                raise JsonlError(f"{src}:{first_line_no + k}: {e}") from None
    loads = json.loads
    for k, line in enumerate(lines):
        try:
            loads(line)
        except Exception:  # noqa: BLE001 - diagnosed again below for a precise message
            raise JsonlError(f"{src}:{first_line_no + k}: {json_fault(line) or 'invalid JSON'}") from None


def index_jsonl(src: str | os.PathLike, chunk_bytes: int = 16 << 20) -> np.ndarray:
    """[num_lines, 2] int64 (byte offset, byte length without b"\\n") per line; raises JsonlError on the first bad line.

    Lines are what Modalities' index sees: the file split on b"\\n", where a final b"\\n" adds no line and a last
    line without one counts; every line must be JSON (json.loads on its bytes) and, here, also valid UTF-8.
    """
    src = os.fspath(src)
    try:
        f = open(src, "rb")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise PackedDataError(f"{src}: no such JSONL file") from None
    chunks: list[np.ndarray] = []
    num_lines = 0
    pos = 0  # file offset of the first byte not yet assigned to a line
    carry = b""  # bytes after the last b"\n" seen: the start of a line not yet complete
    with f:
        while True:
            block = f.read(chunk_bytes)
            if not block:
                if not carry:
                    break
                lines, body, carry = [carry], carry, b""  # the last line, without b"\n"
            else:
                data = carry + block if carry else block
                lines = data.split(b"\n")
                carry = lines.pop()
                body = data[: len(data) - len(carry)]
            if not lines:
                continue
            _check_lines(src, lines, body, num_lines + 1)
            lengths = np.fromiter(map(len, lines), np.int64, len(lines))
            steps = lengths + 1  # each line and its b"\n"
            chunks.append(np.stack([pos + np.cumsum(steps) - steps, lengths], axis=1))
            num_lines += len(lines)
            pos += int(steps.sum())
    if num_lines == 0:
        raise JsonlError(f"{src}:1: file is empty (no JSON lines)")
    return np.concatenate(chunks)


def create_index(
    src: str | os.PathLike, dst: str | os.PathLike | None = None, file_existence_policy: str = "error"
) -> str | None:
    """Writes the .idx of a JSONL (default: next to it); returns its path, or None when skipped by the policy."""
    src = os.fspath(src)
    dst = os.fspath(dst) if dst is not None else default_index_path(src)
    if not check_output(dst, file_existence_policy, [src]):
        return None
    pairs_Nx2 = index_jsonl(src)
    write_idx(dst, pairs_Nx2)
    return dst
