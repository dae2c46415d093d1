"""Tokens per second of reading packed windows: jaxgpt's pipeline, per-window reads, a user's Grain pipeline.

    flock /tmp/jaxgpt-bench.lock .venv/bin/python bench/loader.py [--batch 8] [--user-batch 64] [--seq-len 512]
        [--seconds 3] [--rounds 2] [--design]
    flock /tmp/jaxgpt-bench.lock .venv/bin/python bench/loader.py --mixture [--steps 2000]

Counts window tokens, seq_len + 1 per window (inputs and targets are two views of one window):
  (a) jaxgpt's pipeline: host numpy - this host's rows as numpy arrays (shuffle + gather), the part a data loader is
      responsible for; jax.Array - the same batches delivered by train_batches as global jax.Arrays on the default
      devices; on the bundled RedPajama train .pbin (1.5 MB) and on a synthetic 256 MiB .pbin of random tokens (freshly
      written, so mostly still in the page cache)
  (b) per-window reads: src[i] at uniformly random i of the synthetic file, what Grain's per-record API calls
  (c) a user's Grain pipeline: grain.MapDataset.source(src).shuffle(seed=0).batch(--user-batch) on the synthetic file,
      batches read by index (ds[k]) and iterated (`for batch in ds`: to_iter_dataset with Grain's default 16 threads)
  (c') the same batches indexed first, then read in one call: MapDataset.range(len(src)).shuffle(seed=0).batch(B)
      .map(src.read_windows)
(b) and (c) time the per-window read before the scalar path (`__getitem__` through read_windows, kept here as
ReadWindowsGetitem) and today's, in alternating rounds; (c) also over a source that costs nothing (Grain's own
ceiling) and with Grain's batched-read pushdown switched on (batch then calls the source's `_getitems`). The sources
of (b) and (c) check ids against gpt60m's vocab_size, as training does; (a) reads unchecked, as it always has.
Resident memory (VmRSS, its file pages, the peak VmHWM) is printed after each part: the reads must leave it flat
however much of the file they touch.
--mixture: (a) for a 3-component data.mixture (weights 0.5/0.3/0.2) over the bundled .pbin files and over three
synthetic ones, and the realised proportions of its first --steps steps.
"""

import argparse
import contextlib
import itertools
import os
import pathlib
import pickle
import struct
import tempfile
import time

import grain
import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxgpt.data.loader.mixture import Mixture
from jaxgpt.data.loader.pipeline import host_train_dataset, train_batches
from jaxgpt.data.loader.source import PackedWindowSource

REPO = pathlib.Path(__file__).resolve().parent.parent

BUNDLED = REPO / "tests" / "data" / "redpajama_v2_samples_512_train.pbin"
VOCAB_SIZE = 50304  # gpt60m's


class ReadWindowsGetitem(PackedWindowSource):
    """The per-window read before the scalar path (5cdca3c): one window through the vectorised read_windows."""

    def __getitem__(self, i: int) -> np.ndarray:
        return self.read_windows(np.asarray([i]))[0]


class ZeroCost:
    """A source whose reads cost nothing (one preallocated window): what Grain's per-record work alone allows."""

    def __init__(self, num_windows: int, seq_len: int):
        self.num_windows, self.window = num_windows, np.zeros(seq_len + 1, np.int32)

    def __len__(self) -> int:
        return self.num_windows

    def __getitem__(self, i: int) -> np.ndarray:
        return self.window


def write_synthetic(path: pathlib.Path, num_tokens: int) -> None:
    """Random GPT-2-range uint16 tokens as one document, written 32 MiB at a time (the peak RSS is then the reads')."""
    rng, data_len = np.random.default_rng(0), 2 * num_tokens
    with open(path, "wb") as f:
        f.write(struct.pack("<QI", data_len, 2))
        for start in range(0, num_tokens, 2**24):
            f.write(rng.integers(0, 50257, min(2**24, num_tokens - start), dtype=np.uint16).tobytes())
        f.write(pickle.dumps([(0, data_len)], protocol=4))


