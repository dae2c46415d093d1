"""PackedWindowSource: Modalities' continuous windows, file concatenation, pickling, thread safety, bad input."""

import json
import multiprocessing
import pathlib
import pickle
import struct
import subprocess
import threading
from concurrent.futures import ProcessPoolExecutor

import grain
import numpy as np
import pytest
from conftest import MODALITIES_PYTHON, TEST_DATA, needs_modalities

from jaxgpt.data.format.pbin import read_pbin
from jaxgpt.data.loader.source import PackedWindowSource
from jaxgpt.errors import ConfigError, PackedDataError

REDPAJAMA_TRAIN = TEST_DATA / "redpajama_v2_samples_512_train.pbin"
REDPAJAMA_TEST = TEST_DATA / "redpajama_v2_samples_512_test.pbin"


def write_pbin(path: pathlib.Path, tokens, width: int = 2) -> pathlib.Path:
    """A valid .pbin holding `tokens` as one document."""
    data = np.asarray(tokens, dtype={1: "<u1", 2: "<u2", 4: "<u4"}[width]).tobytes()
    path.write_bytes(struct.pack("<QI", len(data), width) + data + pickle.dumps([(0, len(data))], protocol=4))
    return path


def test_hand_computed_modalities_windows(tmp_path):
    src = PackedWindowSource(write_pbin(tmp_path / "a.pbin", range(20)), seq_len=9)
    assert len(src) == 2 and src.num_tokens == 20 and src.width == 2
    np.testing.assert_array_equal(src[0], np.arange(0, 10))
    np.testing.assert_array_equal(src[1], np.arange(9, 19))
    assert src[0].dtype == np.int32 and src[0].shape == (10,)


@pytest.mark.parametrize("num_tokens", [2, 10, 11, 20, 21, 57])
def test_window_count_matches_modalities_formula(tmp_path, num_tokens):
    path = write_pbin(tmp_path / "a.pbin", range(num_tokens))
    for seq_len in range(1, num_tokens):
        block = seq_len + 1  # Modalities' block_size: num_samples = (T - block) // (block - 1) + 1
        src = PackedWindowSource(path, seq_len)
        assert len(src) == (num_tokens - block) // (block - 1) + 1
        last = src[len(src) - 1]
        np.testing.assert_array_equal(last, np.arange((len(src) - 1) * seq_len, len(src) * seq_len + 1))


def test_windows_equal_slices_of_bundled_redpajama():
    tokens = read_pbin(REDPAJAMA_TRAIN).tokens()
    src = PackedWindowSource(REDPAJAMA_TRAIN, seq_len=512)
    assert len(src) == (len(tokens) - 1) // 512
    picks = np.array([0, 1, 7, 700, len(src) - 1])
    windows = src.read_windows(picks)
    for row, i in zip(windows, picks):
        np.testing.assert_array_equal(row, tokens[i * 512 : i * 512 + 513].astype(np.int32))
        np.testing.assert_array_equal(src[int(i)], row)
    np.testing.assert_array_equal(src._getitems([3, 1]), src.read_windows(np.array([3, 1])))


def test_files_are_windowed_separately_then_concatenated(tmp_path):
    a = write_pbin(tmp_path / "a.pbin", range(0, 23))  # 5 windows of S=4, tail 22 dropped
    b = write_pbin(tmp_path / "b.pbin", range(100, 110))  # 2 windows, tail 109 dropped
    src = PackedWindowSource([a, str(b)], seq_len=4)
    assert len(src) == 7 and src.windows_per_file == (5, 2) and src.num_tokens == 33
    assert src.paths == (str(a), str(b))
    expected = [np.arange(4 * i, 4 * i + 5) for i in range(5)] + [np.arange(100, 105), np.arange(104, 109)]
    np.testing.assert_array_equal(src.read_windows(np.arange(7)), np.stack(expected))
    np.testing.assert_array_equal(src.read_windows(np.array([6, 0, 5, 4])), np.stack(expected)[[6, 0, 5, 4]])


def test_pickles_without_memmap_and_reads_after_unpickle():
    src = PackedWindowSource([REDPAJAMA_TRAIN, REDPAJAMA_TEST], seq_len=128)
    expected = src.read_windows(np.array([0, 5, len(src) - 1]))  # opens the memmaps
    blob = pickle.dumps(src)
    assert len(blob) < 2000  # paths and counts only, never the tokens
    clone = pickle.loads(blob)
    assert clone._fds is None and len(clone) == len(src)
    np.testing.assert_array_equal(clone.read_windows(np.array([0, 5, len(src) - 1])), expected)


