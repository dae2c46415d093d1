"""The Modalities packed-data format: `.idx` (line index of a JSONL file) and `.pbin` (packed token stream).

Layout of a .pbin (all little-endian):

    offset 0            uint64  data_len: bytes in the data segment
    offset 8            uint32  token width in bytes: 1, 2 or 4
    offset 12           data segment: every document's tokens, concatenated in line order
    offset 12+data_len  pickle(list[tuple[int, int]]): per document (byte offset in the data segment, byte length)

Both pickles are untrusted input: they are loaded by `load_pickled_pairs`, which admits only list, tuple and int and
never calls a constructor, so a payload that would run code is refused before anything runs.

Index pickles are read and written without building a Python list of tuples (about 130 bytes per document, which
for 20M documents would be 2.6 GB): `write_pairs` emits exactly the bytes of `pickle.dumps(list_of_tuples, protocol=4)`
from numpy arrays, and `load_pairs` streams a pickle into an [N, 2] int64 array (16 bytes per document).

Every output is written to a temporary file in the destination's directory and renamed into place only when complete
(`atomic_output`), so an error, a crash, Ctrl-C or SIGTERM never leaves a partial .pbin or .idx behind.

This module imports only numpy and the standard library: the CLI tools import it and must start fast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import os
import pickle
import re
import signal
import struct
import threading
from collections.abc import Iterator, Sequence

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
    """Refuses every global lookup and persistent id, the only roads to code; all other opcodes are admitted.

    What is left builds only builtin values (lists, tuples, ints, but also dicts, strings, floats...): the callers
    check the types of what comes out.
    """

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
        raise PackedDataError(
            f"{where}: index pickle holds a {type(obj).__name__}, expected a list of (offset, length)"
        )
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


class _PairsSink:
    """Receives the index pickle's APPENDS batches (the C unpickler calls `extend` on a non-list) as int64 arrays."""

    def __init__(self, where: str):
        self.where = where
        self.chunks: list[np.ndarray] = []
        self.count = 0

    def extend(self, items: list) -> None:
        # set(map(...)) runs in C: about 50 us per batch of 1000 pairs, no per-pair Python bytecode.
        if items and (
            set(map(type, items)) != {tuple}
            or set(map(len, items)) != {2}
            or set(map(type, itertools.chain.from_iterable(items))) != {int}
        ):
            bad = next(
                i for i, p in enumerate(items) if type(p) is not tuple or len(p) != 2 or {type(x) for x in p} != {int}
            )
            raise PackedDataError(
                f"{self.where}: index entry {self.count + bad} is {items[bad]!r}, expected a tuple of two non-negative ints"
            )
        try:
            pairs_Nx2 = np.array(items, dtype=np.int64).reshape(-1, 2)
        except OverflowError:
            raise _int64_overflow(self.where, items, self.count) from None
        if len(pairs_Nx2) and pairs_Nx2.min() < 0:
            bad = int(np.flatnonzero((pairs_Nx2 < 0).any(axis=1))[0])
            raise PackedDataError(
                f"{self.where}: index entry {self.count + bad} is {items[bad]!r}, expected a tuple of two non-negative ints"
            )
        self.chunks.append(pairs_Nx2)
        self.count += len(pairs_Nx2)

    def array(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros((0, 2), np.int64)


def _int64_overflow(where: str, pairs: list, first: int) -> PackedDataError:
    """The error for pairs (entries first.. of an index) of which one holds an int that does not fit in int64."""
    i, pair = next((i, p) for i, p in enumerate(pairs) if max(p) >= 2**63)
    return PackedDataError(
        f"{where}: index entry {first + i} is {pair!r}: {max(pair)} does not fit in int64 (corrupt?)"
    )


class _SinkUnpickler(_PairsUnpickler):
    """The restricted unpickler whose one persistent id (ours, injected at the start of the stream) is the sink."""

    def __init__(self, file, sink: _PairsSink):
        super().__init__(file)
        self.sink = sink
        self.handed_out = False

    def persistent_load(self, pid):
        if pid is not None or self.handed_out:
            raise pickle.UnpicklingError("refusing a persistent id: only list, tuple and int are allowed")
        self.handed_out = True
        return self.sink


class _PrefixedReader(io.RawIOBase):
    """`prefix` followed by the rest of `f`, as one read-only stream (what the unpickler reads from)."""

    def __init__(self, prefix: bytes, f):
        self.prefix = prefix
        self.f = f

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.prefix:
            n = min(len(b), len(self.prefix))
            b[:n] = self.prefix[:n]
            self.prefix = self.prefix[n:]
            return n
        data = self.f.read(len(b))
        b[: len(data)] = data
        return len(data)

    def readline(self, size=-1) -> bytes:
        out = bytearray()
        while size < 0 or len(out) < size:
            c = self.read(1)
            if not c:
                break
            out += c
            if c == b"\n":
                break
        return bytes(out)


# How every list pickle by CPython (protocol 4) starts: PROTO 4, optionally FRAME <uint64 length>, EMPTY_LIST, MEMOIZE.
_LIST_HEAD_FRAMED = re.compile(rb"\x80\x04\x95[\x00-\xff]{8}\]\x94")
_LIST_HEAD_PLAIN = b"\x80\x04]\x94"
# Our replacement: PROTO 4, NONE, BINPERSID (-> the sink), MEMOIZE (keeps the memo numbering of the original list).
_SINK_HEAD = b"\x80\x04NQ\x94"


def load_pairs(f, where: str) -> np.ndarray:
    """Reads a pickled list of (int, int) from binary file `f` up to its end into an [N, 2] int64 array, safely.

    The stream's list is replaced by a sink that converts each batch of 1000 pairs as it arrives, so memory stays at
    16 bytes per pair; pickles that do not start like CPython's protocol-4 list fall back to `load_pickled_pairs`.
    Bytes after the pickle's STOP are an error (a corrupt or concatenated file), as is anything but list/tuple/int.
    """
    head = f.read(13)
    if not head:
        raise PackedDataError(f"{where}: index pickle is missing (0 bytes)")
    if _LIST_HEAD_FRAMED.fullmatch(head):
        rest = b""
    elif head.startswith(_LIST_HEAD_PLAIN):
        rest = head[len(_LIST_HEAD_PLAIN) :]
    else:
        pairs = load_pickled_pairs(head + f.read(), where)
        try:
            return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        except OverflowError:
            raise _int64_overflow(where, pairs, 0) from None
    sink = _PairsSink(where)
    stream = io.BufferedReader(_PrefixedReader(_SINK_HEAD + rest, f), buffer_size=1 << 16)
    try:
        obj = _SinkUnpickler(stream, sink).load()
    except PackedDataError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of untrusted bytes is one clear error
        raise PackedDataError(f"{where}: index pickle is corrupt or not allowed ({type(e).__name__}: {e})") from None
    if obj is not sink:
        raise PackedDataError(
            f"{where}: index pickle holds a {type(obj).__name__}, expected a list of (offset, length)"
        )
    trailing = len(stream.read())  # the BufferedReader may have read ahead: count what the unpickler left
    if trailing:
        raise PackedDataError(f"{where}: {trailing} unexpected bytes after the index pickle (corrupt or concatenated?)")
    return sink.array()


_FRAME_TARGET = 64 * 1024  # CPython's pickle commits a frame at the first save() that starts past 64 KiB
_PAIRS_PER_CHUNK = 1_000_000  # a multiple of the pickler's APPENDS batch (1000) so batches never straddle chunks


def _int_opcodes(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[n, 10] uint8 opcode + payload and [n] byte counts, as CPython pickles each non-negative int of `v`."""
    n = len(v)
    raw_Nx8 = v.astype("<u8").view(np.uint8).reshape(n, 8)
    ops_Nx10 = np.zeros((n, 10), np.uint8)
    nbytes = np.empty(n, np.int64)
    k1 = v <= 0xFF  # BININT1
    k2 = (v > 0xFF) & (v <= 0xFFFF)  # BININT2
    k4 = (v > 0xFFFF) & (v < 2**31)  # BININT (signed 32 bit)
    kl = v >= 2**31  # LONG1: little-endian two's complement with one sign bit to spare
    ops_Nx10[k1, 0], ops_Nx10[k1, 1], nbytes[k1] = ord("K"), raw_Nx8[k1, 0], 2
    ops_Nx10[k2, 0], ops_Nx10[k2, 1:3], nbytes[k2] = ord("M"), raw_Nx8[k2, :2], 3
    ops_Nx10[k4, 0], ops_Nx10[k4, 1:5], nbytes[k4] = ord("J"), raw_Nx8[k4, :4], 5
    if kl.any():
        vl = v[kl]
        long_len = 1 + sum((vl >= 2 ** (8 * k - 1)).astype(np.int64) for k in range(1, 8))  # bit_length // 8 + 1
        ops_Nx10[kl, 0], ops_Nx10[kl, 1], ops_Nx10[kl, 2:] = 0x8A, long_len, raw_Nx8[kl]
        nbytes[kl] = 2 + long_len
    return ops_Nx10, nbytes


def write_pairs(f, pairs_Nx2: np.ndarray) -> int:
    """Writes `pickle.dumps([(a, b), ...], protocol=4)` of the rows, byte for byte, without building the list.

    CPython pickles a list as EMPTY_LIST MEMOIZE, then (for 2+ items) MARK <= 1000 items APPENDS per batch, or the one
    item and APPEND; each pair is <int><int> TUPLE2 MEMOIZE. Frames (FRAME <uint64 length>) are cut at the first save()
    (the start of an int) that begins 64 KiB or more past the frame start; a final frame under 4 bytes gets no header.
    Returns the bytes written. tests/test_pbin.py checks this against pickle.dumps on many shapes and magnitudes.
    """
    pairs_Nx2 = np.asarray(pairs_Nx2, dtype=np.int64).reshape(-1, 2)
    n = len(pairs_Nx2)
    if n and pairs_Nx2.min() < 0:
        raise PackedDataError(f"index pairs must be non-negative, got minimum {pairs_Nx2.min()}")
    written = 0

    def emit(frame: bytes) -> None:
        nonlocal written
        if len(frame) >= 4:
            f.write(b"\x95" + struct.pack("<Q", len(frame)))
            written += 9
        f.write(frame)
        written += len(frame)

    f.write(b"\x80\x04")
    written += 2
    pending = [b"]\x94"]  # bytes of the current frame not yet written
    frame_start = 0  # positions count from the first byte after PROTO
    pos = 2
    for c0 in range(0, n, _PAIRS_PER_CHUNK):
        chunk_Mx2 = pairs_Nx2[c0 : c0 + _PAIRS_PER_CHUNK]
        m = len(chunk_Mx2)
        i = np.arange(c0, c0 + m)
        a_ops, a_len = _int_opcodes(chunk_Mx2[:, 0])
        b_ops, b_len = _int_opcodes(chunk_Mx2[:, 1])
        mark = (i % 1000 == 0) & (n > 1)
        tail_Mx3 = np.empty((m, 3), np.uint8)
        tail_Mx3[:, 0], tail_Mx3[:, 1] = 0x86, 0x94  # TUPLE2, MEMOIZE
        tail_Mx3[:, 2] = ord("a") if n == 1 else ord("e")  # APPEND (one item) or APPENDS (end of a batch)
        tail_len = 2 + ((i % 1000 == 999) | (i == n - 1)).astype(np.int64)
        rows_Mx24 = np.concatenate([np.full((m, 1), ord("("), np.uint8), a_ops, b_ops, tail_Mx3], axis=1)
        keep_Mx24 = np.concatenate(
            [
                mark[:, None],
                np.arange(10) < a_len[:, None],
                np.arange(10) < b_len[:, None],
                np.arange(3) < tail_len[:, None],
            ],
            axis=1,
        )
        body = rows_Mx24[keep_Mx24].tobytes()
        row_len = mark + a_len + b_len + tail_len
        a_start = pos + np.cumsum(row_len) - row_len + mark
        saves = np.stack([a_start, a_start + a_len], axis=1).ravel()  # where each int's save() begins
        while True:
            k = int(np.searchsorted(saves, frame_start + _FRAME_TARGET))
            if k == len(saves):
                break
            cut = int(saves[k])
            pending.append(body[max(frame_start - pos, 0) : cut - pos])
            emit(b"".join(pending))
            pending, frame_start = [], cut
        pending.append(body[max(frame_start - pos, 0) :])
        pos += len(body)
    pending.append(b".")  # STOP
    emit(b"".join(pending))
    return written


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
