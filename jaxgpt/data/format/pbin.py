"""The Modalities packed-data format: `.idx` (line index of a JSONL file) and `.pbin` (packed token stream).

Layout of a .pbin (all little-endian):

    offset 0            uint64  data_len: bytes in the data segment
    offset 8            uint32  token width in bytes: 1, 2 or 4
    offset 12           data segment: every document's tokens, concatenated in line order
    offset 12+data_len  pickle(list[tuple[int, int]]): per document (byte offset in the data segment, byte length)

Both pickles are untrusted input, read by pickles.py without ever running code and without building a Python list of
tuples (16 bytes per document instead of about 130); pickles.py also writes them byte-identical to Modalities'
`pickle.dumps(list_of_tuples, protocol=4)`.

Every output is written through `atomic_output` (atomic.py): to a temporary file in the destination's directory,
renamed into place only when complete, so an error, a crash, Ctrl-C or SIGTERM never leaves a partial .pbin or .idx.

This module imports only numpy and the standard library: the CLI tools import it and must start fast.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from collections.abc import Sequence

import numpy as np

from jaxgpt.data.format.pickles import load_pairs, write_pairs
from jaxgpt.errors import PackedDataError
from jaxgpt.io import atomic_output

HEADER_BYTES = 12  # uint64 data_len + uint32 token width
_HEADER = struct.Struct("<QI")
WIDTH_DTYPES = {1: np.dtype("<u1"), 2: np.dtype("<u2"), 4: np.dtype("<u4")}


def token_width(vocab_size: int) -> int:
    """Bytes per token for a base vocabulary of `vocab_size` ids: Modalities' ceil(log2(V) / 8), as 1, 2 or 4."""
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