def test_reads_in_a_fresh_worker_process():
    """What Grain's mp_prefetch does: the source travels by pickle to a spawned process that opens its own memmaps."""
    src = PackedWindowSource([REDPAJAMA_TRAIN, REDPAJAMA_TEST], seq_len=512)
    picks = np.array([len(src) - 1, 0, src.windows_per_file[0]])
    expected = src.read_windows(picks)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        np.testing.assert_array_equal(pool.submit(src.read_windows, picks).result(timeout=60), expected)


def test_concurrent_first_reads_are_correct():
    src = PackedWindowSource(REDPAJAMA_TRAIN, seq_len=64)
    tokens = read_pbin(REDPAJAMA_TRAIN).tokens()
    errors = []

    def read(offset):
        try:
            for i in range(offset, len(src), 97):
                if not np.array_equal(src[i], tokens[i * 64 : i * 64 + 65]):
                    errors.append(i)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=read, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@pytest.mark.parametrize("width", [1, 4])
def test_other_token_widths(tmp_path, width):
    tokens = np.arange(30) * (3 if width == 1 else 70001)
    src = PackedWindowSource(write_pbin(tmp_path / "w.pbin", tokens, width), seq_len=7)
    expected = np.stack([tokens[7 * i : 7 * i + 8] for i in range(4)])
    np.testing.assert_array_equal(src.read_windows(np.arange(len(src))), expected)


def test_token_id_beyond_int32_is_refused(tmp_path):
    path = write_pbin(tmp_path / "big.pbin", [1, 2, 3, 2**31 + 5, 4], width=4)
    src = PackedWindowSource(path, seq_len=2)
    np.testing.assert_array_equal(src[0], [1, 2, 3])
    with pytest.raises(PackedDataError, match="big.pbin.*2\\*\\*31"):
        src[1]


def test_missing_file(tmp_path):
    with pytest.raises(PackedDataError, match="nope.pbin: no such file"):
        PackedWindowSource([write_pbin(tmp_path / "a.pbin", range(9)), tmp_path / "nope.pbin"], seq_len=2)


def test_seq_len_too_long_names_the_file(tmp_path):
    path = write_pbin(tmp_path / "short.pbin", range(10))
    PackedWindowSource(path, seq_len=9)  # exactly one window
    with pytest.raises(PackedDataError, match=r"short.pbin: 10 tokens hold no window of seq_len \+ 1 = 11"):
        PackedWindowSource(path, seq_len=10)


def test_different_token_widths_are_refused(tmp_path):
    a = write_pbin(tmp_path / "a.pbin", range(9), width=2)
    b = write_pbin(tmp_path / "b.pbin", range(9), width=4)
    with pytest.raises(PackedDataError, match=r"b.pbin: token width 4 bytes differs from .*a.pbin \(2 bytes\)"):
        PackedWindowSource([a, b], seq_len=2)


@pytest.mark.parametrize("seq_len", [0, -3, True, 2.5, "8"])
def test_bad_seq_len(tmp_path, seq_len):
    with pytest.raises(ConfigError, match="seq_len=.* must be an int >= 1"):
        PackedWindowSource(write_pbin(tmp_path / "a.pbin", range(9)), seq_len=seq_len)


def test_no_paths():
    with pytest.raises(ConfigError, match="at least one .pbin path"):
        PackedWindowSource([], seq_len=4)


def write_three(tmp_path, width: int, high: int) -> list[pathlib.Path]:
    """Three files of 53, 200 and 31 random ids below `high`: windows of unequal counts, tails of unequal lengths."""
    rng = np.random.default_rng(width)
    return [write_pbin(tmp_path / f"{k}.pbin", rng.integers(0, high, n), width) for k, n in enumerate([53, 200, 31])]


@pytest.mark.parametrize("reuse_last_target", [True, False])
@pytest.mark.parametrize("width", [1, 2, 4])
def test_getitem_and_batched_reads_equal_read_windows(tmp_path, width, reuse_last_target):
    paths = write_three(tmp_path, width, {1: 256, 2: 50304, 4: 50304}[width])
    src = PackedWindowSource(paths, seq_len=6, vocab_size=50304, reuse_last_target=reuse_last_target)
    np.testing.assert_array_equal(src.read_windows(np.arange(len(src))), np.stack(_windows(src, paths)))
    picks = np.random.default_rng(0).integers(0, len(src), 400)  # every file, repeats, both boundaries likely
    expected_NxW = src.read_windows(picks)
    scalar = [src[i] for i in picks]  # numpy ints, as Grain's index arithmetic may pass
    assert all(w.dtype == np.int32 and w.shape == (7,) and w.flags.writeable for w in scalar)
    np.testing.assert_array_equal(np.stack(scalar), expected_NxW)
    np.testing.assert_array_equal(np.stack([src[int(i)] for i in picks]), expected_NxW)
    np.testing.assert_array_equal(np.stack(src._getitems(picks.tolist())), expected_NxW)
    np.testing.assert_array_equal(np.stack(src.__getitems__(list(picks))), expected_NxW)
    clone = pickle.loads(pickle.dumps(src))
    np.testing.assert_array_equal(np.stack([clone[i] for i in picks]), expected_NxW)


