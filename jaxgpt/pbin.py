"""The Modalities packed-data format: `.idx` (line index of a JSONL file) and `.pbin` (packed token stream).

Layout of a .pbin (all little-endian):

    offset 0            uint64  data_len: bytes in the data segment
    offset 8            uint32  token width in bytes: 1, 2 or 4
    offset 12           data segment: every document's tokens, concatenated in line order
    offset 12+data_len  pickle(list[tuple[int, int]]): per document (byte offset in the data segment, byte length)

Both pickles are untrusted input: they are loaded by `load_pickled_pairs`, which admits only list, tuple and int and
never calls a constructor, so a payload that would run code is refused before anything runs.

This module imports only numpy and the standard library: the CLI tools import it and must start fast.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import struct

import numpy as np

HEADER_BYTES = 12  # uint64 data_len + uint32 token width
_HEADER = struct.Struct("<QI")
WIDTH_DTYPES = {1: np.dtype("<u1"), 2: np.dtype("<u2"), 4: np.dtype("<u4")}


class PackedDataError(ValueError):
    """A .idx/.pbin/.jsonl input is malformed; the message names the file and what is wrong."""


def token_width(vocab_size: int) -> int:
    """Bytes per token for a base vocabulary of `vocab_size` ids: Modalities' ceil(log2(V) / 8), widened to 1, 2 or 4."""
    if vocab_size < 1:
        raise PackedDataError(f"vocabulary size must be positive, got {vocab_size}")
    n = -(-(vocab_size - 1).bit_length() // 8)  # ceil(log2(V) / 8) on integers: ceil(log2 V) == (V-1).bit_length()
    if n <= 1:
        return 1
    if n == 2:
        return 2
    if n <= 4:
        return 4
    raise PackedDataError(f"vocabulary size {vocab_size} needs {n} bytes per token; the format allows at most 4")


class _PairsUnpickler(pickle.Unpickler):
    """Admits only the opcodes that build lists, tuples and ints: every global lookup (the road to code) is refused."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: only list, tuple and int are allowed")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refusing a persistent id: only list, tuple and int are allowed")


def load_pickled_pairs(data: bytes, where: str) -> list[tuple[int, int]]:
    """Unpickles a list of (int, int) tuples without ever running code; `where` names the source in errors."""
    try:
        obj = _PairsUnpickler(io.BytesIO(data)).load()
    except Exception as e:  # noqa: BLE001 - any failure of untrusted bytes is one clear error
        raise PackedDataError(f"{where}: index pickle is corrupt or not allowed ({type(e).__name__}: {e})") from None
    if not isinstance(obj, list):
        raise PackedDataError(f"{where}: index pickle holds a {type(obj).__name__}, expected a list of (offset, length)")
    for i, pair in enumerate(obj):
        if (
            type(pair) is not tuple
            or len(pair) != 2
            or type(pair[0]) is not int
            or type(pair[1]) is not int
            or pair[0] < 0
            or pair[1] < 0
        ):
            raise PackedDataError(f"{where}: index entry {i} is {pair!r}, expected a tuple of two non-negative ints")
    return obj


def dump_pairs(pairs: list[tuple[int, int]]) -> bytes:
    """Pickles the index exactly as Modalities does (protocol 4, plain Python ints)."""
    return pickle.dumps(pairs, protocol=4)


@dataclasses.dataclass(frozen=True)
class PackedFile:
    """A validated .pbin: its header, its document index and a lazy, read-only view of its tokens."""

    path: str
    data_len: int  # bytes in the data segment
    width: int  # bytes per token: 1, 2 or 4
    doc_bytes: np.ndarray  # [num_docs, 2] int64: (byte offset in the data segment, byte length) per document
    legacy_offsets: bool  # the file's index offsets started at 12 (Modalities before mid-2024); doc_bytes is corrected

    @property
    def dtype(self) -> np.dtype:
        return WIDTH_DTYPES[self.width]

    @property
    def num_tokens(self) -> int:
        return self.data_len // self.width

    @property
    def num_docs(self) -> int:
        return len(self.doc_bytes)

    def tokens(self) -> np.memmap:
        """All tokens, [num_tokens], memory-mapped read-only (nothing is read until it is sliced)."""
        return open_tokens(self.path, self.data_len, self.width)

    def document(self, i: int) -> np.ndarray:
        """Tokens of document i (0-based), as a copy."""
        if not 0 <= i < self.num_docs:
            raise PackedDataError(f"{self.path}: document {i} out of range, file has {self.num_docs} documents")
        offset, length = (int(x) for x in self.doc_bytes[i])
        return np.array(self.tokens()[offset // self.width : (offset + length) // self.width])


def read_header(path: str | os.PathLike) -> tuple[int, int, int]:
    """Returns (data_len, width, file_size) of a .pbin after checking that they agree with each other."""
    path = os.fspath(path)
    try:
        file_size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(HEADER_BYTES)
    except FileNotFoundError:
        raise PackedDataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise PackedDataError(f"{path}: is a directory, expected a .pbin file") from None
    if len(head) < HEADER_BYTES:
        raise PackedDataError(f"{path}: {file_size} bytes is too short for the 12-byte .pbin header (truncated?)")
    data_len, width = _HEADER.unpack(head)
    if width not in WIDTH_DTYPES:
        raise PackedDataError(f"{path}: token width {width} in the header; a .pbin has width 1, 2 or 4 (corrupt?)")
    if data_len % width:
        raise PackedDataError(f"{path}: data_len {data_len} is not a multiple of the token width {width} (corrupt?)")
    if HEADER_BYTES + data_len > file_size:
        raise PackedDataError(
            f"{path}: header says {data_len} data bytes but the file has only {file_size - HEADER_BYTES} after the header"
            " (truncated?)"
        )
    return data_len, width, file_size


def open_tokens(path: str | os.PathLike, data_len: int, width: int) -> np.memmap:
    """Read-only memmap of the token segment; cheap, so each worker process can open its own."""
    dtype = WIDTH_DTYPES[width]
    if data_len == 0:
        return np.zeros((0,), dtype)
    return np.memmap(os.fspath(path), dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(data_len // width,))


def read_pbin(path: str | os.PathLike) -> PackedFile:
    """Opens and fully validates a .pbin (header, index pickle, index against data_len); reads no tokens."""
    path = os.fspath(path)
    data_len, width, file_size = read_header(path)
    with open(path, "rb") as f:
        f.seek(HEADER_BYTES + data_len)
        tail = f.read()
    if not tail:
        raise PackedDataError(f"{path}: no document index after the {data_len} data bytes (truncated?)")
    pairs = load_pickled_pairs(tail, path)
    doc_bytes = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)  # [num_docs, 2]
    legacy = False
    if len(doc_bytes) and doc_bytes[0, 0] == HEADER_BYTES and doc_bytes[-1].sum() == data_len + HEADER_BYTES:
        doc_bytes = doc_bytes - np.array([HEADER_BYTES, 0])  # old writers stored absolute file offsets
        legacy = True
    _check_index(path, doc_bytes, data_len, width)
    return PackedFile(path=path, data_len=data_len, width=width, doc_bytes=doc_bytes, legacy_offsets=legacy)


def _check_index(path: str, doc_bytes: np.ndarray, data_len: int, width: int) -> None:
    """The index must tile the data segment: contiguous from 0, whole tokens, ending at data_len."""
    if len(doc_bytes) == 0:
        if data_len:
            raise PackedDataError(f"{path}: empty document index but data_len is {data_len}")
        return
    offsets, lengths = doc_bytes[:, 0], doc_bytes[:, 1]
    ends = offsets + lengths
    if offsets[0] != 0:
        raise PackedDataError(f"{path}: first document starts at byte {offsets[0]}, expected 0")
    gaps = np.flatnonzero(offsets[1:] != ends[:-1])
    if len(gaps):
        i = int(gaps[0]) + 1
        raise PackedDataError(
            f"{path}: document {i} starts at byte {offsets[i]} but document {i - 1} ends at byte {ends[i - 1]}"
        )
    if ends[-1] != data_len:
        raise PackedDataError(f"{path}: documents end at byte {ends[-1]} but data_len is {data_len}")
    odd = np.flatnonzero(lengths % width)
    if len(odd):
        i = int(odd[0])
        raise PackedDataError(f"{path}: document {i} has {lengths[i]} bytes, not a multiple of the token width {width}")


def read_idx(path: str | os.PathLike) -> list[tuple[int, int]]:
    """Loads a .idx (pickled list of (byte offset, byte length) per JSONL line) safely."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise PackedDataError(f"{path}: no such index file") from None
    if not data:
        raise PackedDataError(f"{path}: index file is empty")
    return load_pickled_pairs(data, path)
