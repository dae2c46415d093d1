"""Shuffles a .pbin's documents or a JSONL's lines, byte-identical to Modalities 0.5.0 for the same seed, streaming.

    shuffle_pbin    .pbin -> .pbin: same header, documents in the new order, index pickle of their new offsets
    shuffle_jsonl   .jsonl -> .jsonl: the lines, as `readlines()` splits them, in the new order

What Modalities does and jaxgpt keeps: the new order is `random.Random(seed).shuffle` of the whole document (or line)
list; JSONL lines are shuffled as bytes (blank lines included, nothing parsed); a .pbin's index pickle is a list of
tuples, protocol 4, with offsets from 0.

Where jaxgpt diverges from Modalities on purpose:
- Memory: Modalities reads the whole file (`f.read()`, `readlines()`); here it is the index (16 bytes per document,
  about 60 at the peak with the permutation and the new index), as documents are copied one at a time inside the
  kernel, or through one fixed buffer where it cannot (ranges.py).
- Without a seed, a seed is drawn and printed, so that the output can be reproduced with `--seed`.
- A JSONL whose last line has no b"\\n": Modalities glues that line to the line after it in the new order (two
  documents on one line); here it gets its b"\\n" (the only case where the bytes differ).
- A .pbin with old offset-12 index offsets: Modalities reads them as data-segment offsets and copies every document
  12 bytes early; here they are corrected (pbin.read_pbin).
- An input without documents or lines is an error; so is an output that is the input (also through a link). The
  output is written atomically: `override` keeps the old file until the new one is complete (Modalities deletes it
  first).

This module imports only numpy and the standard library.
"""

from __future__ import annotations

import array
import os
import random
import secrets
import sys

import numpy as np

from jaxgpt.data.format.pbin import HEADER_BYTES, read_pbin
from jaxgpt.data.prepare.index import check_output
from jaxgpt.data.prepare.ranges import DEFAULT_BUFFER_BYTES, copy_to_file, copy_to_pbin, line_ranges
from jaxgpt.errors import PackedDataError


def python_permutation(n: int, seed: int) -> np.ndarray:
    """[n] int64: position k of the shuffled list holds item perm[k], for `random.Random(seed).shuffle` of any list.

    The shuffle's swaps depend only on the length and the seed, so shuffling 0..n-1 gives the permutation; an
    int64 array.array keeps it at 8 bytes per item (a list of ints would cost about 36).
    """
    perm = array.array("q", range(n))
    random.Random(seed).shuffle(perm)
    return np.frombuffer(perm, dtype=np.int64)


def draw_seed(flag: str) -> int:
    """A fresh seed, printed so that the run can be repeated (Modalities shuffles unseeded, and cannot be)."""
    seed = secrets.randbits(32)
    print(f"no {flag} given: drew {flag} {seed} (pass it to reproduce this output)", file=sys.stderr)
    return seed


def refuse_same_file(dst: str, inputs: list[str]) -> None:
    """The output must be none of the inputs, by path or by file (a link or a second name of it)."""
    for p in inputs:
        same = os.path.abspath(p) == os.path.abspath(dst)
        if not same and os.path.exists(dst) and os.path.exists(p):
            same = os.path.samefile(p, dst)
        if same:
            raise PackedDataError(f"{dst}: the output is also an input ({p})")


def shuffle_pbin(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    seed: int | None = None,
    file_existence_policy: str = "error",
    buffer_bytes: int = DEFAULT_BUFFER_BYTES,
) -> int | None:
    """Writes `src`'s documents in `Random(seed)` order to `dst`; returns the seed, or None when skipped."""
    src, dst = os.fspath(src), os.fspath(dst)
    refuse_same_file(dst, [src])
    if not check_output(dst, file_existence_policy, [src]):
        return None
    pf = read_pbin(src)
    if pf.num_docs == 0:
        raise PackedDataError(f"{src}: has no documents, nothing to shuffle")
    seed = draw_seed("--seed") if seed is None else seed
    ranges_Nx2 = pf.doc_bytes[python_permutation(pf.num_docs, seed)]  # (offset, length) in the new order
    ranges_Nx2[:, 0] += HEADER_BYTES  # data-segment offsets -> file offsets
    copy_to_pbin(dst, [src], np.zeros(len(ranges_Nx2), np.int64), ranges_Nx2, pf.width, buffer_bytes)
    return seed


def shuffle_jsonl(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    seed: int | None = None,
    file_existence_policy: str = "error",
    buffer_bytes: int = DEFAULT_BUFFER_BYTES,
) -> int | None:
    """Writes `src`'s lines in `Random(seed)` order to `dst`; returns the seed, or None when skipped by the policy."""
    src, dst = os.fspath(src), os.fspath(dst)
    refuse_same_file(dst, [src])
    if not check_output(dst, file_existence_policy, [src]):
        return None
    lines_Nx2 = line_ranges(src, buffer_bytes)
    if len(lines_Nx2) == 0:
        raise PackedDataError(f"{src}: file is empty, nothing to shuffle")
    seed = draw_seed("--seed") if seed is None else seed
    ranges_Nx2 = lines_Nx2[python_permutation(len(lines_Nx2), seed)]
    copy_to_file(dst, [src], np.zeros(len(ranges_Nx2), np.int64), ranges_Nx2, buffer_bytes)
    return seed
