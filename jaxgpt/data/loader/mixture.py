"""Weighted mixtures of .pbin sources (data.mixture): the knobs' syntax, the training order, and its batches.

    data.mixture        = "web:data/packed/web/*.pbin:0.7,code:data/packed/code.pbin+data/packed/code2.pbin:0.3"
    data.mixture_stages = "1000:web=0.5,code=0.5;3000:web=0.2,code=0.8"   # new weights from step 1000, then 3000
    data.val_mixture    = "web:data/packed/web_val.pbin,code:data/packed/code_val.pbin"

A component is NAME:PATHS:WEIGHT, PATHS one or more .pbin files, globs or directories (all their *.pbin) joined by '+';
or, in a config file, a list of (NAME, PATHS, WEIGHT) tuples (PATHS a string or a list). Weights are normalised.

Order (a pure function of (seed, step), independent of the host count and the mesh, random access: nothing to
checkpoint). Global sequence t = k * G + row is row `row` of step k's batch (G the global batch, k from 0):
    - Stages: stage i holds the sequences from its first step's on (stage 0: data.mixture's weights, from step 1).
    - Blocks: a stage's sequences are cut into blocks of K = data.mixture_block. Every block of stage i holds
      count_{i,c} sequences of component c: K * w_{i,c} rounded by largest remainder (the counts sum to K; each is
      within one sequence of its share), in an order shuffled by a PRNG seeded by (seed, stage, block). The last block
      of a stage is cut short where the next stage starts. K = 512 by default: the rounding moves a share by less than
      1/512, and the blocks cut at either end of a span of steps move it by a few sequences (a shuffled part block),
      far inside 1 point over 1000 steps of 8 sequences or more (BENCHMARKS.md, "Data").
    - Windows: the n-th sequence drawn from component c (n counted from the run's start, over all stages) is window
      P_{c,e}[n mod N_c] of c's N_c windows, e = n // N_c, with P_{c,e} pipeline.py's epoch permutation for a seed of
      c's own (from seed and c's name). A component that runs out starts its next epoch, a fresh permutation, on its
      own, whatever the others do.
    - Counting: the draws of c before sequence t, in block b of stage i at position r, are (c's draws before stage i,
      kept per stage) + b * count_{i,c} + (c's positions among the first r of block b): O(#stages), not O(t).
Each host computes the rows it feeds: a block's windows are worked out once (grouped by component, one permutation
slice each), and a step slices them and reads its rows with one read_windows call over every component's files.

Why not Grain's `MapDataset.mix` (grain 0.2.18): it interleaves the components in one fixed, unshuffled pattern
(component c at the same positions of every cycle); its length is the shortest component's (a component that runs out
ends the mixture, so per-component epochs would need repeats with a reshuffle per epoch that it does not do); its
weights hold for the dataset's life (no stages: a stage's first index would need the draws before it, which is the
counting above); and it resolves every element on its own in Python. The blocks keep Grain's exact proportions (within
one sequence per block) and add the shuffle, the epochs and the stages, in a few lines of numpy.

Checked, one line naming the component: a missing file or a glob or directory without one; a weight that is zero,
negative or not a number; two components with one name; components of different token widths (a .pbin records its
token width and nothing of its tokenizer, so the width is what is compared; every read is also checked against
model.vocab_size); a component with fewer windows than one block draws from it.
"""

from __future__ import annotations

import bisect
import functools
import glob
import math
import numbers
import os
import re
import zlib
from collections.abc import Callable, Sequence

import numpy as np

from jaxgpt.data.loader import pipeline
from jaxgpt.data.loader.source import PackedWindowSource
from jaxgpt.errors import ConfigError, JaxgptError, PackedDataError, check_int

PATHS_SEP = "+"  # joins a component's paths in the text form: "web:a.pbin+b.pbin:0.7"
STAGES_SEP = ";"  # joins stages in the text form: "1000:web=0.5,code=0.5;3000:web=0.2,code=0.8"
EPOCH_PREFIX = "data/epoch/"  # metrics.jsonl key of a component's passes over its windows
_NAME = re.compile(r"[A-Za-z0-9_.-]+")  # a name is part of metrics keys: data/epoch/NAME, eval_loss/NAME
# First words of the PRNG seeds: a block's shuffle, a component's epochs and pipeline.py's (seed, epoch) never share
# a stream.
_BLOCK_TAG, _COMPONENT_TAG = 0x6D6978, 0x636F6D70


