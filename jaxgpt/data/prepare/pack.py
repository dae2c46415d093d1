"""Indexed JSONL -> .pbin, byte-identical to Modalities 0.5.0 for clean input, streaming, in parallel, and strict.

    pack_jsonl   the lines the .idx names -> jq pattern -> tokenizer (tokenize.py) -> EOD-once -> .pbin, in line order

What Modalities does and jaxgpt keeps: the lines the .idx names, as index.py reads them; text = the jq pattern's first
result; ids as HF tokenizers gives them with default special-token handling; the EOD id appended only when the
document's last token is not already EOD; token width from the base vocabulary size; pickles of lists of tuples,
protocol 4.

Where jaxgpt diverges from Modalities on purpose:
- A line Modalities cannot pack (jq yields null or a non-string, empty text, a token id too large for the width,
  invalid JSON or UTF-8 behind a stale index) makes Modalities drop its whole processing batch and, through the
  in-order writer, every later document: its .pbin comes out valid but silently truncated. jaxgpt stops with
  `path:line: reason` and writes nothing, or with `skip_faulty_lines` skips exactly those lines and reports them.
- Modalities maps an unknown EOD token to the unknown-token id (for GPT-2 that is <|endoftext|> itself), silently;
  jaxgpt refuses it.
- Surrogates encoded as UTF-8 bytes: see index.py, which refuses them where Modalities' index lets them through.
- Outputs are written to a temporary file and renamed when complete, so `override` keeps the old file until the new
  one is whole, and a crash, Ctrl-C or SIGTERM leaves nothing partial. (Modalities' merge offsets: see
  `pbin.merge_pbin`.)

Memory is bounded independently of the input: the JSONL is read in chunks, tokens are written as they come, and per
document only 8 bytes (its token count) are kept until the index pickle is written, streamed, at the end (+16 bytes per
line for the .idx): 20M documents cost about 0.5 GB at the peak, where a Python list of tuples would cost about 2.6 GB.

Imports no jax (the CLI tools in tools/ are thin wrappers over this module).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import multiprocessing
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from jaxgpt.data.format.pbin import WIDTH_DTYPES, PbinWriter, read_idx_array
from jaxgpt.data.prepare.index import (
    EMPTY_LINE,
    JsonlError,
    LineFault,
    check_output,
    decode_line,
    default_index_path,
    default_pbin_path,
    json_fault,
    parse_json,
)
from jaxgpt.data.tokenize import PLAIN, Encoding, Tokenizer, load_tokenizer
from jaxgpt.errors import PackedDataError, check_int
from jaxgpt.io import atomic_output

_SIMPLE_PATH = re.compile(r"(\.[A-Za-z_][A-Za-z0-9_]*)+")


class _Extractor:
    """The text of a JSONL line under a jq pattern: json + key lookups for `.a.b` patterns (jq's semantics), else jq.

    Each line is its own jq input, as in Modalities. A pattern that yields several values gives its first result, as
    Modalities' `.first()` does (docs/packed-format.md: "jq semantics, first result"); further results are ignored.
    """

    def __init__(self, pattern: str):
        self.pattern = pattern
        self.keys = pattern[1:].split(".") if _SIMPLE_PATH.fullmatch(pattern) else None
        if self.keys is None:
            import jq

            try:
                self.program = jq.compile(pattern)
            except ValueError as e:
                raise PackedDataError(f"jq pattern {pattern!r} does not compile: {e}") from None

    def __call__(self, raw: bytes) -> str:
        if not raw:
            raise LineFault(EMPTY_LINE)
        line = decode_line(raw)
        value = self._jq_first(line) if self.keys is None else self._lookup(line)
        if value is None:
            raise LineFault(f"jq pattern {self.pattern!r} yields null")
        if not isinstance(value, str):
            raise LineFault(
                f"jq pattern {self.pattern!r} yields a value of type {type(value).__name__}, expected a string"
            )
        if self.keys is not None and not value.isascii():
            value = _as_jq_reads_surrogates(value)
        return value

    def _jq_first(self, line: str):
        """The compiled jq program's first result on the line."""
        try:
            return self.program.input_text(line).first()  # first result only, as Modalities; the rest is ignored
        except StopIteration:
            raise LineFault(f"jq pattern {self.pattern!r} yields nothing") from None
        except ValueError as e:
            raise LineFault(f"jq pattern {self.pattern!r} fails: {e}") from None

    def _lookup(self, line: str):
        """The `.a.b` pattern's value by key lookups in the parsed line, as jq would find it."""
        # jq skips one UTF-8 BOM at the start of its input, and Modalities gives jq one line at a time, so a BOM
        # at the start of any line is dropped (the index accepts it: json.loads on bytes strips it too).
        value = parse_json(line.removeprefix("\ufeff"))
        for key in self.keys:
            if isinstance(value, dict):
                value = value.get(key)
            elif value is not None:  # jq: null.key is null, but indexing a number/string/array is an error
                raise LineFault(
                    f"jq pattern {self.pattern!r} fails: cannot index a {type(value).__name__} with {key!r}"
                )
        return value


_HIGH_SURROGATE = re.compile("[\ud800-\udbff]")
_LOW_SURROGATE = re.compile("[\udc00-\udfff]")


def _as_jq_reads_surrogates(text: str) -> str:
    """`text` from json.loads as jq would have parsed it: a lone low surrogate escape becomes U+FFFD, a lone high one
    is an error. (json.loads pairs a high escape with a following low one as jq does; any surrogate left is lone.)"""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    if (high := _HIGH_SURROGATE.search(text)) is not None:
        raise LineFault(f"text holds an unpaired high surrogate {high.group()!r} (jq refuses it)")
    return _LOW_SURROGATE.sub("\ufffd", text)


@dataclasses.dataclass
class _WorkerSpec:
    src: str
    tokenizer: Tokenizer
    jq_pattern: str
    eod_id: int
    width: int
    quiet_hf_threads: bool  # several worker processes: HF's own thread pool would only oversubscribe the cores


_WORKER: tuple[_WorkerSpec, _Extractor, object] | None = None


def _init_worker(spec: _WorkerSpec) -> None:
    global _WORKER
    if spec.quiet_hf_threads:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER = (spec, _Extractor(spec.jq_pattern), open(spec.src, "rb"))  # each process reads its own lines


def _init_pool_worker(spec: _WorkerSpec) -> None:
    # Ctrl-C reaches the whole process group: the main process alone handles it (and stops the workers), so the
    # workers print no tracebacks. A forked worker also inherits the main process's SIGTERM handler: undo it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _init_worker(spec)


def _worker_death(src: str, executor: ProcessPoolExecutor) -> PackedDataError:
    """The error for a pool whose worker died; waits for the pool to wind down so that the exit codes are known."""
    workers = list((getattr(executor, "_processes", None) or {}).values())  # private, but only it knows the exit codes
    executor.shutdown(wait=True)
    # The pool SIGTERMs the surviving workers once one has died: the other codes are the cause.
    codes = sorted({w.exitcode for w in workers} - {None, 0, -signal.SIGTERM})
    how = ", ".join(
        f"killed by {signal.Signals(-c).name}" if c < 0 and -c in signal.valid_signals() else f"exit code {c}"
        for c in codes
    )
    # A kill by a signal (SIGKILL above all) is most often the kernel's out-of-memory killer.
    likely = ", most likely for lack of memory; try fewer --num_processes" if any(c < 0 for c in codes) else ""
    return PackedDataError(
        f"{src}: a packing worker process died ({how or 'exit code unknown'}){likely}; nothing was written."
    )


def _unindexed_json_line(src: str, start: int, first_line_no: int) -> int | None:
    """Line number of the first line from byte `start` on that parses as JSON (one Modalities' index would keep).

    Blank lines and lines an index made with Modalities' drop_faulty_entries leaves out do not count.
    """
    with open(src, "rb") as f:
        f.seek(start)
        for k, line in enumerate(f):
            line = line.removesuffix(b"\n")
            if line.strip() and json_fault(line) is None:
                return first_line_no + k
    return None


def _encode_lines(first: int, entries_Mx2: np.ndarray) -> tuple[int, np.ndarray, np.ndarray, list]:
    """Index entries first.. -> (first, tokens of the good lines back to back, tokens per good line,
    [(entry, fault)])."""
    spec, extract, f = _WORKER
    lines = _read_lines(f, entries_Mx2)
    faults: list[tuple[int, str]] = []
    texts, entries = [], []
    for k, raw in enumerate(lines):
        try:
            texts.append(extract(raw))
            entries.append(first + k)
        except LineFault as e:
            faults.append((first + k, str(e)))
    ids = spec.tokenizer.encode_batch(texts)
    counts = np.fromiter(map(len, ids), np.int64, len(ids))
    limit = 256**spec.width - 1
    bad = counts == 0  # Modalities: "empty sample"
    flat = np.concatenate(ids) if ids else np.zeros(0, np.uint32)
    if len(flat) and int(flat.max()) > limit:
        ends = np.cumsum(counts)
        for pos in np.flatnonzero(flat > limit):
            doc = int(np.searchsorted(ends, pos, side="right"))
            if not bad[doc]:
                bad[doc] = True
                faults.append(
                    (entries[doc], f"token id {flat[pos]} does not fit the token width of {spec.width} bytes")
                )
    for doc in np.flatnonzero(counts == 0):
        faults.append((entries[doc], "text is empty (no tokens)"))
    if bad.any():
        keep = ~bad
        counts = counts[keep]
        flat = np.concatenate([a for a, b in zip(ids, bad) if not b]) if keep.any() else np.zeros(0, np.uint32)
    ends = np.cumsum(counts)
    need_eod = flat[ends - 1] != spec.eod_id if len(counts) else np.zeros(0, bool)  # EOD once: not after an EOD
    flat = np.insert(flat, ends[need_eod], spec.eod_id)
    faults.sort()
    return first, flat.astype(WIDTH_DTYPES[spec.width]), counts + need_eod, faults


def _line_numbers(src: str, offsets: list[int], chunk_bytes: int = 32 << 20) -> dict[int, int]:
    """1-based line number of each byte offset, by counting b"\\n" before it in one pass."""
    want = sorted(set(offsets))
    found: dict[int, int] = {}
    newlines, pos, i = 0, 0, 0
    with open(src, "rb") as f:
        while i < len(want):
            block = f.read(chunk_bytes)
            while i < len(want) and want[i] <= pos + len(block):
                found[want[i]] = newlines + block.count(b"\n", 0, want[i] - pos) + 1
                i += 1
            if not block:
                break
            newlines += block.count(b"\n")
            pos += len(block)
    return found


@dataclasses.dataclass
class PackReport:
    """What pack_jsonl wrote: counts, the lines it skipped (1-based line, reason) and how long it took."""

    dst: str
    num_docs: int
    num_tokens: int
    width: int
    backend: str
    skipped: list[tuple[int, str]]
    seconds: float
    blocker: str | None = None  # why the tiktoken fast path was not taken (backend "auto" on HF)


def _batches(index_Nx2: np.ndarray, batch_bytes: int):
    """(first entry, [num, 2] slice of the index) in index order, about batch_bytes of JSONL each."""
    ends = np.cumsum(index_Nx2[:, 1])
    i, n = 0, len(index_Nx2)
    while i < n:
        j = min(max(int(np.searchsorted(ends, ends[i] - index_Nx2[i, 1] + batch_bytes, side="right")), i + 1), n)
        yield i, index_Nx2[i:j]
        i = j


def _read_lines(f, entries_Mx2: np.ndarray) -> list[bytes]:
    """The lines an index slice names, with one seek+read when they lie close together (the usual case)."""
    offsets, lengths = entries_Mx2[:, 0].tolist(), entries_Mx2[:, 1].tolist()
    lo, hi = min(offsets), max(o + n for o, n in zip(offsets, lengths))
    if hi - lo <= 2 * sum(lengths) + (1 << 20):
        f.seek(lo)
        buf = f.read(hi - lo)
        return [buf[o - lo : o - lo + n] for o, n in zip(offsets, lengths)]
    lines = []
    for o, n in zip(offsets, lengths):  # an index that jumps around: read each line on its own
        f.seek(o)
        lines.append(f.read(n))
    return lines


def pack_jsonl(
    src: str | os.PathLike,
    dst: str | os.PathLike | None = None,
    *,
    tokenizer_file: str | os.PathLike,
    jq_pattern: str,
    eod_token: str = "<|endoftext|>",
    index_path: str | os.PathLike | None = None,
    num_processes: int | None = None,
    skip_faulty_lines: bool = False,
    file_existence_policy: str = "error",
    tokenizer_backend: str = "auto",
    encoding: Encoding = PLAIN,
    progress: bool = True,
    batch_bytes: int = 1 << 20,
) -> PackReport | None:
    """Tokenizes the JSONL lines named by its .idx and packs them into a .pbin; None when skipped by the policy."""
    t0 = time.perf_counter()
    src = os.fspath(src)
    index_path = os.fspath(index_path) if index_path is not None else default_index_path(src)
    dst = os.fspath(dst) if dst is not None else default_pbin_path(src)
    if not os.path.isfile(src):
        raise PackedDataError(f"{src}: no such JSONL file")
    num_processes = _check_num_processes(num_processes)
    if not check_output(dst, file_existence_policy, [src, index_path]):
        return None
    tokenizer, eod_id = _load_tokenizer_with_eod(tokenizer_file, tokenizer_backend, eod_token, encoding)
    _Extractor(jq_pattern)  # compile errors surface here, before any worker starts
    index_Nx2 = read_idx_array(index_path)
    contiguous = _check_index_fits(src, index_path, index_Nx2)
    spec = _WorkerSpec(src, tokenizer, jq_pattern, eod_id, tokenizer.width, quiet_hf_threads=num_processes > 1)
    line_of = functools.partial(_entry_lines, src, index_Nx2[:, 0], contiguous)
    writer, skipped = _write_pbin(
        dst,
        spec,
        index_Nx2,
        line_of,
        num_processes=num_processes,
        skip_faulty_lines=skip_faulty_lines,
        progress=progress,
        batch_bytes=batch_bytes,
        t0=t0,
    )
    _print_summary(src, dst, writer.num_docs, skipped)
    return PackReport(
        dst=dst,
        num_docs=writer.num_docs,
        num_tokens=writer.num_tokens,
        width=tokenizer.width,
        backend=tokenizer.backend,
        skipped=skipped,
        seconds=time.perf_counter() - t0,
        blocker=tokenizer.blocker,
    )


def _check_num_processes(num_processes: int | None) -> int:
    """The number of worker processes: all CPUs when None; 0 or less is refused."""
    if num_processes is None:
        return os.cpu_count() or 1
    return check_int("--num_processes", num_processes)  # 0 must not quietly mean "all CPUs"


def _load_tokenizer_with_eod(
    tokenizer_file: str | os.PathLike, backend: str, eod_token: str, encoding: Encoding
) -> tuple[Tokenizer, int]:
    """The tokenizer and the id of its EOD token, which must exist and fit the token width."""
    tokenizer = load_tokenizer(tokenizer_file, backend, encoding)
    eod_id = tokenizer.token_id(eod_token)
    if eod_id is None:
        raise PackedDataError(
            f"{tokenizer.path}: unknown EOD token {eod_token!r} (not in the vocabulary or added tokens)"
        )
    if eod_id >= 256**tokenizer.width:
        raise PackedDataError(f"EOD token {eod_token!r} has id {eod_id}, too large for {tokenizer.width}-byte tokens")
    return tokenizer, eod_id


def _check_index_fits(src: str, index_path: str, index_Nx2: np.ndarray) -> bool:
    """Refuses an index that is stale or for another file; returns whether it names every line (entry k = line k+1)."""
    file_size = os.path.getsize(src)
    if len(index_Nx2):
        past = np.flatnonzero(index_Nx2.sum(axis=1) > file_size)
        if len(past):
            k = int(past[0])
            raise PackedDataError(
                f"{index_path}: entry {k} (offset {index_Nx2[k, 0]}, length {index_Nx2[k, 1]}) reaches past the end of"
                f" {src} ({file_size} bytes): the index is stale or belongs to another file"
            )
    offsets = index_Nx2[:, 0]
    contiguous = len(offsets) == 0 or (offsets[0] == 0 and np.array_equal(offsets[1:], index_Nx2[:-1].sum(axis=1) + 1))
    if contiguous and len(offsets):
        # An index of every line (what create_memmap_index writes) must reach the file's last line; only the final
        # b"\n" or blank (or non-JSON) lines may follow it. A JSON line after it is data the index would drop.
        covered = int(index_Nx2[-1].sum())
        line_no = _unindexed_json_line(src, covered, len(offsets)) if covered < file_size else None
        if line_no is not None:
            raise PackedDataError(
                f"{index_path}: index covers bytes 0..{covered} of the {file_size} of {src}, but line {line_no} after"
                " them holds JSON: it is stale or for another file; re-run create_memmap_index"
            )
    return bool(contiguous)


def _entry_lines(src: str, offsets: np.ndarray, contiguous: bool, entries: list[int]) -> dict[int, int]:
    """1-based JSONL line number of each index entry: entry + 1 for an index of every line, else counted in `src`."""
    if contiguous:
        return {e: e + 1 for e in entries}
    by_offset = _line_numbers(src, [int(offsets[e]) for e in entries])
    return {e: by_offset[int(offsets[e])] for e in entries}


def _write_pbin(
    dst: str,
    spec: _WorkerSpec,
    index_Nx2: np.ndarray,
    line_of: Callable[[list[int]], dict[int, int]],
    *,
    num_processes: int,
    skip_faulty_lines: bool,
    progress: bool,
    batch_bytes: int,
    t0: float,
) -> tuple[PbinWriter, list[tuple[int, str]]]:
    """Encodes every batch of the index and writes the .pbin atomically; returns the closed writer and skipped lines."""
    src = spec.src
    skipped: list[tuple[int, str]] = []
    pbar = None
    with atomic_output(dst) as tmp:
        writer = PbinWriter(tmp, spec.width)
        pool = None
        try:
            pool = _start_workers(spec, num_processes)
            from tqdm import tqdm

            pbar = tqdm(
                total=len(index_Nx2),
                unit="doc",
                desc=f"packing {os.path.basename(src)}",
                file=sys.stderr,
                disable=not progress,
                mininterval=0.5,
            )

            def consume(result) -> None:
                first, tokens, counts, faults = result
                if faults:
                    lines = line_of([e for e, _ in faults])
                    if not skip_faulty_lines:
                        entry, reason = faults[0]
                        raise JsonlError(f"{src}:{lines[entry]}: {reason}")
                    skipped.extend((lines[e], reason) for e, reason in faults)
                writer.write(tokens, counts)
                pbar.update(len(counts) + len(faults))
                elapsed = time.perf_counter() - t0
                pbar.set_postfix_str(f"{writer.num_tokens / elapsed / 1e6:.2f}M tok/s", refresh=False)

            _run_batches(src, index_Nx2, batch_bytes, pool, num_processes, consume)
            writer.close()
        except BaseException:
            writer.abort()
            if pool is not None:
                _terminate_workers(pool)
            raise
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            elif _WORKER is not None:
                _WORKER[2].close()
            if pbar is not None:
                pbar.close()
    return writer, skipped


def _start_workers(spec: _WorkerSpec, num_processes: int) -> ProcessPoolExecutor | None:
    """A pool of `num_processes` encoding workers; for one, None, and this process becomes the worker."""
    if num_processes == 1:
        _init_worker(spec)
        return None
    # fork: workers inherit the loaded tokenizer instead of rebuilding it (~0.5 s each). But a process that already
    # runs JAX's threads (a notebook, the tests) can deadlock its forked children: spawn there.
    fork_ok = "fork" in multiprocessing.get_all_start_methods() and "jax" not in sys.modules
    ctx = multiprocessing.get_context("fork" if fork_ok else "spawn")
    # Not multiprocessing.Pool: it replaces a worker that dies (say, killed for memory) and waits forever for the lost
    # batch; this pool fails the batch with BrokenProcessPool.
    return ProcessPoolExecutor(num_processes, mp_context=ctx, initializer=_init_pool_worker, initargs=(spec,))


def _terminate_workers(pool: ProcessPoolExecutor) -> None:
    # Stop now rather than finish batches nobody will read. Python 3.14 has pool.terminate_workers().
    for worker in list((getattr(pool, "_processes", None) or {}).values()):
        worker.terminate()


def _run_batches(
    src: str,
    index_Nx2: np.ndarray,
    batch_bytes: int,
    pool: ProcessPoolExecutor | None,
    num_processes: int,
    consume: Callable[[tuple], None],
) -> None:
    """Encodes the index's batches here (no pool) or on the pool, and hands each result to `consume` in index order."""
    if pool is None:
        for first, entries in _batches(index_Nx2, batch_bytes):
            consume(_encode_lines(first, entries))
        return
    in_flight = collections.deque()  # bounded: the reader never runs more than 2 batches per worker ahead
    try:
        for first, entries in _batches(index_Nx2, batch_bytes):
            in_flight.append(pool.submit(_encode_lines, first, entries))
            if len(in_flight) >= 2 * num_processes:
                consume(in_flight.popleft().result())  # in submission order: the output order
        while in_flight:
            consume(in_flight.popleft().result())
    except BrokenProcessPool:
        raise _worker_death(src, pool) from None


def _print_summary(src: str, dst: str, num_docs: int, skipped: list[tuple[int, str]]) -> None:
    """Tells stderr when nothing was written, and which lines were skipped (the first 20)."""
    if not num_docs:
        print(f"{dst}: no documents were written (empty input, or every line skipped)", file=sys.stderr)
    if skipped:
        shown = "\n".join(f"  {src}:{line}: {reason}" for line, reason in skipped[:20])
        more = f"\n  ... and {len(skipped) - 20} more" if len(skipped) > 20 else ""
        print(f"skipped {len(skipped)} faulty line(s):\n{shown}{more}", file=sys.stderr)
