"""JSONL -> .idx -> .pbin, byte-identical to Modalities 0.5.0 for clean input, streaming, in parallel, and strict.

    index_jsonl / create_index   one pass over the JSONL: (byte offset, byte length) per line, every line parsed as JSON
    pack_jsonl                   the index's lines -> jq pattern -> tokenizer -> EOD-once -> .pbin, written in line order

What Modalities does and jaxgpt keeps: lines split on b"\\n" only (a "\\r" stays in the line), a last line without
"\\n" counts, a final "\\n" adds no line; text = the jq pattern's first result; ids as HF tokenizers gives them with
default special-token handling; the EOD id appended only when the document's last token is not already EOD; token
width from the base vocabulary size; pickles of lists of tuples, protocol 4.

Where jaxgpt diverges from Modalities on purpose:
- A line Modalities cannot pack (jq yields null or a non-string, empty text, a token id too large for the width,
  invalid JSON or UTF-8 behind a stale index) makes Modalities drop its whole processing batch and, through the
  in-order writer, every later document: its .pbin comes out valid but silently truncated. jaxgpt stops with
  `path:line: reason` and writes nothing, or with `skip_faulty_lines` skips exactly those lines and reports them.
- Modalities maps an unknown EOD token to the unknown-token id (for GPT-2 that is <|endoftext|> itself), silently;
  jaxgpt refuses it.
- The index refuses surrogates encoded as UTF-8 bytes (b"\\xed\\xa0\\x80"): Modalities' index lets them through
  (json.loads decodes bytes with "surrogatepass") and its packer later drops the line (see above). Other invalid
  UTF-8 both indexes refuse alike.
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
import json
import multiprocessing
import os
import re
import signal
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from jaxgpt.pbin import WIDTH_DTYPES, PackedDataError, PbinWriter, atomic_output, read_idx_array, write_idx
from jaxgpt.tokenize import Tokenizer, load_tokenizer

FILE_EXISTENCE_POLICIES = ("error", "skip", "override")


class JsonlError(PackedDataError):
    """A line of a JSONL file cannot be indexed or packed; the message is `path:line: reason`."""


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


# ---------------------------------------------------------------------------------------------------------------- index


def _json_fault(line: bytes) -> str | None:
    """Why `line` is not a JSON document as Modalities' index accepts it (json.loads on the bytes), or None."""
    if not line.strip():
        return "empty line" if not line else "line holds only whitespace"
    try:
        json.loads(line)
    except json.JSONDecodeError as e:
        return f"invalid JSON: {e.msg} at column {e.colno}"
    except (UnicodeDecodeError, ValueError) as e:
        return f"invalid JSON: {e}"
    except RecursionError:  # json.loads recurses once per "[" or "{"; Modalities' index refuses such lines too
        return "invalid JSON: nesting too deep"
    return None


def _utf8_fault(line: bytes) -> str | None:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"invalid UTF-8 at byte {e.start} of the line ({line[e.start : e.start + 4]!r})"
    return None


def _check_lines(src: str, lines: list[bytes], body: bytes, first_line_no: int) -> None:
    """Raises JsonlError for the first line of `lines` (whose bytes `body` spans) that Modalities' index refuses."""
    try:  # one C-speed UTF-8 check for the whole block; the rare failure is then located line by line
        body.decode("utf-8")
    except UnicodeDecodeError:
        for k, line in enumerate(lines):
            if (fault := _utf8_fault(line)) is not None:
                raise JsonlError(f"{src}:{first_line_no + k}: {fault}") from None
    loads = json.loads
    for k, line in enumerate(lines):
        try:
            loads(line)
        except Exception:  # noqa: BLE001 - diagnosed again below for a precise message
            raise JsonlError(f"{src}:{first_line_no + k}: {_json_fault(line) or 'invalid JSON'}") from None


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


# ----------------------------------------------------------------------------------------------------------------- pack


_SIMPLE_PATH = re.compile(r"(\.[A-Za-z_][A-Za-z0-9_]*)+")


class _Fault(Exception):
    """One line cannot be packed; the message is the reason (the caller adds path and line)."""


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
            raise _Fault("empty line")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _Fault(f"invalid UTF-8 at byte {e.start} of the line ({raw[e.start : e.start + 4]!r})") from None
        if self.keys is None:
            try:
                value = self.program.input_text(line).first()  # first result only, as Modalities; the rest is ignored
            except StopIteration:
                raise _Fault(f"jq pattern {self.pattern!r} yields nothing") from None
            except ValueError as e:
                raise _Fault(f"jq pattern {self.pattern!r} fails: {e}") from None
        else:
            # jq skips one UTF-8 BOM at the start of its input, and Modalities gives jq one line at a time, so a BOM
            # at the start of any line is dropped (the index accepts it: json.loads on bytes strips it too).
            line = line.removeprefix("\ufeff")
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise _Fault(f"invalid JSON: {e.msg} at column {e.colno}") from None
            except ValueError as e:  # e.g. an integer of more than 4300 digits
                raise _Fault(f"invalid JSON: {e}") from None
            except RecursionError:
                raise _Fault("invalid JSON: nesting too deep") from None
            for key in self.keys:
                if isinstance(value, dict):
                    value = value.get(key)
                elif value is not None:  # jq: null.key is null, but indexing a number/string/array is an error
                    raise _Fault(
                        f"jq pattern {self.pattern!r} fails: cannot index a {type(value).__name__} with {key!r}"
                    )
        if value is None:
            raise _Fault(f"jq pattern {self.pattern!r} yields null")
        if not isinstance(value, str):
            raise _Fault(
                f"jq pattern {self.pattern!r} yields a value of type {type(value).__name__}, expected a string"
            )
        if self.keys is not None and not value.isascii():
            value = _as_jq_reads_surrogates(value)
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
        raise _Fault(f"text holds an unpaired high surrogate {high.group()!r} (jq refuses it)")
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
            if line.strip() and _json_fault(line) is None:
                return first_line_no + k
    return None


