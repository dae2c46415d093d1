"""Shuffled chunks of a multi-file corpus, one per job or host, byte-identical to Modalities 0.5.0 for the same seed.

    create_pbin_chunk    chunk `chunk_id` of `num_chunks` of every .pbin in a file list -> one shuffled .pbin
    create_jsonl_chunk   the same for the lines of JSONL files -> one shuffled .jsonl

What Modalities does and jaxgpt keeps: the list file names one input per line, each stripped, given the suffix
.pbin (or .jsonl) and put under the root directory; every file is cut into `num_chunks` contiguous runs of documents
(lines), the first `n % num_chunks` runs one longer; chunk c takes run c of every file, in list order, and is shuffled
with `numpy.random.default_rng(seed).shuffle`, where seed = (sha256(str(global_seed)) + sha256(str(chunk_id))) as
integers, mod 2**32 - 1.

Where jaxgpt diverges from Modalities on purpose:
- Memory: the index of one file at a time and the chunk's, documents copied one at a time (ranges.py); Modalities
  reads every file whole.
- `chunk_id` outside 0..num_chunks-1 and `num_chunks` < 1 are refused before anything is read (Modalities computes
  runs at negative offsets for a negative chunk_id).
- A file with fewer documents than `num_chunks` gives one document to each of its first n chunks and none to the
  others (Modalities does the same, silently; here a note on stderr names it). A chunk left with no document at all
  is an error, and nothing is written.
- The output may not be an input or the list (also through a link); Modalities, under `override`, deletes an output
  that is also an input before it notices.
- A JSONL whose last line has no b"\\n" gets it, instead of being glued to the next line (see shuffle.py).
- Blank lines of the list file are skipped; Modalities fails on them.
- Without a global seed, one is drawn and printed (shuffle.draw_seed); the output is then reproducible.

This module imports only numpy and the standard library.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import sys

import numpy as np

from jaxgpt.data.format.pbin import HEADER_BYTES, read_pbin
from jaxgpt.data.prepare.index import check_output
from jaxgpt.data.prepare.ranges import DEFAULT_BUFFER_BYTES, copy_to_file, copy_to_pbin, line_ranges
from jaxgpt.data.prepare.shuffle import draw_seed, refuse_same_file
from jaxgpt.errors import ConfigError, PackedDataError, check_int


def chunk_range(num_items: int, num_chunks: int, chunk_id: int) -> tuple[int, int]:
    """[start, end) of chunk `chunk_id`: the first `num_items % num_chunks` chunks hold one item more than the rest."""
    size, longer = divmod(num_items, num_chunks)
    start = chunk_id * size + min(chunk_id, longer)
    return start, start + size + (chunk_id < longer)


def chunk_seed(global_seed: int, chunk_id: int) -> int:
    """The chunk's shuffle seed: the sum of the sha256 of the decimal strings of both, as integers, mod 2**32 - 1."""
    digests = (hashlib.sha256(str(x).encode("utf-8")).hexdigest() for x in (global_seed, chunk_id))
    return sum(int(d, 16) for d in digests) % (2**32 - 1)


def numpy_permutation(n: int, seed: int) -> np.ndarray:
    """[n] int64 perm: `default_rng(seed).shuffle(items)` leaves items[perm[k]] at position k, for a list or an array.

    Generator.shuffle draws the same swaps for a list as for a 1-d array of the same length.
    """
    perm = np.arange(n, dtype=np.int64)
    np.random.default_rng(seed).shuffle(perm)
    return perm


