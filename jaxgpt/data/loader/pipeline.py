"""Global batches for training and evaluation, as jax.Arrays sharded over the mesh's batch axes.

Training order (a pure function of (seed, step), independent of the number of hosts):
    N windows, global batch G, E = steps_per_epoch = N // G (Modalities' rule: the last partial batch is dropped).
    Step k belongs to epoch e = k // E and is batch j = k % E of that epoch. Epoch e has its own permutation P_e of
    range(N), seeded by the pair (seed, e) (numpy's shuffle, or Grain's index_shuffle above PERMUTATION_MAX_WINDOWS).
    Step k holds windows P_e[j*G : (j+1)*G]; the last N % G windows of P_e are not seen in epoch e (each epoch drops
    a different random remainder, like Modalities' drop_last sampler).
    Host h of P feeds rows [h*G/P, (h+1)*G/P) of every global batch and reads only those windows. Resuming at step k on
    any number of hosts therefore continues the exact sequence: pass `start_step=k`.
    A weighted mixture of sources (data.mixture) has an order of its own, with the same properties: mixture.py.

Evaluation: one unshuffled pass over all N windows, ceil(N / G) batches; the last is padded with zero rows whose
"mask" is 0, so every host count computes the same masked mean.

Pipeline per host: Grain MapDataset over steps -> this host's rows as numpy (one vectorised gather) -> global
jax.Arrays (make_array_from_process_local_data), both done by one Grain prefetch thread that keeps `prefetch` batches
ready ahead of the training loop.

This is the only module of jaxgpt/data that imports jax or grain: everything upstream of it (the tools, the format,
the windows) runs without them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sized

import grain
import jax
import numpy as np
from grain.experimental import index_shuffle

from jaxgpt.data.loader.source import PackedWindowSource
from jaxgpt.errors import ConfigError, check_int

_MAX_STEPS = 2**62  # "infinite": Grain's MapDataset needs a length
# Up to this many windows an epoch's permutation is materialised (4 bytes a window, 64 MiB at the limit): Grain's
# index_shuffle cycle-walks a larger domain for small N, far below the loader's speed target there (BENCHMARKS.md,
# "Choices"), but stays O(1) in memory for the huge datasets above the limit.
PERMUTATION_MAX_WINDOWS = 2**24


def steps_per_epoch(source: Sized | int, global_batch_size: int) -> int:
    """Full global batches per epoch: N // G, like Modalities (drop_last). Raises if not even one batch fits."""
    num_windows = int(source) if isinstance(source, (int, np.integer)) else len(source)
    check_int("global_batch_size", global_batch_size)
    steps = num_windows // global_batch_size
    if steps < 1:
        raise ConfigError(
            f"{_describe(source)} has {num_windows} windows, fewer than one global batch of {global_batch_size};"
            " lower the batch size or data.seq_len, or add data"
        )
    return steps


def epoch_permutation_slice(
    num_windows: int, seed: int, epoch: int, start: int, stop: int, permutation: Callable | None = None
) -> np.ndarray:
    """P_e[start:stop], int64: positions start..stop-1 of epoch `epoch`'s permutation of range(num_windows).
    `permutation`: where whole permutations are kept, a cache of `epoch_permutation` (default: one of two epochs,
    the current one and its neighbour; a mixture keeps one such cache per component, which would evict each other's)."""
    if num_windows <= PERMUTATION_MAX_WINDOWS:
        return (permutation or _epoch_permutation)(num_windows, seed, epoch)[start:stop].astype(np.int64)
    # Too big to hold per epoch: Grain's stateless index_shuffle, O(1) memory, ~5-8 us per window at this size.
    shuffle_seed = int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint32)[0])
    return np.array([index_shuffle(p, num_windows - 1, shuffle_seed, 4) for p in range(start, stop)], np.int64)


def epoch_permutation(num_windows: int, seed: int, epoch: int) -> np.ndarray:
    """Epoch `epoch`'s whole permutation of range(num_windows), uint32 (4 bytes per window)."""
    # Seeded by the pair (seed, epoch), not seed + epoch: runs with seeds s and s + 1 never share an epoch order.
    perm = np.arange(num_windows, dtype=np.uint32)  # the same order as permutation(num_windows)
    np.random.default_rng([seed, epoch]).shuffle(perm)
    return perm


_epoch_permutation = functools.lru_cache(maxsize=2)(epoch_permutation)  # the current epoch and its neighbour


