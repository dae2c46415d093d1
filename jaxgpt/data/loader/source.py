"""Training windows over one or more .pbin files: a Grain random-access data source, in numpy alone.

Window i of a file with T tokens and sequence length S is `tokens[i*S : i*S + S + 1]` (S + 1 tokens), for
i < N = (T - 1) // S. This is Modalities' `PackedMemMapDatasetContinuous(block_size=S + 1, reuse_last_target=True)`:
neighbouring windows share one token, documents are crossed freely and the tail is dropped.
With `reuse_last_target=False` the windows are disjoint blocks, `tokens[i*(S+1) : (i+1)*(S+1)]` for i < T // (S + 1):
Modalities' `reuse_last_target=False` for its sequence_length S + 1 (its model then sees S tokens, as here). That is
the instruction-tuning layout: conversations padded to S + 1 tokens are one window each, and the first token of a
window is never a target. Several files are joined
like Modalities' `CombinedDataset`: each file is windowed on its own, then the window lists are concatenated, so no
window spans two files.

Imports only numpy and the standard library: Grain reads the source through its protocol (`__len__`, `__getitem__`,
`_getitems`), so this module needs no grain, and `from jaxgpt import PackedWindowSource` pays for no jax.
Grain 0.2.18's `MapDataset.source(src).shuffle(...).batch(...)` calls `__getitem__` once per window: its `batch` calls
the batched `_getitems` only behind an experiment flag that its release leaves off. So `__getitem__` is a scalar path
of its own (one pread, one bound check, one conversion), and `_getitems` serves the datasets that do call it.
"""

from __future__ import annotations

import bisect
import operator
import os
import threading
import weakref
from collections.abc import Sequence

import numpy as np

from jaxgpt.data.format.pbin import HEADER_BYTES, WIDTH_DTYPES, read_header
from jaxgpt.errors import ConfigError, PackedDataError, check_int