def rate(iterator, tokens_per_batch: int, seconds: float, finish=lambda b: b) -> tuple[float, int]:
    """Tokens/s over whole batches pulled for about `seconds`, after 20 warm-up batches."""
    for _ in range(20):
        next(iterator)
    n, start = 0, time.perf_counter()
    while True:
        last = next(iterator)
        n += 1
        if n % 50 == 0 and time.perf_counter() - start > seconds:
            break
    finish(last)
    return n * tokens_per_batch / (time.perf_counter() - start), n


def memory() -> str:
    """VmRSS, its file pages (RssFile) and the peak VmHWM of this process, from /proc/self/status."""
    with open("/proc/self/status") as f:
        mib = {
            k: int(v.split()[0]) / 1024
            for k, _, v in (line.partition(":") for line in f)
            if k in ("VmRSS", "RssFile", "VmHWM")
        }
    return f"RSS {mib['VmRSS']:.0f} MiB (file pages {mib['RssFile']:.0f}), peak {mib['VmHWM']:.0f} MiB"


def measure(name: str, src: PackedWindowSource, batch: int, seconds: float) -> None:
    tokens = batch * (src.seq_len + 1)
    # The host stage exactly as train_batches runs it, minus the device transfer.
    ds = host_train_dataset(src, global_batch_size=batch, seed=0, rows=(0, batch))
    it = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))
    host, n_host = rate(it, tokens, seconds)
    it.close()
    sharding = NamedSharding(jax.make_mesh((jax.device_count(),), ("data",)), P("data"))
    with train_batches(src, global_batch_size=batch, seed=0, sharding=sharding) as it:
        dev, n_dev = rate(it, tokens, seconds, finish=jax.block_until_ready)
    print(
        f"{name:<34} windows={len(src):>9,}  batch {batch} x {src.seq_len + 1}:  "
        f"host numpy {host / 1e6:7.1f}M tok/s ({n_host} batches)   "
        f"jax.Array {dev / 1e6:6.1f}M tok/s ({n_dev} batches)"
    )


def per_window_reads(sources: dict[str, PackedWindowSource], seconds: float, rounds: int) -> None:
    """(b) src[i] at random i, the implementations alternating round by round."""
    picks = np.random.default_rng(0).integers(0, len(next(iter(sources.values()))), 1 << 16).tolist()
    for r in range(rounds):
        for name, src in sources.items():
            tok_s, n = rate((src[i] for i in itertools.cycle(picks)), src.seq_len + 1, seconds)
            print(f"  round {r}  {name:<30} src[i]: {tok_s / 1e6:7.1f}M tok/s ({n:,} windows)")
    print(f"  {memory()}")


@contextlib.contextmanager
def grain_batch_pushdown():
    """Grain 0.2.18's MapDataset.batch reads its parent with _getitems only where this experiment flag says so; its
    release returns False. Switched on here only, to time the batched read Grain would then call."""
    from grain._src.python.dataset.transformations import batch as grain_batch

    flag = getattr(grain_batch, "_is_batch_map_pushdown_experiment_enabled", None)
    if flag is None:
        yield False
        return
    grain_batch._is_batch_map_pushdown_experiment_enabled = lambda: True
    try:
        yield True
    finally:
        grain_batch._is_batch_map_pushdown_experiment_enabled = flag


