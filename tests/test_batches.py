"""Training and eval batches: (seed, step) order, per-epoch permutations, host slicing, exact resume, sharding."""

import pickle
import struct
import threading

import jax
import numpy as np
import pytest
from conftest import TEST_DATA
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxgpt.data.loader import pipeline as batches
from jaxgpt.data.loader.pipeline import (
    eval_batches,
    host_eval_dataset,
    host_rows,
    host_train_dataset,
    process_rows,
    steps_per_epoch,
    train_batches,
)
from jaxgpt.data.loader.source import PackedWindowSource
from jaxgpt.errors import ConfigError, PackedDataError

S = 4  # sequence length of the synthetic source
N = 37  # windows in the synthetic source: tokens 0..4N, so window i starts with token i*S


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> PackedWindowSource:
    data = np.arange(N * S + 1, dtype="<u2").tobytes()
    path = tmp_path_factory.mktemp("pbin") / "arange.pbin"
    path.write_bytes(struct.pack("<QI", len(data), 2) + data + pickle.dumps([(0, len(data))], protocol=4))
    return PackedWindowSource(path, S)


@pytest.fixture(scope="module")
def mesh():
    return jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))


def window_ids(host_batch) -> np.ndarray:
    """Which window each row is, recovered from its first token (window i starts with token i*S)."""
    assert np.all(host_batch["inputs"][:, 0] % S == 0)
    return np.asarray(host_batch["inputs"][:, 0]) // S


def train_ids(source, G, seed, steps, rows=None, start_step=0) -> np.ndarray:
    ds = host_train_dataset(source, global_batch_size=G, seed=seed, rows=rows or (0, G), start_step=start_step)
    return np.stack([window_ids(ds[i]) for i in range(steps)])  # [steps, rows]


def test_steps_per_epoch_is_modalities_floor():
    assert steps_per_epoch(37, 8) == 4  # = Modalities' 37 // dp // micro_batch // grad_accum for 37 // 2 // 2 // 2
    assert steps_per_epoch(np.int64(16), 8) == 2
    with pytest.raises(ConfigError, match="7 windows, fewer than one global batch of 8"):
        steps_per_epoch(7, 8)


def test_inputs_and_targets_are_the_window_shifted(source):
    b = host_train_dataset(source, global_batch_size=8, seed=0, rows=(0, 8))[3]
    for row_in, row_tgt, i in zip(b["inputs"], b["targets"], window_ids(b)):
        np.testing.assert_array_equal(row_in, np.arange(i * S, i * S + S))
        np.testing.assert_array_equal(row_tgt, np.arange(i * S + 1, i * S + S + 1))
    assert b["inputs"].dtype == np.int32 and b["inputs"].shape == (8, S)


def test_same_seed_same_batches_other_seed_other_batches(source):
    a = train_ids(source, 8, seed=3, steps=10)
    np.testing.assert_array_equal(a, train_ids(source, 8, seed=3, steps=10))
    assert not np.array_equal(a, train_ids(source, 8, seed=4, steps=10))


def test_each_epoch_is_a_fresh_permutation(source):
    G = 8
    E = steps_per_epoch(source, G)  # 4 steps, 32 of 37 windows per epoch
    ids = train_ids(source, G, seed=0, steps=3 * E).reshape(3, E * G)  # [epoch, position]
    for epoch in ids:
        assert len(set(epoch.tolist())) == E * G  # no window twice within an epoch
        assert set(epoch.tolist()) <= set(range(N))
    assert not np.array_equal(ids[0], ids[1]) and not np.array_equal(ids[1], ids[2])
    # The dropped remainders differ between epochs, so every window is seen over a few epochs.
    assert set(ids.ravel().tolist()) == set(range(N))


def test_seeds_do_not_alias_across_epochs(source):
    """Grain/Modalities seed epoch e with seed + e; ours hashes (seed, e), so seed 1's epoch 0 != seed 0's epoch 1."""
    E = steps_per_epoch(source, 8)
    assert not np.array_equal(train_ids(source, 8, 0, E, start_step=E), train_ids(source, 8, 1, E))


def test_order_is_pinned_for_the_bundled_redpajama():
    """A changed order would silently break resuming older checkpoints: pin seed 0's first two global batches."""
    src = PackedWindowSource(TEST_DATA / "redpajama_v2_samples_512_train.pbin", 512)
    ids = [batches.batch_windows(len(src), 8, 0, k, (0, 8)).tolist() for k in range(2)]
    assert ids == [[848, 838, 996, 385, 226, 212, 888, 1279], [941, 1029, 1000, 150, 348, 109, 1464, 1326]]