class PbinWriter:
    """Streams documents into a .pbin: header placeholder, tokens as they come, then index and data_len at `close`.

    Use inside `atomic_output`; memory is 8 bytes per document (its token count) however large the data grows.
    """

    def __init__(self, path: str | os.PathLike, width: int):
        if width not in WIDTH_DTYPES:
            raise PackedDataError(f"token width must be 1, 2 or 4, got {width}")
        self.path = os.fspath(path)
        self.width = width
        self.dtype = WIDTH_DTYPES[width]
        self.f = open(self.path, "wb")
        self.f.write(_HEADER.pack(0, width))  # data_len is patched in close(), once it is known
        self.doc_lengths: list[np.ndarray] = []  # tokens per document, one array per write
        self.num_docs = 0
        self.num_tokens = 0

    def write(self, tokens: np.ndarray, doc_token_counts: np.ndarray) -> None:
        """Appends documents: `tokens` holds them back to back, `doc_token_counts` says how many tokens each has."""
        if tokens.dtype != self.dtype:
            raise PackedDataError(f"{self.path}: tokens of dtype {tokens.dtype}, expected {self.dtype}")
        counts = np.asarray(doc_token_counts, dtype=np.int64)
        if int(counts.sum()) != len(tokens):
            raise PackedDataError(f"{self.path}: document token counts sum to {counts.sum()}, got {len(tokens)} tokens")
        self.f.write(tokens.tobytes())
        self.doc_lengths.append(counts)
        self.num_docs += len(counts)
        self.num_tokens += len(tokens)

    def copy_data(self, src, num_bytes: int, doc_byte_lengths: np.ndarray, chunk_bytes: int = 16 << 20) -> None:
        """Appends `num_bytes` of already-encoded tokens read from the open file `src` (merge copies data segments)."""
        for start in range(0, num_bytes, chunk_bytes):
            self.f.write(src.read(min(chunk_bytes, num_bytes - start)))
        lengths = np.asarray(doc_byte_lengths, dtype=np.int64)
        self.doc_lengths.append(lengths // self.width)
        self.num_docs += len(lengths)
        self.num_tokens += num_bytes // self.width

    def close(self) -> None:
        """Writes the index pickle after the data and patches data_len into the header."""
        pairs_Nx2 = np.empty((self.num_docs, 2), np.int64)  # (byte offset, byte length); 16 bytes per document
        if self.doc_lengths:
            np.concatenate(self.doc_lengths, out=pairs_Nx2[:, 1])
        self.doc_lengths = []
        pairs_Nx2[:, 1] *= self.width
        np.cumsum(pairs_Nx2[:, 1], out=pairs_Nx2[:, 0])
        data_len = int(pairs_Nx2[-1, 0]) if len(pairs_Nx2) else 0
        pairs_Nx2[:, 0] -= pairs_Nx2[:, 1]
        write_pairs(self.f, pairs_Nx2)
        self.f.seek(0)
        self.f.write(_HEADER.pack(data_len, self.width))
        self.f.close()

    def abort(self) -> None:
        self.f.close()


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
            f"{path}: header says {data_len} data bytes but the file has only {file_size - HEADER_BYTES} after the"
            " header (truncated?)"
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
    if file_size == HEADER_BYTES + data_len:
        raise PackedDataError(f"{path}: no document index after the {data_len} data bytes (truncated?)")
    with open(path, "rb") as f:
        f.seek(HEADER_BYTES + data_len)
        doc_bytes = load_pairs(f, path)  # [num_docs, 2]
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
    return [(int(a), int(b)) for a, b in read_idx_array(path)]


def read_idx_array(path: str | os.PathLike) -> np.ndarray:
    """Loads a .idx safely as an [N, 2] int64 array of (byte offset, byte length) per JSONL line (16 bytes per line)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            return load_pairs(f, path)
    except FileNotFoundError:
        raise PackedDataError(f"{path}: no such index file") from None
    except IsADirectoryError:
        raise PackedDataError(f"{path}: is a directory, expected a .idx file") from None


def write_idx(path: str | os.PathLike, pairs_Nx2: np.ndarray) -> None:
    """Writes a .idx atomically, byte-identical to Modalities' `pickle.dumps(list_of_tuples)`."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        write_pairs(f, pairs_Nx2)


def merge_pbin(dst: str | os.PathLike, srcs: Sequence[str | os.PathLike], chunk_bytes: int = 16 << 20) -> PackedFile:
    """Concatenates .pbin files (current or legacy offsets) into `dst` with correct offsets; returns `dst` read back.

    Unlike Modalities' merge, which subtracts 12 bytes per preceding file from the offsets, every offset here is the
    document's true byte offset in the merged data segment.
    """
    if not srcs:
        raise PackedDataError("merge needs at least one input .pbin")
    files = [read_pbin(s) for s in srcs]
    widths = {f.width for f in files}
    if len(widths) > 1:
        detail = ", ".join(f"{f.path}: {f.width}" for f in files)
        raise PackedDataError(
            f"inputs have different token widths ({detail}); were they made with different tokenizers?"
        )
    dst = os.fspath(dst)
    for f in files:
        if os.path.exists(dst) and os.path.samefile(f.path, dst):
            raise PackedDataError(f"{dst}: the output is also an input")
    with atomic_output(dst) as tmp:
        writer = PbinWriter(tmp, files[0].width)
        try:
            for pf in files:
                with open(pf.path, "rb") as src:
                    src.seek(HEADER_BYTES)
                    writer.copy_data(src, pf.data_len, pf.doc_bytes[:, 1], chunk_bytes)
            writer.close()
        except BaseException:
            writer.abort()
            raise
    return read_pbin(dst)


def inspect(path: str | os.PathLike) -> tuple[dict, PackedFile | None]:
    """Header facts of a .pbin and its validation verdict: ({field: value}, the PackedFile or None when invalid)."""
    path = os.fspath(path)
    facts: dict = {"file": path}
    try:
        data_len, width, file_size = read_header(path)
        facts.update(file_bytes=file_size, data_len=data_len, token_width=width, num_tokens=data_len // width)
        facts["index_bytes"] = file_size - HEADER_BYTES - data_len
        pf = read_pbin(path)
    except PackedDataError as e:
        facts["verdict"] = f"INVALID: {e}"
        return facts, None
    facts["num_docs"] = pf.num_docs
    facts["format"] = "old (index offsets start at 12)" if pf.legacy_offsets else "current (index offsets start at 0)"
    facts["verdict"] = "valid"
    return facts, pf