def _encode_lines(first: int, entries_Mx2: np.ndarray) -> tuple[int, np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """Index entries first.. -> (first, tokens of the good lines back to back, tokens per good line, [(entry, fault)])."""
    spec, extract, f = _WORKER
    lines = _read_lines(f, entries_Mx2)
    faults: list[tuple[int, str]] = []
    texts, entries = [], []
    for k, raw in enumerate(lines):
        try:
            texts.append(extract(raw))
            entries.append(first + k)
        except _Fault as e:
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
    if num_processes is None:
        num_processes = os.cpu_count() or 1
    elif num_processes < 1:  # 0 must not quietly mean "all CPUs"
        raise PackedDataError(f"--num_processes must be at least 1, got {num_processes}")
    if not check_output(dst, file_existence_policy, [src, index_path]):
        return None
    tokenizer = load_tokenizer(tokenizer_file, tokenizer_backend)
    eod_id = tokenizer.token_id(eod_token)
    if eod_id is None:
        raise PackedDataError(
            f"{tokenizer.path}: unknown EOD token {eod_token!r} (not in the vocabulary or added tokens)"
        )
    if eod_id >= 256**tokenizer.width:
        raise PackedDataError(f"EOD token {eod_token!r} has id {eod_id}, too large for {tokenizer.width}-byte tokens")
    extractor = _Extractor(jq_pattern)  # compile errors surface here, before any worker starts
    del extractor
    index_Nx2 = read_idx_array(index_path)
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

    def line_of(entries: list[int]) -> dict[int, int]:
        if contiguous:
            return {e: e + 1 for e in entries}
        by_offset = _line_numbers(src, [int(offsets[e]) for e in entries])
        return {e: by_offset[int(offsets[e])] for e in entries}

    spec = _WorkerSpec(src, tokenizer, jq_pattern, eod_id, tokenizer.width, quiet_hf_threads=num_processes > 1)
    skipped: list[tuple[int, str]] = []
    pbar = None
    with atomic_output(dst) as tmp:
        writer = PbinWriter(tmp, tokenizer.width)
        pool = None
        try:
            if num_processes > 1:
                # fork: workers inherit the loaded tokenizer instead of rebuilding it (~0.5 s each). But a process that
                # already runs JAX's threads (a notebook, the tests) can deadlock its forked children: spawn there.
                fork_ok = "fork" in multiprocessing.get_all_start_methods() and "jax" not in sys.modules
                ctx = multiprocessing.get_context("fork" if fork_ok else "spawn")
                # Not multiprocessing.Pool: it replaces a worker that dies (say, killed for memory) and waits forever
                # for the lost batch; this pool fails the batch with BrokenProcessPool.
                pool = ProcessPoolExecutor(
                    num_processes, mp_context=ctx, initializer=_init_pool_worker, initargs=(spec,)
                )
            else:
                _init_worker(spec)
            from tqdm import tqdm

            pbar = tqdm(
                total=len(index_Nx2), unit="doc", desc=f"packing {os.path.basename(src)}",
                file=sys.stderr, disable=not progress, mininterval=0.5,
            )  # fmt: skip

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

            if pool is None:
                for first, entries in _batches(index_Nx2, batch_bytes):
                    consume(_encode_lines(first, entries))
            else:
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
            writer.close()
        except BaseException:
            writer.abort()
            if pool is not None:
                # Stop now rather than finish batches nobody will read. Python 3.14 has pool.terminate_workers().
                for worker in list((getattr(pool, "_processes", None) or {}).values()):
                    worker.terminate()
            raise
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            elif _WORKER is not None:
                _WORKER[2].close()
            if pbar is not None:
                pbar.close()
    if not writer.num_docs:
        print(f"{dst}: no documents were written (empty input, or every line skipped)", file=sys.stderr)
    if skipped:
        shown = "\n".join(f"  {src}:{line}: {reason}" for line, reason in skipped[:20])
        more = f"\n  ... and {len(skipped) - 20} more" if len(skipped) > 20 else ""
        print(f"skipped {len(skipped)} faulty line(s):\n{shown}{more}", file=sys.stderr)
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
