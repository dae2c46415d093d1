"""Index pickles, read and written safely and without building a Python list of tuples.

Both pickles of the format (the .idx, and the index at the end of a .pbin) hold a list of (int, int) tuples and are
untrusted input: they are loaded by `load_pickled_pairs` or `load_pairs`, which admit only list, tuple and int and
never call a constructor, so a payload that would run code is refused before anything runs.

A Python list of tuples costs about 130 bytes per document, which for 20M documents would be 2.6 GB: `write_pairs`
emits exactly the bytes of `pickle.dumps(list_of_tuples, protocol=4)` from numpy arrays, and `load_pairs` streams a
pickle into an [N, 2] int64 array (16 bytes per document).

This module imports only numpy and the standard library.
"""

from __future__ import annotations

import io
import itertools
import pickle
import re
import struct

import numpy as np

from jaxgpt.errors import PackedDataError


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
                f"{self.where}: index entry {self.count + bad} is {items[bad]!r}, expected a tuple of two"
                " non-negative ints"
            )
        try:
            pairs_Nx2 = np.array(items, dtype=np.int64).reshape(-1, 2)
        except OverflowError:
            raise _int64_overflow(self.where, items, self.count) from None
        if len(pairs_Nx2) and pairs_Nx2.min() < 0:
            bad = int(np.flatnonzero((pairs_Nx2 < 0).any(axis=1))[0])
            raise PackedDataError(
                f"{self.where}: index entry {self.count + bad} is {items[bad]!r}, expected a tuple of two"
                " non-negative ints"
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


def _chunk_opcodes(chunk_Mx2: np.ndarray, c0: int, n: int, pos: int) -> tuple[bytes, np.ndarray]:
    """The pickle bytes of rows c0.. (of n in all) that start at stream position `pos`, and [2M] where each int's
    save() begins (the only places a frame may be cut)."""
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
    return body, saves


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
        body, saves = _chunk_opcodes(pairs_Nx2[c0 : c0 + _PAIRS_PER_CHUNK], c0, n, pos)
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