@pytest.mark.parametrize("hosts", [2, 4])
def test_hosts_together_equal_the_single_host_batch(source, hosts):
    G, steps = 8, 9  # crosses an epoch boundary
    whole = train_ids(source, G, seed=5, steps=steps)
    parts = [train_ids(source, G, seed=5, steps=steps, rows=process_rows(G, h, hosts)) for h in range(hosts)]
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), whole)
    E = steps_per_epoch(source, G)
    epoch0 = np.concatenate([p[:E].ravel() for p in parts])
    assert sorted(epoch0.tolist()) == sorted(whole[:E].ravel().tolist()) and len(set(epoch0.tolist())) == E * G


def test_restart_at_step_k_continues_the_sequence(source):
    full = train_ids(source, 8, seed=2, steps=12)
    for k in (1, 4, 7):
        np.testing.assert_array_equal(train_ids(source, 8, seed=2, steps=12 - k, start_step=k), full[k:])


def test_index_shuffle_path_for_huge_datasets(source, monkeypatch):
    """Above PERMUTATION_MAX_WINDOWS each position is Grain's index_shuffle: still a permutation, still resumable."""
    monkeypatch.setattr(batches, "PERMUTATION_MAX_WINDOWS", 0)
    E = steps_per_epoch(source, 8)
    ids = train_ids(source, 8, seed=1, steps=2 * E)
    assert len(set(ids[:E].ravel().tolist())) == E * 8 and len(set(ids[E:].ravel().tolist())) == E * 8
    assert not np.array_equal(ids[:E], ids[E:])
    np.testing.assert_array_equal(train_ids(source, 8, seed=1, steps=E, start_step=E), ids[E:])