class PackedWindowSource:
    """Random access to int32 windows of S + 1 tokens; picklable, thread-safe, files opened lazily per process.

    Windows are read with positioned reads (os.pread, os.preadv), not through a memmap: every page a memmap touches
    counts in the process's resident set, which then grew with the data read (6.5 GB after 20,000 batches of a 10 GB
    .pbin); a read's pages stay in the kernel's page cache, outside the process (bench/memory.py)."""

    def __init__(
        self,
        paths: str | os.PathLike | Sequence[str | os.PathLike],
        seq_len: int,
        vocab_size: int | None = None,
        reuse_last_target: bool = True,
    ):
        """`vocab_size`: when given, every window read is checked to hold only ids below it (a file packed with
        another tokenizer must not reach the embedding lookup, which would clamp or NaN instead of failing).
        `reuse_last_target`: overlapping windows (True) or disjoint blocks (False), module docstring."""
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self.paths = tuple(os.fspath(p) for p in paths)
        if not self.paths:
            raise ConfigError("PackedWindowSource needs at least one .pbin path, got none")
        self.seq_len = int(check_int("seq_len", seq_len))
        self.vocab_size = None if vocab_size is None else int(check_int("vocab_size", vocab_size))
        self.reuse_last_target = bool(reuse_last_target)
        self.stride = self.seq_len if reuse_last_target else self.seq_len + 1  # tokens from one window to the next

        data_lens, widths, windows = [], [], []
        for path in self.paths:
            data_len, width, _ = read_header(path)
            num_tokens = data_len // width
            num_windows = max(num_tokens - (self.seq_len + 1 - self.stride), 0) // self.stride
            if num_windows < 1:
                raise PackedDataError(
                    f"{path}: {num_tokens} tokens hold no window of seq_len + 1 = {self.seq_len + 1} tokens;"
                    f" lower seq_len to at most {max(num_tokens - 1, 0)} or use more data"
                )
            if widths and width != widths[0]:
                raise PackedDataError(
                    f"{path}: token width {width} bytes differs from {self.paths[0]} ({widths[0]} bytes);"
                    " pack every file with the same tokenizer"
                )
            data_lens.append(data_len)
            widths.append(width)
            windows.append(num_windows)
        self.width = widths[0]  # bytes per token on disk, the same for every file
        self._data_lens = tuple(data_lens)
        self.windows_per_file = tuple(windows)
        self.num_tokens = sum(d // self.width for d in data_lens)  # all tokens on disk, tails included
        # first_window[f] = global index of file f's window 0; first_window[-1] = len(self)
        self._first_window = np.concatenate([[0], np.cumsum(windows)]).astype(np.int64)
        # For __getitem__, which Grain calls once per window: the same as Python ints, and the constants of one read.
        self._first_window_list = self._first_window.tolist()
        self._window_bytes, self._stride_bytes = (self.seq_len + 1) * self.width, self.stride * self.width
        self._disk_dtype = WIDTH_DTYPES[self.width]
        self._id_limit = _id_limit(self.width, self.vocab_size)
        self._fds: list[int] | None = None  # per file, a read-only descriptor of this process (_open)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._first_window_list[-1]

    def __repr__(self) -> str:
        disjoint = "" if self.reuse_last_target else ", reuse_last_target=False"
        return f"PackedWindowSource(paths={self.paths!r}, seq_len={self.seq_len}{disjoint})"

    def __getstate__(self) -> dict:
        # Worker processes open the files themselves: a file handle or a lock does not travel through pickle.
        state = self.__dict__.copy()
        state["_fds"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _open(self) -> list[int]:
        if self._fds is None:
            with self._lock:
                if self._fds is None:
                    fds = []
                    weakref.finalize(self, _close, fds)  # closed with the source, also if a later open fails
                    fds.extend(_open_reader(path) for path in self.paths)
                    self._fds = fds
        return self._fds

    def __getitem__(self, i: int) -> np.ndarray:
        """Window i: int32 [seq_len + 1]. Anything off the fast path (a bad index, an id at or past the limit, a
        short read) is read again by read_windows, which raises its precise error: one place words every error."""
        try:
            i = operator.index(i)
        except TypeError:
            return self.read_windows(np.asarray([i]))[0]
        f = bisect.bisect_right(self._first_window_list, i) - 1
        if i < 0 or f >= len(self.paths):
            return self.read_windows(np.asarray([i]))[0]
        offset = HEADER_BYTES + (i - self._first_window_list[f]) * self._stride_bytes
        data = os.pread((self._fds or self._open())[f], self._window_bytes, offset)
        if len(data) != self._window_bytes:
            return self.read_windows(np.asarray([i]))[0]
        raw_W = np.frombuffer(data, self._disk_dtype)  # [S + 1], read-only over the bytes object
        if self._id_limit is not None and raw_W.max() >= self._id_limit:
            return self.read_windows(np.asarray([i]))[0]
        return raw_W.astype(np.int32)

    def _getitems(self, indices: Sequence[int]) -> list[np.ndarray]:
        """Grain's batched read (`SupportsBatchedReadRandomAccessDataSource`): rows of one read_windows array."""
        return list(self.read_windows(np.asarray(indices)))

    __getitems__ = _getitems  # the same batched read under the name PyTorch's DataLoader looks for

    def read_windows(self, indices: np.ndarray) -> np.ndarray:
        """Windows at `indices` (any int array of shape [n]) stacked into int32 [n, seq_len + 1]."""
        indices = np.asarray(indices)
        if indices.ndim != 1 or (indices.size and indices.dtype.kind not in "iu"):
            raise IndexError(f"window indices must be a 1-D int array, got dtype {indices.dtype} shape {indices.shape}")
        n = len(self)
        if indices.size and (indices.min() < 0 or indices.max() >= n):
            bad = indices[(indices < 0) | (indices >= n)][0]
            raise IndexError(f"window {int(bad)} out of range: {self!r} has {n} windows")
        if len(self._first_window) == 2:
            file_of = np.zeros(len(indices), np.int64)
        else:
            file_of = np.searchsorted(self._first_window, indices, side="right") - 1  # [n]
        out_NxW = self._read(file_of, indices - self._first_window[file_of]).astype(np.int32)
        if self.width == 4 and out_NxW.min(initial=0) < 0:
            # A uint32 id >= 2**31 wrapped negative in int32: refuse rather than train on wrong ids.
            f = int(file_of[np.flatnonzero((out_NxW < 0).any(axis=1))[0]])
            raise PackedDataError(f"{self.paths[f]}: token id >= 2**31 does not fit int32 (corrupt file?)")
        if self.vocab_size is not None and out_NxW.max(initial=0) >= self.vocab_size:
            row = int(np.flatnonzero((out_NxW >= self.vocab_size).any(axis=1))[0])
            f, token = int(file_of[row]), int(out_NxW[row].max())
            raise PackedDataError(
                f"{self.paths[f]}: window {int(indices[row])} holds token id {token} >= model.vocab_size="
                f"{self.vocab_size} (packed with another tokenizer?)"
            )
        return out_NxW

    def _read(self, file_of: np.ndarray, windows: np.ndarray) -> np.ndarray:
        """Window windows[r] of file file_of[r] into row r of [n, S + 1] tokens of the files' width."""
        fds, S, width = self._open(), self.seq_len, self.width
        raw_NxW = np.empty((len(windows), S + 1), WIDTH_DTYPES[width])
        for row, (f, i) in enumerate(zip(file_of.tolist(), windows.tolist())):
            offset = HEADER_BYTES + i * self.stride * width  # window i starts at token i * stride
            got = os.preadv(fds[f], [raw_NxW[row]], offset)
            if got != raw_NxW[row].nbytes:
                size = os.fstat(fds[f]).st_size
                raise PackedDataError(
                    f"{self.paths[f]}: window {i} ends at byte {offset + raw_NxW[row].nbytes}, past the file's "
                    f"{size} bytes (truncated while in use?)"
                )
        return raw_NxW


def _id_limit(width: int, vocab_size: int | None) -> int | None:
    """The smallest raw id __getitem__ must refuse (vocab_size, or 2**31 for int32), None if no id of `width` is."""
    limits = [vocab_size] if vocab_size is not None else []
    if width == 4:
        limits.append(2**31)  # a uint32 id at or past it wraps negative in int32
    limit = min(limits, default=None)
    return None if limit is None or limit > np.iinfo(WIDTH_DTYPES[width]).max else limit


def _open_reader(path: str) -> int:
    """A read-only descriptor; a file gone since its header was read is a clean error."""
    try:
        return os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise PackedDataError(f"{path}: cannot open for reading: {e.strerror}") from None


def _close(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)