def _windows(src: PackedWindowSource, paths) -> list[np.ndarray]:
    """Every window, file by file, sliced from the tokens read by read_pbin."""
    out = []
    for path, count in zip(paths, src.windows_per_file):
        tokens = read_pbin(path).tokens().astype(np.int32)
        out += [tokens[i * src.stride : i * src.stride + src.seq_len + 1] for i in range(count)]
    return out


def test_grain_map_dataset_batches_equal_read_windows():
    """A user's own pipeline, MapDataset.source(src).shuffle(...).batch(...): Grain's order, our windows."""
    src = PackedWindowSource([REDPAJAMA_TRAIN, REDPAJAMA_TEST], seq_len=128, vocab_size=50304)
    ds = grain.MapDataset.source(src).shuffle(seed=3).batch(16, drop_remainder=True)
    order = grain.MapDataset.range(len(src)).shuffle(seed=3)  # Grain's shuffle depends on the length and seed only
    batches = [0, 1, src.windows_per_file[0] // 16, len(ds) - 1]  # one straddles the file boundary
    for b in batches:
        picks = np.array([order[k] for k in range(16 * b, 16 * b + 16)])
        np.testing.assert_array_equal(ds[b], src.read_windows(picks))
    iterated = list(ds.to_iter_dataset())  # Grain's prefetch threads call __getitem__ concurrently
    assert len(iterated) == len(ds)
    for b in batches:
        np.testing.assert_array_equal(iterated[b], ds[b])
    # What batch calls when Grain's batched-read pushdown is on: the shuffle's _getitems reaches ours.
    shuffled = grain.MapDataset.source(src).shuffle(seed=3)
    np.testing.assert_array_equal(np.stack(shuffled._getitems(list(range(16, 32)))), ds[1])


def test_errors_fire_on_every_read_path(tmp_path):
    """__getitem__'s fast path raises what read_windows raises: vocab, int32, out of range, a bad index."""
    src = PackedWindowSource(write_pbin(tmp_path / "v.pbin", [1, 2, 3, 60000, 4, 5, 6]), seq_len=2, vocab_size=50304)
    reads = [src.__getitem__, lambda i: src._getitems([i])[0], grain.MapDataset.source(src).__getitem__]
    for read in reads:
        np.testing.assert_array_equal(read(0), [1, 2, 3])
        with pytest.raises(PackedDataError, match=r"v\.pbin: window 1 holds token id 60000 >= model.vocab_size=50304"):
            read(1)
    wide = write_pbin(tmp_path / "w.pbin", [1, 2, 3, 2**31 + 5, 4], width=4)
    with pytest.raises(PackedDataError, match=r"w\.pbin: token id >= 2\*\*31"):  # checked before the vocab
        PackedWindowSource(wide, seq_len=2, vocab_size=50304)[1]
    two = PackedWindowSource([tmp_path / "v.pbin", write_pbin(tmp_path / "u.pbin", [7, 8, 9, 10, 11])], seq_len=2)
    np.testing.assert_array_equal(two[np.int64(3)], [7, 8, 9])  # the second file's window 0
    with pytest.raises(IndexError, match="window 5 out of range.*has 5 windows"):
        two[5]
    with pytest.raises(IndexError, match="1-D int array"):
        two[0.5]


def test_out_of_range_and_bad_indices(tmp_path):
    src = PackedWindowSource(write_pbin(tmp_path / "a.pbin", range(20)), seq_len=9)
    with pytest.raises(IndexError, match="window 2 out of range.*has 2 windows"):
        src[2]
    with pytest.raises(IndexError, match="window -1 out of range"):
        src[-1]
    with pytest.raises(IndexError, match="1-D int array"):
        src.read_windows(np.array([0.5]))


@needs_modalities
def test_equals_modalities_combined_continuous_dataset():
    """Modalities itself reads the same windows through CombinedDataset(PackedMemMapDatasetContinuous...)."""
    seq_len = 256
    src = PackedWindowSource([REDPAJAMA_TRAIN, REDPAJAMA_TEST], seq_len)
    n_train = src.windows_per_file[0]
    picks = [0, 1, 1000, n_train - 1, n_train, n_train + 1, len(src) - 1]  # across the file boundary
    script = f"""
import json
from pathlib import Path
from modalities.dataloader.dataset import CombinedDataset, PackedMemMapDatasetContinuous
paths = {[str(REDPAJAMA_TRAIN), str(REDPAJAMA_TEST)]!r}
ds = CombinedDataset([PackedMemMapDatasetContinuous(Path(p), "x", {seq_len} + 1, True) for p in paths])
print(json.dumps({{"len": int(len(ds)), "rows": [[int(t) for t in ds[i]["x"]] for i in {picks!r}]}}))
"""
    cmd = [str(MODALITIES_PYTHON), "-c", script]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)
    ref = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(src) == ref["len"]
    np.testing.assert_array_equal(src.read_windows(np.array(picks)), np.array(ref["rows"]))