def process_rows(global_batch_size: int, process_index: int, process_count: int) -> tuple[int, int]:
    """Rows [start, stop) of every global batch that host `process_index` of `process_count` feeds."""
    check_int("global_batch_size", global_batch_size)
    if global_batch_size % process_count:
        raise ConfigError(
            f"global batch size {global_batch_size} is not divisible by the process count {process_count}"
        )
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is out of range for {process_count} processes")
    per_host = global_batch_size // process_count
    return process_index * per_host, (process_index + 1) * per_host


def batch_windows(num_windows: int, global_batch_size: int, seed: int, step: int, rows: tuple[int, int]) -> np.ndarray:
    """Window indices, int64 [stop - start], of rows [start, stop) of training step `step`'s global batch."""
    epoch, j = divmod(step, steps_per_epoch(num_windows, global_batch_size))
    first = j * global_batch_size
    return epoch_permutation_slice(num_windows, seed, epoch, first + rows[0], first + rows[1])


class _TrainRows:
    """step -> this host's rows of that step's global batch, as numpy; stateless, so Grain may call it from threads."""

    def __init__(self, source: PackedWindowSource, global_batch_size: int, seed: int, rows: tuple[int, int]):
        self.source, self.global_batch_size, self.seed, self.rows = source, global_batch_size, seed, rows

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        idx = batch_windows(len(self.source), self.global_batch_size, self.seed, step, self.rows)
        windows_BxW = self.source.read_windows(idx)  # [B, S + 1], B = rows of this host
        return {"inputs": windows_BxW[:, :-1], "targets": windows_BxW[:, 1:]}


class _EvalRows:
    """Eval batch b -> this host's rows of it, zero-padded past the last window, with a float32 mask."""

    def __init__(self, source: PackedWindowSource, global_batch_size: int, rows: tuple[int, int]):
        self.source, self.global_batch_size, self.rows = source, global_batch_size, rows

    def __call__(self, b: int) -> dict[str, np.ndarray]:
        first = b * self.global_batch_size
        idx = np.arange(first + self.rows[0], first + self.rows[1])  # [B]
        real = idx < len(self.source)  # [B]
        windows_BxW = np.zeros((len(idx), self.source.seq_len + 1), np.int32)  # [B, S + 1]
        windows_BxW[real] = self.source.read_windows(idx[real])
        mask_BxS = np.broadcast_to(real[:, None], (len(idx), self.source.seq_len)).astype(np.float32)
        return {"inputs": windows_BxW[:, :-1], "targets": windows_BxW[:, 1:], "mask": mask_BxS}


def host_train_dataset(
    source: PackedWindowSource,
    *,
    global_batch_size: int,
    seed: int,
    rows: tuple[int, int],
    start_step: int = 0,
) -> grain.MapDataset:
    """Element i = rows `rows` of global training batch start_step + i: numpy int32 [B, S] "inputs" and "targets".
    `source`: a PackedWindowSource, or a mixture.Mixture, whose `train_rows` gives its own order."""
    steps_per_epoch(source, global_batch_size)  # validates before any thread starts
    check_int("data.seed", seed, minimum=0)
    check_int("start_step", start_step, minimum=0)
    if hasattr(source, "train_rows"):  # a data.mixture (mixture.py) orders its own steps
        train_rows = source.train_rows(global_batch_size, int(seed), rows)
    else:
        train_rows = _TrainRows(source, global_batch_size, int(seed), rows)
    return grain.MapDataset.range(int(start_step), _MAX_STEPS).map(train_rows)


def host_eval_dataset(source: PackedWindowSource, *, global_batch_size: int, rows: tuple[int, int]) -> grain.MapDataset:
    """Element b = host rows `rows` of eval batch b (of ceil(N / G)), numpy "inputs"/"targets" int32, "mask" float32."""
    check_int("global_batch_size", global_batch_size)
    num_batches = math.ceil(len(source) / global_batch_size)
    return grain.MapDataset.range(num_batches).map(_EvalRows(source, global_batch_size, rows))


