"""Byte ranges of files copied in any order into a new file, one range at a time: the shuffles' copy engine.

The shuffles and the chunk tools write documents in an order unrelated to their order on disk. `copy_ranges` copies
(file, byte offset, byte length) ranges, in order, to the end of an open file: by `os.copy_file_range`, which copies
inside the kernel (1 GB of 4 KB documents in random order: 0.9 s, against 2.3 s through a user-space buffer, on the
ext4 dev box), or, where the kernel cannot (another OS, a file system pair it refuses), by positioned reads into one
fixed buffer. Either way memory stays at the index plus that buffer whatever the data size, nothing is memory-mapped
(mapped file pages count in the process's RSS), and no single copy is larger than one document or the buffer.
`copy_to_pbin` and `copy_to_file` write a new .pbin or plain file from ranges, atomically.

`line_ranges` gives a text file's lines as Python's `readlines()` on the file in binary mode sees them.

This module imports only numpy and the standard library.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Iterator, Sequence

import numpy as np

from jaxgpt.data.format.pickles import write_pairs
from jaxgpt.errors import PackedDataError
from jaxgpt.io import atomic_output

DEFAULT_BUFFER_BYTES = 8 << 20  # the fallback copy's buffer, and the block of `line_ranges`' scan
_BLOCK_RANGES = 1 << 16  # ranges turned into Python ints at a time: 3 x 65,536 ints, never the whole index
# The errors of a kernel that cannot copy this pair of files (too old, other file systems, special files).
_NO_KERNEL_COPY = {errno.ENOSYS, errno.EXDEV, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF}
_PBIN_HEADER = struct.Struct("<QI")  # data_len, token width: pbin.py's header


class _Copier:
    """Copies ranges of the open `paths` to `dst_fd`; `kernel` turns False at the first range the kernel refuses."""

    def __init__(self, dst_fd: int, paths: Sequence[str], buffer_bytes: int, newline_at_eof: bool):
        if buffer_bytes < 1:
            raise PackedDataError(f"copy buffer must be at least 1 byte, got {buffer_bytes}")
        self.dst_fd, self.paths, self.fds = dst_fd, [os.fspath(p) for p in paths], []
        try:
            for p in self.paths:
                self.fds.append(os.open(p, os.O_RDONLY))
        except OSError as e:
            self.close()
            raise PackedDataError(f"{e.filename}: cannot open: {e.strerror}") from None
        self.sizes = [os.fstat(fd).st_size for fd in self.fds]
        self.newline_at_eof = newline_at_eof
        self.kernel = hasattr(os, "copy_file_range")
        self.buffer_bytes = buffer_bytes
        self.view: memoryview | None = None  # the fallback's buffer, allocated when first needed

    def copy(self, file: int, offset: int, length: int) -> None:
        end = offset + length
        newline = self.newline_at_eof and end == self.sizes[file] + 1  # a last line without b"\n": add it
        left = self._copy_bytes(self.fds[file], offset, length - newline)
        if left:
            raise PackedDataError(
                f"{self.paths[file]}: file ends at byte {os.fstat(self.fds[file]).st_size}, but bytes up to {end}"
                " were expected (did it change while being read?)"
            )
        if newline:
            os.write(self.dst_fd, b"\n")

    def _copy_bytes(self, fd: int, offset: int, length: int) -> int:
        """Copies [offset, offset + length) of `fd` to the output; returns the bytes missing at the end of the file."""
        if self.kernel:
            try:
                while length and (n := os.copy_file_range(fd, self.dst_fd, length, offset)):
                    offset, length = offset + n, length - n
                return length
            except OSError as e:
                if e.errno not in _NO_KERNEL_COPY:
                    raise
                self.kernel = False  # from here on the fallback, from the first byte not yet copied
        if self.view is None:
            self.view = memoryview(bytearray(self.buffer_bytes))
        while length and (n := os.preadv(fd, [self.view[: min(length, len(self.view))]], offset)):
            written = 0
            while written < n:
                written += os.write(self.dst_fd, self.view[written:n])
            offset, length = offset + n, length - n
        return length

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def _iter_ranges(file_ids_N: np.ndarray, ranges_Nx2: np.ndarray) -> Iterator[tuple[int, int, int]]:
    for start in range(0, len(ranges_Nx2), _BLOCK_RANGES):
        stop = start + _BLOCK_RANGES
        yield from zip(file_ids_N[start:stop].tolist(), *ranges_Nx2[start:stop].T.tolist())


def copy_ranges(
    dst_fd: int,
    paths: Sequence[str],
    file_ids_N: np.ndarray,
    ranges_Nx2: np.ndarray,
    buffer_bytes: int = DEFAULT_BUFFER_BYTES,
    newline_at_eof: bool = False,
) -> None:
    """Appends range k = bytes [offset, offset + length) of `paths[file_ids[k]]`, for k in order, at `dst_fd`.

    With `newline_at_eof`, a range ending one byte past the end of its file gets b"\\n" as that byte (a JSONL's last
    line without one: see `line_ranges`).
    """
    copier = _Copier(dst_fd, paths, buffer_bytes, newline_at_eof)
    try:
        for file, offset, length in _iter_ranges(np.asarray(file_ids_N), np.asarray(ranges_Nx2)):
            copier.copy(file, offset, length)
    finally:
        copier.close()


def copy_to_pbin(
    dst: str, paths: Sequence[str], file_ids_N: np.ndarray, ranges_Nx2: np.ndarray, width: int, buffer_bytes: int
) -> None:
    """Writes a .pbin whose documents are the ranges (token bytes), in order, atomically; offsets start at 0.

    The data length is known before the first byte, so the header is written whole and the index pickle (what
    pbin.PbinWriter writes: Modalities' bytes) follows the data.
    """
    lengths_N = np.asarray(ranges_Nx2[:, 1], np.int64)
    pairs_Nx2 = np.stack([np.cumsum(lengths_N) - lengths_N, lengths_N], axis=1)  # (new offset, length)
    with atomic_output(dst) as tmp, open(tmp, "wb") as f:
        f.write(_PBIN_HEADER.pack(int(lengths_N.sum()), width))
        f.flush()  # the copies append at the descriptor's offset, after the header
        copy_ranges(f.fileno(), paths, file_ids_N, ranges_Nx2, buffer_bytes)
        write_pairs(f, pairs_Nx2)


def copy_to_file(
    dst: str, paths: Sequence[str], file_ids_N: np.ndarray, ranges_Nx2: np.ndarray, buffer_bytes: int
) -> None:
    """Writes the ranges, in order, into a plain file atomically (the unterminated last line of a JSONL gets b"\\n")."""
    with atomic_output(dst) as tmp, open(tmp, "wb") as f:
        copy_ranges(f.fileno(), paths, file_ids_N, ranges_Nx2, buffer_bytes, newline_at_eof=True)


def line_ranges(path: str, block_bytes: int = DEFAULT_BUFFER_BYTES) -> np.ndarray:
    """[num_lines, 2] int64 (byte offset, byte length with its b"\\n") of each line, as `readlines()` splits them.

    Lines end after each b"\\n" (a b"\\r" stays in its line, a blank line is a line). A last line without b"\\n" is
    given length + 1, so that its range reaches one byte past the end: `copy_ranges(newline_at_eof=True)` writes that
    byte as b"\\n", and a copied last line never runs into the line written after it. 16 bytes per line.
    """
    ends: list[np.ndarray] = []  # one past each b"\n"
    size = 0
    try:
        f = open(path, "rb")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise PackedDataError(f"{path}: no such file") from None
    with f:
        while block := f.read(block_bytes):
            ends.append(np.flatnonzero(np.frombuffer(block, np.uint8) == 0x0A) + (size + 1))
            size += len(block)
    ends_N = np.concatenate(ends) if ends else np.zeros((0,), np.int64)
    if size and (len(ends_N) == 0 or ends_N[-1] != size):
        ends_N = np.append(ends_N, size + 1)  # the unterminated last line, with its synthetic b"\n"
    starts_N = np.concatenate([[0], ends_N[:-1]]).astype(np.int64) if len(ends_N) else ends_N
    return np.stack([starts_N, ends_N - starts_N], axis=1).astype(np.int64)