SFT_GOLDEN = TEST_DATA / "sft" / "expected"


@pytest.mark.parametrize("split", ["train", "test"])
def test_disjoint_windows_equal_modalities_reuse_last_target_false(split):
    """reuse_last_target=False: Modalities' own windows of the packed chats (tests/data/sft), every one, in order."""
    golden = np.load(SFT_GOLDEN / "windows_and_masks.npz")
    pbin = SFT_GOLDEN / "chat_553cbc2" / f"chat_{split}.553cbc2.pbin"
    src = PackedWindowSource(pbin, seq_len=64, reuse_last_target=False)
    np.testing.assert_array_equal(src.read_windows(np.arange(len(src))), golden[f"windows_{split}"])
    overlap = golden[f"windows_overlap_{split}"]  # and the overlapping windows of the same file
    np.testing.assert_array_equal(PackedWindowSource(pbin, seq_len=64).read_windows(np.arange(len(overlap))), overlap)


@pytest.mark.parametrize("num_tokens", [9, 10, 11, 19, 20, 21, 100])
def test_disjoint_window_count_is_modalities_formula(tmp_path, num_tokens):
    path = write_pbin(tmp_path / "a.pbin", range(num_tokens))
    if num_tokens < 10:
        with pytest.raises(PackedDataError, match="hold no window"):
            PackedWindowSource(path, seq_len=9, reuse_last_target=False)
        return
    src = PackedWindowSource(path, seq_len=9, reuse_last_target=False)
    assert len(src) == num_tokens // 10  # Modalities: total_tokens // block_size
    np.testing.assert_array_equal(src.read_windows(np.arange(len(src))), np.arange(len(src) * 10).reshape(-1, 10))


@needs_modalities
def test_disjoint_windows_equal_modalities_class_live():
    """Modalities itself, PackedMemMapDatasetContinuous(reuse_last_target=False), on the RedPajama sample."""
    src = PackedWindowSource([REDPAJAMA_TRAIN], 127, reuse_last_target=False)
    picks = [0, 1, 2, 1000, len(src) - 1]
    script = f"""
import json
from pathlib import Path
from modalities.dataloader.dataset import PackedMemMapDatasetContinuous
ds = PackedMemMapDatasetContinuous(Path({str(REDPAJAMA_TRAIN)!r}), "x", 128, False)
print(json.dumps({{"len": int(len(ds)), "rows": [[int(t) for t in ds[i]["x"]] for i in {picks!r}]}}))
"""
    out = subprocess.run(
        [str(MODALITIES_PYTHON), "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    ref = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(src) == ref["len"]
    np.testing.assert_array_equal(src.read_windows(np.array(picks)), np.array(ref["rows"]))


def test_a_file_truncated_or_removed_while_in_use_is_a_clean_error(tmp_path):
    path = write_pbin(tmp_path / "a.pbin", range(40))
    src = PackedWindowSource(path, seq_len=9)
    np.testing.assert_array_equal(src[3], np.arange(27, 37))
    with open(path, "r+b") as f:  # cut inside window 3 (tokens 27..36: bytes 66..86)
        f.truncate(12 + 2 * 30)
    with pytest.raises(PackedDataError, match=r"a\.pbin: window 3 ends at byte 86, past the file's 72 bytes"):
        src[3]
    np.testing.assert_array_equal(src[0], np.arange(0, 10))  # what is still there reads as before
    fresh = PackedWindowSource(write_pbin(tmp_path / "b.pbin", range(40)), seq_len=9)
    (tmp_path / "b.pbin").unlink()  # after the header was read, before the first window
    with pytest.raises(PackedDataError, match=r"b\.pbin: cannot open for reading: No such file"):
        fresh[0]


def test_reading_windows_leaves_the_resident_set_alone(tmp_path):
    # a memmap's pages count in the process's RSS as it touches them; positioned reads leave them in the page cache
    path = write_pbin(tmp_path / "big.pbin", np.arange(16_000_000) % 50_000)  # 32 MB of tokens
    src = PackedWindowSource(path, seq_len=1023)

    def rss_file_kib() -> int:
        status = pathlib.Path("/proc/self/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("RssFile:")).split()[1])

    before = rss_file_kib()
    for start in range(0, len(src), 512):
        src.read_windows(np.arange(start, min(start + 512, len(src))))  # every window once: the whole file
    for i in range(len(src)):
        src[i]  # and once more through the per-window path
    assert rss_file_kib() - before < 8 * 1024  # KiB; a memmap read this way adds the file's 32 MB