# The knobs' syntax
# ------------------------------------------------------------------------------------------------------------------


def parse_components(value, key: str, weighted: bool = True) -> list[tuple[str, tuple[str, ...], float | None]]:
    """(name, paths, weight) per component of data.mixture (weighted) or data.val_mixture (no weights): a string
    'NAME:PATHS[:WEIGHT],...', or a list of such strings, of (NAME, PATHS[, WEIGHT]) or of {"name", "paths",
    "weight"}."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise ConfigError(f"{key}={value!r} must be '{_form(weighted)},...' or a list of components")
    components = [_component(item, key, weighted) for item in items]
    names = [name for name, _, _ in components]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"{key}: two components are named {name!r}; give each its own name")
    return components


def _form(weighted: bool) -> str:
    return "NAME:PATHS:WEIGHT" if weighted else "NAME:PATHS"


def _component(item, key: str, weighted: bool) -> tuple[str, tuple[str, ...], float | None]:
    fields = 3 if weighted else 2
    if isinstance(item, str):
        head, *rest = item.strip().split(":")  # a path may hold ':'; the name and the weight may not
        if weighted:
            parts = [head, ":".join(rest[:-1]), rest[-1]] if len(rest) >= 2 else [head]
        else:
            parts = [head, ":".join(rest)] if rest else [head]
    elif isinstance(item, dict) and set(item) <= {"name", "paths", "weight"}:
        parts = [item.get("name"), item.get("paths"), *([item.get("weight")] if weighted else [])]
    else:
        parts = list(item) if isinstance(item, (list, tuple)) else []
    if len(parts) != fields or not isinstance(parts[0], str):
        raise ConfigError(f"{key}: {item!r} is not {_form(weighted)} (several paths joined by {PATHS_SEP!r})")
    name, paths = parts[0].strip(), parts[1]
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"{key}: component name {name!r} must be letters, digits, '_', '.' or '-' (it names metrics such as"
            f" {EPOCH_PREFIX}NAME)"
        )
    paths = paths.split(PATHS_SEP) if isinstance(paths, str) else paths
    if not isinstance(paths, (list, tuple)) or not all(isinstance(p, str) for p in paths):
        raise ConfigError(f"{key}: component {name!r}: paths {parts[1]!r} must be a string or a list of strings")
    paths = tuple(p.strip() for p in paths if p.strip())
    if not paths:
        raise ConfigError(f"{key}: component {name!r} names no path")
    return name, paths, _weight(parts[2], f"{key}: component {name!r}") if weighted else None


def _weight(value, where: str, allow_zero: bool = False) -> float:
    """A weight as a float: finite and > 0 (>= 0 with allow_zero), else one line naming `where`."""
    number = math.nan
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            pass
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = float(value)
    if not math.isfinite(number):
        raise ConfigError(f"{where}: weight {value!r} is not a number")
    if number < 0 or (number == 0 and not allow_zero):
        raise ConfigError(f"{where}: weight {value!r} must be {'>= 0' if allow_zero else '> 0'}")
    return number


def parse_stages(value, names: Sequence[str], key: str = "data.mixture_stages") -> list[tuple[int, list[float]]]:
    """(first step, weight per component in `names` order) per stage: 'STEP:NAME=W,...;STEP:...' or a list of
    (STEP, {NAME: W}). Every stage names every component; a weight may be 0 (the component rests); steps increase
    from 2 on (step 1 trains on data.mixture's weights)."""
    if not value:
        return []
    items = [s for s in value.split(STAGES_SEP) if s.strip()] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ConfigError(f"{key}={value!r} must be 'STEP:NAME=WEIGHT,...;...' or a list of (STEP, {{NAME: WEIGHT}})")
    stages = [_stage(item, names, key) for item in items]
    for (before, _), (start, _) in zip(stages, stages[1:]):
        if start <= before:
            raise ConfigError(f"{key}: the stage at step {start} follows the one at step {before}; steps must increase")
    return stages


def _stage(item, names: Sequence[str], key: str) -> tuple[int, list[float]]:
    form = f"{key}: {item!r} is not STEP:NAME=WEIGHT,... (or (STEP, {{NAME: WEIGHT}}))"
    if isinstance(item, str):
        start, sep, text = item.strip().partition(":")
        pairs = [p.partition("=") for p in text.split(",")]
        if not sep or not all(eq for _, eq, _ in pairs):
            raise ConfigError(form)
        given = [(n.strip(), w.strip()) for n, _, w in pairs]
        start = int(start) if start.strip().isdigit() else start
    elif isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[1], dict):
        start, given = item[0], list(item[1].items())
    else:
        raise ConfigError(form)
    if not isinstance(start, numbers.Integral) or isinstance(start, bool) or start < 2:
        raise ConfigError(f"{key}: stage step {start!r} must be an int >= 2 (step 1 trains on data.mixture's weights)")
    weights = dict(given)
    for name in weights:
        if name not in names:
            raise ConfigError(
                f"{key}: the stage at step {start} names {name!r}, not a component of data.mixture {names}"
            )
        if [n for n, _ in given].count(name) > 1:
            raise ConfigError(f"{key}: the stage at step {start} names component {name!r} twice")
    missing = [n for n in names if n not in weights]
    if missing:
        raise ConfigError(f"{key}: the stage at step {start} gives component {missing[0]!r} no weight (name every one)")
    out = [_weight(weights[n], f"{key}: the stage at step {start}, component {n!r}", allow_zero=True) for n in names]
    if not any(out):
        raise ConfigError(f"{key}: the stage at step {start} gives every component weight 0")
    return int(start), out