def user_pipeline(sources: dict, batch: int, seq_len: int, seconds: float, rounds: int) -> None:
    """(c) grain.MapDataset.source(src).shuffle(seed=0).batch(batch), read by index and iterated."""
    tokens = batch * (seq_len + 1)

    def by_index(ds):
        return (ds[k % len(ds)] for k in itertools.count())

    for r in range(rounds):
        for name, src in sources.items():
            ds = grain.MapDataset.source(src).shuffle(seed=0).batch(batch)
            indexed, _ = rate(by_index(ds), tokens, seconds)
            it = iter(ds)
            iterated, _ = rate(it, tokens, seconds)
            it.close()
            print(
                f"  round {r}  {name:<30} batch {batch} x {seq_len + 1}:  ds[k] {indexed / 1e6:6.1f}M tok/s   "
                f"for batch in ds {iterated / 1e6:6.1f}M tok/s"
            )
    # (c') The same batches (Grain's shuffle depends only on the length and the seed), one read per batch.
    src = sources["after: scalar __getitem__"]
    ds = grain.MapDataset.range(len(src)).shuffle(seed=0).batch(batch).map(src.read_windows)
    indexed, _ = rate(by_index(ds), tokens, seconds)
    print(
        f"  (c') MapDataset.range(len(src)).shuffle(seed=0).batch({batch}).map(src.read_windows):"
        f" {indexed / 1e6:6.1f}M tok/s"
    )
    for name, src in sources.items():
        with grain_batch_pushdown() as on:
            if not on:
                print(f"  this grain has no batched-read pushdown flag: {name} not timed with it")
                continue
            ds = grain.MapDataset.source(src).shuffle(seed=0).batch(batch)
            indexed, _ = rate(by_index(ds), tokens, seconds)
        print(
            f"  pushdown {name:<30} batch {batch} x {seq_len + 1}:  ds[k] {indexed / 1e6:6.1f}M tok/s (via _getitems)"
        )
    print(f"  {memory()}")