@pytest.mark.parametrize(
    "spec", [P(("data", "fsdp")), P("data"), P(("data", "fsdp", "tensor"), None), P(("data", "fsdp"), "tensor"), P()]
)
def test_global_arrays_on_an_8_device_mesh(source, mesh, spec):
    sharding = NamedSharding(mesh, spec)
    host = host_train_dataset(source, global_batch_size=8, seed=0, rows=(0, 8), start_step=2)
    with train_batches(source, global_batch_size=8, seed=0, sharding=sharding, start_step=2) as it:
        for k, batch in zip(range(5), it):
            assert set(batch) == {"inputs", "targets"}
            for name, arr in batch.items():
                assert isinstance(arr, jax.Array) and arr.shape == (8, S) and arr.dtype == np.int32
                assert arr.sharding.is_equivalent_to(sharding, 2)
                np.testing.assert_array_equal(np.asarray(arr), host[k][name])
    assert {s.data.shape[0] for s in batch["inputs"].addressable_shards} == {8 // batches.data_parallel_size(sharding)}


def test_close_stops_threads_and_refuses_next(source, mesh):
    sharding = NamedSharding(mesh, P(("data", "fsdp")))
    before = set(threading.enumerate())
    it = train_batches(source, global_batch_size=8, seed=0, sharding=sharding, prefetch=3)
    next(it)
    assert set(threading.enumerate()) - before  # the prefetch thread runs
    it.close()
    it.close()  # idempotent
    assert set(threading.enumerate()) - before == set()
    with pytest.raises(ValueError, match="closed"):
        next(it)


def eval_rows(source, G, rows):
    return list(host_eval_dataset(source, global_batch_size=G, rows=rows))


@pytest.mark.parametrize("G", [8, 37, 64])
def test_eval_covers_every_window_once_with_mask(source, G):
    bs = eval_rows(source, G, (0, G))
    assert len(bs) == -(-N // G)
    inputs = np.concatenate([b["inputs"] for b in bs])
    mask = np.concatenate([b["mask"] for b in bs])
    assert mask.dtype == np.float32 and mask.shape == (len(bs) * G, S)
    real = mask[:, 0] == 1
    assert real.sum() == N and np.all(real[:N]) and np.all(mask[real] == 1) and np.all(mask[~real] == 0)
    np.testing.assert_array_equal(inputs[:N, 0] // S, np.arange(N))  # unshuffled, in order
    np.testing.assert_array_equal(np.concatenate([b["targets"] for b in bs])[:N, -1], np.arange(1, N + 1) * S)
    assert np.all(inputs[~real] == 0)


def test_eval_same_for_one_and_two_hosts(source):
    whole = eval_rows(source, 8, (0, 8))
    halves = [eval_rows(source, 8, process_rows(8, h, 2)) for h in range(2)]
    for w, a, b in zip(whole, *halves, strict=True):
        for k in w:
            np.testing.assert_array_equal(np.concatenate([a[k], b[k]]), w[k])


def test_eval_batches_are_sharded_and_finite(source, mesh):
    sharding = NamedSharding(mesh, P(("data", "fsdp")))
    with eval_batches(source, global_batch_size=8, sharding=sharding) as it:
        got = list(it)
    assert len(got) == 5
    for b, ref in zip(got, eval_rows(source, 8, (0, 8))):
        assert b["mask"].dtype == np.float32 and b["mask"].sharding.is_equivalent_to(sharding, 2)
        for k in ("inputs", "targets", "mask"):
            np.testing.assert_array_equal(np.asarray(b[k]), ref[k])


def test_batch_not_divisible_by_data_parallel_size(source, mesh):
    with pytest.raises(ConfigError, match=r"global batch size 6 is not divisible by the data-parallel size 4"):
        train_batches(source, global_batch_size=6, seed=0, sharding=NamedSharding(mesh, P(("data", "fsdp"))))
    with pytest.raises(ConfigError, match=r"global batch size 6 is not divisible by the data-parallel size 4"):
        eval_batches(source, global_batch_size=6, sharding=NamedSharding(mesh, P(("data", "tensor"))))
    assert host_rows(NamedSharding(mesh, P("data")), 6) == (0, 6)


def test_batch_not_divisible_by_process_count():
    with pytest.raises(ConfigError, match="global batch size 6 is not divisible by the process count 4"):
        process_rows(6, 1, 4)
    with pytest.raises(ValueError, match="process_index 2 is out of range for 2 processes"):
        process_rows(6, 2, 2)


def test_fewer_windows_than_one_global_batch(source, mesh):
    with pytest.raises(ConfigError, match=r"arange.pbin.*has 37 windows, fewer than one global batch of 40"):
        train_batches(source, global_batch_size=40, seed=0, sharding=NamedSharding(mesh, P(("data", "fsdp"))))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"global_batch_size": 0}, "global_batch_size=0 must be an int >= 1"),
        ({"seed": -1}, "data.seed=-1 must be an int >= 0"),
        ({"start_step": -2}, "start_step=-2 must be an int >= 0"),
        ({"start_step": 1.5}, "start_step=1.5 must be an int >= 0"),
        ({"prefetch": -1}, "prefetch=-1 must be an int >= 0"),
    ],
)
def test_bad_arguments(source, mesh, kwargs, message):
    args = {"global_batch_size": 8, "seed": 0, "sharding": NamedSharding(mesh, P("data"))} | kwargs
    with pytest.raises(ConfigError, match=message):
        train_batches(source, **args)


def test_sharding_must_be_named(source):
    with pytest.raises(ValueError, match="must be a jax.sharding.NamedSharding, got SingleDeviceSharding"):
        train_batches(source, global_batch_size=8, seed=0, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))


def test_read_errors_surface_from_the_iterator(tmp_path, mesh):
    """A token id that does not fit int32 is raised by next(), not swallowed by the prefetch thread."""
    data = np.full(33, 2**31 + 1, dtype="<u4").tobytes()
    path = tmp_path / "wide.pbin"
    path.write_bytes(struct.pack("<QI", len(data), 4) + data + pickle.dumps([(0, len(data))], protocol=4))
    src = PackedWindowSource(path, S)
    with train_batches(src, global_batch_size=8, seed=0, sharding=NamedSharding(mesh, P("data"))) as it:
        with pytest.raises(PackedDataError, match="wide.pbin: token id >= 2\\*\\*31"):
            next(it)


def test_rows_owned_by_this_process_must_be_the_rows_it_reads(mesh, monkeypatch):
    """Pretend to be process 0 of 2 while owning all 8 devices: the feed would be half the rows, so it refuses."""
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    with pytest.raises(ValueError, match=r"process 0 of 2 owns batch rows \[0, 8\].*feeds rows \[0, 4\]"):
        host_rows(NamedSharding(mesh, P(("data", "fsdp"))), 8)