def resolve_files(name: str, paths: Sequence[str], key: str) -> list[str]:
    """The .pbin files a component's paths name: files, globs (sorted) and directories (their *.pbin, sorted)."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(glob.glob(os.path.join(glob.escape(path), "*.pbin")))
            if not found:
                raise ConfigError(f"{key}: component {name!r}: directory {path} holds no .pbin file")
        elif any(ch in path for ch in "*?["):
            found = sorted(p for p in glob.glob(path) if os.path.isfile(p))
            if not found:
                raise ConfigError(f"{key}: component {name!r}: {path} matches no file")
        elif os.path.isfile(path):
            found = [path]
        else:
            raise ConfigError(f"{key}: component {name!r}: no such file {path}")
        files += found
    return files


def open_sources(value, key: str, make_source: Callable, weighted: bool) -> tuple[list, list[PackedWindowSource]]:
    """The parsed components of `value` and one source of windows each (make_source(files)), of one token width."""
    components = parse_components(value, key, weighted)
    sources = []
    for name, paths, _ in components:
        files = resolve_files(name, paths, key)
        try:
            source = make_source(files)
        except JaxgptError as e:  # a file too short for one window, or two token widths within the component
            raise type(e)(f"{key}: component {name!r}: {e}") from None
        if sources and source.width != sources[0].width:
            first = components[0][0]
            raise PackedDataError(
                f"{key}: component {name!r} holds {source.width}-byte tokens, component {first!r}"
                f" {sources[0].width}-byte ones: pack every component with the same tokenizer"
            )
        sources.append(source)
    return components, sources


def file_record(path: str) -> str:
    """A file as a resume compares it: its name and size, not its directory (the same files copied elsewhere)."""
    return f"{os.path.basename(path)} ({os.path.getsize(path)} bytes)"


# The order
# ------------------------------------------------------------------------------------------------------------------


def block_counts(weights: Sequence[float], block: int) -> np.ndarray:
    """Each component's sequences in a block: block * weight (normalised), rounded by largest remainder, so that
    they sum to `block` and each is within one sequence of its share; int64 [C]."""
    exact = np.asarray(weights, np.float64) / math.fsum(weights) * block
    counts = np.floor(exact).astype(np.int64)
    short = block - int(counts.sum())
    counts[np.argsort(counts - exact, kind="stable")[:short]] += 1  # largest remainders; ties: the earlier component
    return counts


class BlockOrder:
    """Which component each global sequence comes from, and which of that component's draws it is (module
    docstring). Pure: every answer follows from the counts, the stage starts, the block size and the seed."""

    def __init__(self, counts_SxC: np.ndarray, starts: Sequence[int], block: int, seed: int):
        """counts_SxC: per stage, each component's sequences in a block (summing to `block`); starts: each stage's
        first global sequence, increasing from 0."""
        self.counts_SxC = np.asarray(counts_SxC, np.int64)
        self.starts = [int(t) for t in starts]
        self.block_size, self.seed = int(block), int(seed)
        self._block = functools.lru_cache(maxsize=16)(self._make_block)  # a step reads one or two blocks
        before = [np.zeros(self.counts_SxC.shape[1], np.int64)]
        for i in range(len(self.starts) - 1):  # once per stage: the draws it holds, up to the next stage's start
            before.append(before[-1] + self._drawn_within(i, self.starts[i + 1] - self.starts[i]))
        self.before_SxC = np.stack(before)  # each component's draws before each stage

    def _make_block(self, stage: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Block b of a stage: the component at each position, and its rank among that component's positions in the
        block; both int64 [K]."""
        counts_C = self.counts_SxC[stage]
        labels_K = np.repeat(np.arange(len(counts_C)), counts_C)
        np.random.default_rng([self.seed, _BLOCK_TAG, stage, b]).shuffle(labels_K)
        grouped_K = np.argsort(labels_K, kind="stable")  # the positions of component 0 in order, then 1, ...
        rank_K = np.empty_like(labels_K)
        rank_K[grouped_K] = np.arange(self.block_size) - np.repeat(np.cumsum(counts_C) - counts_C, counts_C)
        return labels_K, rank_K

    def _drawn_within(self, stage: int, u: int) -> np.ndarray:
        """Each component's draws among the first u sequences of a stage."""
        b, r = divmod(u, self.block_size)
        drawn_C = b * self.counts_SxC[stage]
        if r:
            drawn_C = drawn_C + np.bincount(self._block(stage, b)[0][:r], minlength=len(drawn_C))
        return drawn_C

    def _stage_of(self, t: int) -> int:
        return bisect.bisect_right(self.starts, t) - 1

    def drawn_before(self, t: int) -> np.ndarray:
        """Each component's draws among global sequences 0..t-1, int64 [C], in O(#stages)."""
        i = self._stage_of(t)
        return self.before_SxC[i] + self._drawn_within(i, t - self.starts[i])

    def block(self, stage: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Block b of a stage, whole: the component of each position, and which of that component's draws it is
        (counted from the run's start); both int64 [K]."""
        labels_K, rank_K = self._block(stage, b)
        return labels_K, self.before_SxC[stage][labels_K] + b * self.counts_SxC[stage][labels_K] + rank_K

    def spans(self, t0: int, t1: int) -> list[tuple[int, int, int, int]]:
        """Global sequences t0..t1-1 as (stage, block, first position, end position) pieces of blocks, in order."""
        pieces, t = [], t0
        while t < t1:
            i = self._stage_of(t)
            end = t1 if i + 1 == len(self.starts) else min(t1, self.starts[i + 1])
            b, lo = divmod(t - self.starts[i], self.block_size)
            hi = min(lo + end - t, self.block_size)
            pieces.append((i, b, lo, hi))
            t += hi - lo
        return pieces

    def draws(self, t0: int, t1: int) -> tuple[np.ndarray, np.ndarray]:
        """For global sequences t0..t1-1: the component of each, and which of that component's draws it is; both
        int64 [t1 - t0]."""
        labels, draws = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        for i, b, lo, hi in self.spans(t0, t1):
            labels_K, draws_K = self.block(i, b)
            labels.append(labels_K[lo:hi])
            draws.append(draws_K[lo:hi])
        return np.concatenate(labels), np.concatenate(draws)


# The training source
# ------------------------------------------------------------------------------------------------------------------


class Mixture:
    """The training windows of a data.mixture: its components' sources and weights. pipeline.train_batches reads its
    batches through `train_rows`; `len()` is every component's windows together (what one "epoch" of train.num_steps
    None spans)."""

    def __init__(
        self, names: Sequence[str], sources: Sequence[PackedWindowSource], stages: Sequence[tuple], block: int
    ):
        """stages: (first step, weight per component), the first at step 1; the weights are normalised here."""
        self.names, self.sources = tuple(names), tuple(sources)
        self.block = check_int("data.mixture_block", block)
        self.stage_steps = [int(start) for start, _ in stages]  # 1-based steps, as metrics.jsonl counts them
        self.weights_SxC = np.array([np.asarray(w, np.float64) / math.fsum(w) for _, w in stages])
        self.counts_SxC = np.stack([block_counts(w, self.block) for _, w in stages])
        self.num_windows = np.array([len(s) for s in self.sources], np.int64)
        self.seq_len = self.sources[0].seq_len
        self.paths = tuple(p for s in self.sources for p in s.paths)
        self._check_blocks()
        # A batch is one read over every component's files: the same windows, since each file is windowed on its
        # own; component c's window w is the reader's first_window[c] + w. A read per component, each with its fixed
        # cost, and windows looked up per step ran at a third of this speed at batch 8 (BENCHMARKS.md, "Choices").
        first = self.sources[0]
        self.reader = PackedWindowSource(self.paths, self.seq_len, first.vocab_size, first.reuse_last_target)
        self.first_window = np.concatenate([[0], np.cumsum(self.num_windows)])

    def _check_blocks(self) -> None:
        for start, weights_C, counts_C in zip(self.stage_steps, self.weights_SxC, self.counts_SxC):
            where = "data.mixture" if start == 1 else f"data.mixture_stages (step {start})"
            for name, w, count, n in zip(self.names, weights_C, counts_C, self.num_windows):
                if w > 0 and count == 0:
                    raise ConfigError(
                        f"{where}: component {name!r} at weight {w:.4g} gets no sequence of a block of"
                        f" data.mixture_block={self.block}; raise the block size or the weight"
                    )
                if count > n:
                    raise ConfigError(
                        f"{where}: component {name!r} has {n} windows, fewer than the {count} that one block of"
                        f" data.mixture_block={self.block} sequences draws at weight {w:.4g}; lower data.mixture_block"
                        " or add data"
                    )

    def __len__(self) -> int:
        return int(self.num_windows.sum())

    def describe(self) -> str:
        """The banner's line: each component's weight and windows, and the stages."""
        parts = ", ".join(
            f"{n} {w:.4g} ({len(s):,} windows)" for n, s, w in zip(self.names, self.sources, self.weights_SxC[0])
        )
        later = [
            f"step {start}: " + ", ".join(f"{n} {w:.4g}" for n, w in zip(self.names, weights))
            for start, weights in zip(self.stage_steps[1:], self.weights_SxC[1:])
        ]
        return f"mixture: {parts}" + (f" | from {'; '.join(later)}" if later else "")

    def __repr__(self) -> str:
        parts = ", ".join(
            f"{n}: {len(s)} windows at {w:.4g}" for n, s, w in zip(self.names, self.sources, self.weights_SxC[0])
        )
        return f"Mixture({parts})"

    def order(self, global_batch_size: int, seed: int) -> BlockOrder:
        starts = [(step - 1) * global_batch_size for step in self.stage_steps]  # step k trains on batch k - 1
        return BlockOrder(self.counts_SxC, starts, self.block, seed)

    def component_seed(self, seed: int, c: int) -> int:
        """The seed of component c's epoch permutations: from the run's seed and c's name (not its position)."""
        entropy = [seed, _COMPONENT_TAG, zlib.crc32(self.names[c].encode())]
        return int(np.random.SeedSequence(entropy).generate_state(1, np.uint32)[0])

    def train_rows(self, global_batch_size: int, seed: int, rows: tuple[int, int]) -> MixtureRows:
        """What pipeline.host_train_dataset maps over the steps: step -> this host's rows of its batch."""
        return MixtureRows(self, global_batch_size, seed, rows)

    def epochs(self, global_batch_size: int, seed: int) -> Callable[[int], dict[str, float]]:
        """step -> {"data/epoch/NAME": the passes over NAME's windows that steps 1..step drew}, in O(#stages)."""
        order = self.order(global_batch_size, seed)

        def passes(step: int) -> dict[str, float]:
            drawn_C = order.drawn_before(step * global_batch_size)
            return {f"{EPOCH_PREFIX}{n}": float(d / w) for n, d, w in zip(self.names, drawn_C, self.num_windows)}

        return passes

    def record(self) -> dict:
        """What a resume compares (resume_diffs): each component's files and windows, and the weights of each stage."""
        return {
            "components": [
                {"name": n, "files": [file_record(p) for p in s.paths], "windows": len(s)}
                for n, s in zip(self.names, self.sources)
            ],
            "stages": [
                [start, [float(w) for w in weights]] for start, weights in zip(self.stage_steps, self.weights_SxC)
            ],
        }


class MixtureRows:
    """step -> this host's rows of that step's global batch of a mixture, as numpy; no state but caches, so Grain
    may call it in any order (random access)."""

    def __init__(self, mixture: Mixture, global_batch_size: int, seed: int, rows: tuple[int, int]):
        self.mixture, self.global_batch_size, self.rows = mixture, global_batch_size, rows
        self.order = mixture.order(global_batch_size, seed)
        self.seeds = [mixture.component_seed(seed, c) for c in range(len(mixture.names))]
        # One cache per component for its current epoch's permutation (and a neighbour's): a shared one would evict.
        self.permutations = [functools.lru_cache(maxsize=2)(pipeline.epoch_permutation) for _ in mixture.names]
        self._block_windows = functools.lru_cache(maxsize=4)(self._make_block_windows)  # a step reads one or two

    def windows(self, c: int, draws: np.ndarray) -> np.ndarray:
        """The windows of component c's draws n: P_{c, n // N_c}[n mod N_c], int64 like `draws`."""
        num_windows = int(self.mixture.num_windows[c])
        epochs, positions = np.divmod(draws, num_windows)
        out = np.empty_like(draws)
        for e in np.unique(epochs).tolist():  # one epoch, or two where c runs out within the block
            sel = epochs == e
            lo, hi = int(positions[sel].min()), int(positions[sel].max()) + 1  # c's draws in a block are consecutive
            perm = pipeline.epoch_permutation_slice(num_windows, self.seeds[c], e, lo, hi, self.permutations[c])
            out[sel] = perm[positions[sel] - lo]
        return out

    def _make_block_windows(self, stage: int, b: int) -> np.ndarray:
        """The reader's window at each position of a whole block, int64 [K]: worked out once per block, so that a
        step only slices it (a block spans K / G steps)."""
        labels_K, draws_K = self.order.block(stage, b)
        windows_K = np.empty_like(draws_K)
        for c, first in enumerate(self.mixture.first_window[:-1].tolist()):
            at = np.flatnonzero(labels_K == c)
            if at.size:
                windows_K[at] = first + self.windows(c, draws_K[at])
        return windows_K

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        first = step * self.global_batch_size
        spans = self.order.spans(first + self.rows[0], first + self.rows[1])
        windows = [self._block_windows(i, b)[lo:hi] for i, b, lo, hi in spans]
        windows_BxW = self.mixture.reader.read_windows(windows[0] if len(windows) == 1 else np.concatenate(windows))
        return {"inputs": windows_BxW[:, :-1], "targets": windows_BxW[:, 1:]}  # [B, S] each


def open_train(data, make_source: Callable) -> Mixture:
    """The Mixture of a DataConfig's data.mixture and data.mixture_stages; make_source(files) windows one component."""
    components, sources = open_sources(data.mixture, "data.mixture", make_source, weighted=True)
    names = [name for name, _, _ in components]
    stages = [(1, [weight for _, _, weight in components]), *parse_stages(data.mixture_stages, names)]
    return Mixture(names, sources, stages, data.mixture_block)


def open_validation(value, make_source: Callable) -> dict[str, PackedWindowSource]:
    """data.val_mixture: name -> its validation windows."""
    components, sources = open_sources(value, "data.val_mixture", make_source, weighted=False)
    return {name: source for (name, _, _), source in zip(components, sources)}


def resume_diffs(saved: dict | None, now: dict | None, step: int) -> list[str]:
    """How the mixture of a checkpoint at `step` (Mixture.record; None: no mixture) differs from this run's. Stages
    that start after `step` may differ: the steps done drew nothing from them."""
    if saved is None or now is None:
        if saved is now:
            return []
        return [f"data.mixture: checkpoint {_describe(saved)} vs now {_describe(now)}"]
    diffs = []
    if saved["components"] != now["components"]:
        diffs.append(f"data.mixture components: checkpoint {saved['components']!r} vs now {now['components']!r}")
    done_saved, done_now = ([s for s in r["stages"] if s[0] <= step] for r in (saved, now))
    if done_saved != done_now:
        diffs.append(
            f"data.mixture weights up to step {step}: checkpoint {done_saved!r} vs now {done_now!r} (only a stage"
            f" after step {step} may be added)"
        )
    return diffs


def _describe(record: dict | None) -> str:
    if record is None:
        return "none"
    return ", ".join(f"{c['name']} {w:.4g}" for c, w in zip(record["components"], record["stages"][0][1]))