def design_choices(src: PackedWindowSource, batch: int, seconds: float) -> None:
    """The numbers behind two choices in pipeline.py: no Grain read threads, no index_shuffle below 2**24 windows."""
    tokens = batch * (src.seq_len + 1)
    ds = host_train_dataset(src, global_batch_size=batch, seed=0, rows=(0, batch))
    for threads, buffer in [(0, 0), (1, 4), (2, 16), (4, 16)]:
        it = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=buffer)))
        tok_s, _ = rate(it, tokens, seconds / 3)
        it.close()
        options = f"num_threads={threads}, prefetch_buffer_size={buffer:>2}"
        print(f"  Grain ReadOptions({options}): {tok_s / 1e6:6.1f}M tok/s")
    for n in [8, 100, 1535, 65536, 10**8]:
        calls = max(20, min(20000, 200_000 // n))
        start = time.perf_counter()
        for i in range(calls):
            grain.experimental.index_shuffle(i % n, n - 1, 5, 4)
        per_call = (time.perf_counter() - start) / calls
        print(f"  grain index_shuffle over N = {n:>11,} windows: {per_call * 1e6:8.1f} us per window")
    sharding = NamedSharding(jax.make_mesh((jax.device_count(),), ("data",)), P("data"))
    local = {"inputs": np.zeros((batch, src.seq_len), np.int32), "targets": np.zeros((batch, src.seq_len), np.int32)}
    jax.block_until_ready(jax.device_put(local, sharding))
    start = time.perf_counter()
    for _ in range(500):
        out = jax.device_put(local, sharding)
    jax.block_until_ready(out)
    per_put_us = (time.perf_counter() - start) / 500 * 1e6
    print(f"  jax.device_put of one {batch} x {src.seq_len} inputs+targets dict: {per_put_us:.0f} us")


MIXTURE_WEIGHTS = (0.5, 0.3, 0.2)


def mixture_of(paths: list, seq_len: int, block: int) -> Mixture:
    sources = [PackedWindowSource(p, seq_len) for p in paths]
    return Mixture(["a", "b", "c"], sources, [(1, list(MIXTURE_WEIGHTS))], block)


def proportions(mix: Mixture, batch: int, steps: int) -> None:
    """Each component's share of the sequences of steps 1..steps, and the extremes over every window of 1000 (or
    100) consecutive steps, from the order the batches are read in."""
    labels, _ = mix.order(batch, seed=0).draws(0, steps * batch)
    per_step_SxC = (labels[:, None] == np.arange(3)).reshape(steps, batch, 3).sum(axis=1)
    cum_SxC = np.concatenate([np.zeros((1, 3), np.int64), np.cumsum(per_step_SxC, axis=0)])
    line = f"  batch {batch:>3}, {steps} steps: shares " + " / ".join(
        f"{s:.4f}" for s in cum_SxC[-1] / cum_SxC[-1].sum()
    )
    for span in (1000, 100):
        shares = (cum_SxC[span:] - cum_SxC[:-span]) / (span * batch)
        worst = np.abs(shares - np.asarray(MIXTURE_WEIGHTS)).max()
        line += f" | any {span} steps: worst |share - weight| {worst:.4f}"
    print(line)


def mixture_bench(args) -> None:
    """A 3-component mixture: loader speed (bundled files, synthetic files) and realised proportions."""
    names = ["redpajama_v2_samples_512_train.pbin", "redpajama_v2_samples_512_test.pbin", "lorem_ipsum_long.pbin"]
    bundled = mixture_of([REPO / "tests" / "data" / n for n in names], args.seq_len, args.mixture_block)
    print(f"mixture {MIXTURE_WEIGHTS}, data.mixture_block={args.mixture_block}; first the largest file alone")
    measure("bundled RedPajama train .pbin", PackedWindowSource(BUNDLED, args.seq_len), args.batch, args.seconds)
    measure("mixture of 3 bundled .pbin", bundled, args.batch, args.seconds)
    with tempfile.TemporaryDirectory() as tmp:
        paths = [pathlib.Path(tmp) / f"synthetic{c}.pbin" for c in range(3)]
        sizes = [args.synthetic_mib // 2**c for c in range(3)]  # 256, 128 and 64 MiB by default
        for path, mib in zip(paths, sizes):
            write_synthetic(path, mib * 2**20 // 2)
        synthetic = mixture_of(paths, args.seq_len, args.mixture_block)
        name = f"mixture of synthetic {'+'.join(map(str, sizes))} MiB"
        measure(name, synthetic, args.batch, args.seconds)
        measure(name, synthetic, 8 * args.batch, args.seconds)
    print("realised proportions (weights " + " / ".join(map(str, MIXTURE_WEIGHTS)) + "):")
    for batch in (args.batch, 8 * args.batch):
        proportions(bundled, batch, args.steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--synthetic-mib", type=int, default=256)
    parser.add_argument("--user-batch", type=int, default=64, help="batch of (c), a user's Grain pipeline")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of the before/after reads")
    parser.add_argument("--design", action="store_true", help="also time the alternatives pipeline.py rejected")
    parser.add_argument("--mixture", action="store_true", help="a 3-component data.mixture instead (mixture.py)")
    parser.add_argument("--mixture-block", type=int, default=512, help="data.mixture_block of --mixture")
    parser.add_argument("--steps", type=int, default=2000, help="steps whose proportions --mixture reports")
    args = parser.parse_args()
    print(f"jax {jax.__version__}, grain {grain.__version__}, devices {jax.devices()}, cpus {os.cpu_count()}")
    if args.mixture:
        mixture_bench(args)
        return
    print(f"start: {memory()}")
    print("(a) jaxgpt's pipeline")
    bundled = PackedWindowSource(BUNDLED, args.seq_len)
    measure("bundled RedPajama train .pbin", bundled, args.batch, args.seconds)
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "synthetic.pbin"
        write_synthetic(path, args.synthetic_mib * 2**20 // 2)
        name = f"synthetic {args.synthetic_mib} MiB .pbin"
        measure(name, PackedWindowSource(path, args.seq_len), args.batch, args.seconds)
        measure(name, PackedWindowSource(path, args.seq_len), 8 * args.batch, args.seconds)
        src = PackedWindowSource(path, args.seq_len, VOCAB_SIZE)
        print(f"  {memory()}")
        sources = {
            "before: read_windows per window": ReadWindowsGetitem(path, args.seq_len, VOCAB_SIZE),
            "after: scalar __getitem__": src,
        }
        print(f"(b) per-window reads, {name}, {len(src):,} windows")
        per_window_reads(sources, args.seconds, args.rounds)
        print(f"(c) grain.MapDataset.source(src).shuffle(seed=0).batch({args.user_batch}), {name}")
        sources["zero-cost source (Grain alone)"] = ZeroCost(len(src), args.seq_len)
        user_pipeline(sources, args.user_batch, args.seq_len, args.seconds, args.rounds)
    if args.design:
        print("design choices (bundled .pbin):")
        design_choices(bundled, args.batch, args.seconds)


if __name__ == "__main__":
    main()