class Batches(Iterator[dict[str, jax.Array]]):
    """Iterator of global batches; `close()` (or leaving a `with` block) stops its threads."""

    def __init__(
        self, host: grain.MapDataset, sharding: jax.sharding.NamedSharding, global_batch_size: int, prefetch: int
    ):
        check_int("prefetch", prefetch, minimum=0)
        to_global = functools.partial(_to_global, sharding=sharding, global_batch_size=global_batch_size)
        # One Grain thread reads host rows and builds the global arrays, keeping `prefetch` batches ahead of the
        # consumer. No extra read threads: batches are one vectorised gather each, and Grain's per-element thread
        # hand-off costs more than the read (measured 66M tokens/s without read threads, 19-36M with 1-4).
        ds = host.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
        ds = grain.experimental.ThreadPrefetchIterDataset(ds.map(to_global), prefetch_buffer_size=prefetch)
        self._it = iter(ds)
        if prefetch:
            self._it.start_prefetch()  # the first batches load while the trainer restores and compiles

    def __next__(self) -> dict[str, jax.Array]:
        if self._it is None:
            raise ValueError("this batch iterator was closed")
        return next(self._it)

    def close(self) -> None:
        """Stops and joins the prefetch thread; idempotent."""
        if self._it is not None:
            self._it.close()
            self._it = None  # drop Grain's iterator now, not at interpreter exit when its __del__ fails

    def __enter__(self) -> Batches:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _to_global(local: dict[str, np.ndarray], sharding, global_batch_size: int) -> dict[str, jax.Array]:
    # One call for the whole dict: JAX's fixed cost per transfer (~0.1 ms on CPU) dominates small batches.
    global_shapes = {k: (global_batch_size, *v.shape[1:]) for k, v in local.items()}
    return jax.make_array_from_process_local_data(sharding, local, global_shapes)


def train_batches(
    source: PackedWindowSource,
    *,
    global_batch_size: int,
    seed: int,
    sharding: jax.sharding.NamedSharding,
    start_step: int = 0,
    prefetch: int = 2,
) -> Batches:
    """Infinite global training batches {"inputs", "targets"}: int32 [G, S] sharded by `sharding`, from step
    `start_step` on; batch k is the same for every host count (see the module docstring)."""
    rows = host_rows(sharding, global_batch_size)
    host = host_train_dataset(source, global_batch_size=global_batch_size, seed=seed, rows=rows, start_step=start_step)
    return Batches(host, sharding, global_batch_size, prefetch)


def eval_batches(
    source: PackedWindowSource, *, global_batch_size: int, sharding: jax.sharding.NamedSharding, prefetch: int = 2
) -> Batches:
    """One unshuffled pass over every window: ceil(N / G) global batches {"inputs", "targets", "mask"} [G, S]."""
    rows = host_rows(sharding, global_batch_size)
    host = host_eval_dataset(source, global_batch_size=global_batch_size, rows=rows)
    return Batches(host, sharding, global_batch_size, prefetch)


def _batch_axes(sharding: jax.sharding.NamedSharding) -> tuple[str, ...]:
    if not isinstance(sharding, jax.sharding.NamedSharding):
        raise ValueError(f"batch sharding must be a jax.sharding.NamedSharding, got {type(sharding).__name__}")
    axes = sharding.spec[0] if len(sharding.spec) else None
    return () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)


def data_parallel_size(sharding: jax.sharding.NamedSharding) -> int:
    """Shards of the batch dimension: the product of the mesh sizes of the axes in the spec's first entry."""
    return math.prod(sharding.mesh.shape[a] for a in _batch_axes(sharding))


def host_rows(sharding: jax.sharding.NamedSharding, global_batch_size: int) -> tuple[int, int]:
    """Rows [h*G/P, (h+1)*G/P) this process feeds, after checking that its devices hold exactly those rows."""
    check_int("global_batch_size", global_batch_size)
    axes = _batch_axes(sharding)
    dp = data_parallel_size(sharding)
    if global_batch_size % dp:
        raise ConfigError(
            f"global batch size {global_batch_size} is not divisible by the data-parallel size {dp}"
            f" (batch axes {axes} of mesh {dict(sharding.mesh.shape)})"
        )
    rows = process_rows(global_batch_size, jax.process_index(), jax.process_count())
    # make_array_from_process_local_data fills the rows this process's devices own; they must be the rows we read.
    batch_only = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(axes or None))
    owned = batch_only.addressable_devices_indices_map((global_batch_size,)).values()  # one (slice,) per device
    owned = [index[0].indices(global_batch_size) for index in owned]  # (start, stop, step)
    owned_rows = (min(start for start, _, _ in owned), max(stop for _, stop, _ in owned))
    if owned_rows != rows:
        raise ValueError(
            f"process {jax.process_index()} of {jax.process_count()} owns batch rows {list(owned_rows)} under"
            f" {sharding.spec} but the pipeline feeds rows {list(rows)}: build the mesh so that each process"
            " holds one contiguous block of the batch axes (jax.make_mesh does)"
        )
    return rows


def _describe(source) -> str:
    return repr(source) if isinstance(source, PackedWindowSource) else "the training data"