def read_file_list(list_path: str | os.PathLike, root: str | os.PathLike, suffix: str) -> list[str]:
    """The list's inputs: per non-blank line, root / Path(line.strip()).with_suffix(suffix); each must exist."""
    list_path = os.fspath(list_path)
    try:
        with open(list_path, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise PackedDataError(f"{list_path}: no such file list") from None
    except UnicodeDecodeError as e:
        raise PackedDataError(f"{list_path}: not UTF-8 text (byte {e.start})") from None
    paths = []
    for lineno, line in enumerate(lines, 1):
        name = line.strip()
        if not name:
            continue
        try:
            path = pathlib.Path(root) / pathlib.Path(name).with_suffix(suffix)
        except ValueError:
            raise PackedDataError(f"{list_path}:{lineno}: {name!r} is not a file name") from None
        if not path.is_file():
            raise PackedDataError(f"{list_path}:{lineno}: {path} does not exist (from {name!r})")
        paths.append(str(path))
    if not paths:
        raise PackedDataError(f"{list_path}: the file list names no files")
    return paths


def _check_chunk_args(chunk_id: int, num_chunks: int) -> None:
    check_int("--num_chunks", num_chunks)
    if not 0 <= chunk_id < num_chunks:
        raise ConfigError(f"--chunk_id must be in 0..{num_chunks - 1} for --num_chunks {num_chunks}, got {chunk_id}")


def _prepare(dst: str, list_path: str, paths: list[str], chunk_id: int, num_chunks: int, policy: str) -> bool:
    """Checks the arguments and applies the file existence policy; False when the work is skipped."""
    _check_chunk_args(chunk_id, num_chunks)
    refuse_same_file(dst, [list_path, *paths])
    return check_output(dst, policy, [list_path, *paths])


def _take_run(path: str, ranges_Nx2: np.ndarray, num_chunks: int, chunk_id: int) -> np.ndarray:
    """The chunk's run of one file's ranges; says so when the file has fewer items than chunks."""
    if len(ranges_Nx2) < num_chunks:
        print(
            f"{path}: {len(ranges_Nx2)} documents for {num_chunks} chunks: chunks {len(ranges_Nx2)}..{num_chunks - 1}"
            " get none of them",
            file=sys.stderr,
        )
    start, end = chunk_range(len(ranges_Nx2), num_chunks, chunk_id)
    return ranges_Nx2[start:end]


def _shuffled(runs: list[np.ndarray], paths: list[str], chunk_id: int, global_seed: int | None):
    """(file ids, ranges) of the runs, concatenated in list order and shuffled with the chunk's seed."""
    file_ids_N = np.concatenate([np.full(len(r), i, np.int64) for i, r in enumerate(runs)])
    ranges_Nx2 = np.concatenate(runs)
    if len(ranges_Nx2) == 0:
        raise PackedDataError(
            f"chunk {chunk_id} has no documents: the {len(paths)} input(s) hold too few for this many chunks"
            f" ({paths[0]}{', ...' if len(paths) > 1 else ''})"
        )
    global_seed = draw_seed("--global_seed") if global_seed is None else global_seed
    perm = numpy_permutation(len(ranges_Nx2), chunk_seed(global_seed, chunk_id))
    return file_ids_N[perm], ranges_Nx2[perm]


def create_pbin_chunk(
    list_path: str | os.PathLike,
    root: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    chunk_id: int,
    num_chunks: int,
    file_existence_policy: str = "error",
    global_seed: int | None = None,
    buffer_bytes: int = DEFAULT_BUFFER_BYTES,
) -> str | None:
    """Writes chunk `chunk_id` of the listed .pbin files, shuffled, to `dst`; None when skipped by the policy."""
    list_path, dst = os.fspath(list_path), os.fspath(dst)
    paths = read_file_list(list_path, root, ".pbin")
    if not _prepare(dst, list_path, paths, chunk_id, num_chunks, file_existence_policy):
        return None
    files = [read_pbin(p) for p in paths]
    if len({f.width for f in files}) > 1:
        detail = ", ".join(f"{f.path}: {f.width}" for f in files)
        raise PackedDataError(
            f"inputs have different token widths ({detail}); were they made with different tokenizers?"
        )
    runs = [_take_run(f.path, f.doc_bytes + (HEADER_BYTES, 0), num_chunks, chunk_id) for f in files]
    file_ids_N, ranges_Nx2 = _shuffled(runs, paths, chunk_id, global_seed)
    copy_to_pbin(dst, paths, file_ids_N, ranges_Nx2, files[0].width, buffer_bytes)
    return dst


def create_jsonl_chunk(
    list_path: str | os.PathLike,
    root: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    chunk_id: int,
    num_chunks: int,
    file_existence_policy: str = "error",
    global_seed: int | None = None,
    buffer_bytes: int = DEFAULT_BUFFER_BYTES,
) -> str | None:
    """Writes chunk `chunk_id` of the lines of the listed JSONL files, shuffled, to `dst`; None when skipped."""
    list_path, dst = os.fspath(list_path), os.fspath(dst)
    paths = read_file_list(list_path, root, ".jsonl")
    if not _prepare(dst, list_path, paths, chunk_id, num_chunks, file_existence_policy):
        return None
    runs = [_take_run(p, line_ranges(p, buffer_bytes), num_chunks, chunk_id) for p in paths]
    file_ids_N, ranges_Nx2 = _shuffled(runs, paths, chunk_id, global_seed)
    copy_to_file(dst, paths, file_ids_N, ranges_Nx2, buffer_bytes)
    return dst
