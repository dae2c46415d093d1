"""The .pbin/.idx format: width rule, byte-exact index pickles, untrusted pickles, old offsets, corrupt files, merge."""

import io
import os
import pickle
import shutil
import signal
import struct
import time

import numpy as np
import pytest
from conftest import TEST_DATA

from jaxgpt.cli import sigterm_exits
from jaxgpt.data.format.pbin import (
    HEADER_BYTES,
    PackedDataError,
    merge_pbin,
    read_header,
    read_idx,
    read_idx_array,
    read_pbin,
    token_width,
)
from jaxgpt.data.format.pickles import load_pairs, write_pairs
from jaxgpt.errors import JaxgptError
from jaxgpt.io import atomic_output

GOLDEN = ["lorem_ipsum", "lorem_ipsum_long", "redpajama_v2_samples_512_train", "redpajama_v2_samples_512_test"]


@pytest.mark.parametrize(
    "vocab,width", [(254, 1), (255, 1), (256, 1), (257, 2), (50257, 2), (65536, 2), (65537, 4), (10_000_000, 4)]
)
def test_token_width_rule(vocab, width):
    assert token_width(vocab) == width


def test_token_width_too_large():
    with pytest.raises(PackedDataError, match="at most 4"):
        token_width(2**32 + 1)


@pytest.mark.parametrize("n", [0, 1, 2, 999, 1000, 1001, 2000, 2001, 30_000])
@pytest.mark.parametrize("scale", [200, 60_000, 2**31 - 3, 2**40, 2**62])
def test_write_pairs_is_pickle_dumps(n, scale):
    pairs_Nx2 = np.random.default_rng(n).integers(0, scale, size=(n, 2))
    if n > 4:  # every int opcode boundary at least once
        pairs_Nx2[:4] = [[0, 255], [256, 65535], [65536, 2**31 - 1], [2**31 if scale > 2**31 else 7, 1]]
    ref = pickle.dumps([tuple(map(int, p)) for p in pairs_Nx2], protocol=4)
    out = io.BytesIO()
    assert write_pairs(out, pairs_Nx2) == len(ref)
    assert out.getvalue() == ref
    back = load_pairs(io.BytesIO(ref), "mem")
    assert back.shape == (n, 2) and np.array_equal(back, pairs_Nx2)


def test_write_pairs_long_ints():
    vals = [2**31 - 1, 2**31, 2**32, 2**39 - 1, 2**39, 2**47, 2**55, 2**63 - 1, 2**7, 2**15, 2**23]
    pairs = [(a, b) for a in vals for b in vals]
    out = io.BytesIO()
    write_pairs(out, np.array(pairs))
    assert out.getvalue() == pickle.dumps(pairs, protocol=4)


@pytest.mark.parametrize("name", GOLDEN)
def test_goldens_read_back(name):
    pf = read_pbin(TEST_DATA / f"{name}.pbin")
    raw = (TEST_DATA / f"{name}.pbin").read_bytes()
    assert not pf.legacy_offsets and pf.width == 2
    assert np.array_equal(pf.doc_bytes, np.array(pickle.loads(raw[HEADER_BYTES + pf.data_len :])))
    idx = read_idx_array(TEST_DATA / f"{name}.idx")
    assert read_idx(TEST_DATA / f"{name}.idx") == pickle.loads((TEST_DATA / f"{name}.idx").read_bytes())
    assert len(idx) == pf.num_docs


class _Evil:
    """Unpickling this would create the marker file: the loader must refuse it before anything runs."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("protocol", [2, 4])
def test_malicious_pickle_refused_in_idx_and_pbin(tmp_path, protocol):
    marker = tmp_path / "pwned"
    payload = pickle.dumps([(0, 4), _Evil(marker)], protocol=protocol)
    idx = tmp_path / "evil.idx"
    idx.write_bytes(payload)
    with pytest.raises(PackedDataError, match=r"evil\.idx.*refusing to load global (builtins|io)\.open"):
        read_idx_array(idx)
    pbin = tmp_path / "evil.pbin"
    pbin.write_bytes(struct.pack("<QI", 4, 2) + b"\x01\x00\x02\x00" + payload)
    with pytest.raises(PackedDataError, match=r"evil\.pbin.*refusing to load global (builtins|io)\.open"):
        read_pbin(pbin)
    assert not marker.exists()


def test_pickle_with_wrong_types_refused(tmp_path):
    for bad, what in [([(0, 4.0)], "4.0"), ([(0, 4, 5)], "(0, 4, 5)"), ({"a": 1}, "dict"), ([(0, -4)], "-4")]:
        path = tmp_path / "bad.idx"
        path.write_bytes(pickle.dumps(bad, protocol=4))
        with pytest.raises(PackedDataError, match=rf"bad\.idx.*{what}"):
            read_idx_array(path)


@pytest.mark.parametrize("protocol", [2, 4])
def test_int_too_large_for_int64_is_named(tmp_path, protocol):
    # Protocol 2 goes through load_pickled_pairs, protocol 4 through the streaming sink (entry 1500: second batch).
    pairs = [(i, 1) for i in range(1500)] + [(0, 2**70)]
    path = tmp_path / "huge.idx"
    path.write_bytes(pickle.dumps(pairs, protocol=protocol))
    with pytest.raises(PackedDataError, match=rf"huge\.idx: index entry 1500 is \(0, {2**70}\): {2**70} does not fit"):
        read_idx_array(path)


def _rewrite(src, dst, mutate):
    raw = bytearray(src.read_bytes())
    dst.write_bytes(bytes(mutate(raw)))
    return dst


def test_truncated_and_corrupt_pbin(tmp_path):
    golden = TEST_DATA / "lorem_ipsum.pbin"
    data_len, width, size = read_header(golden)
    cases = {
        "header": (lambda b: b[:5], "too short for the 12-byte"),
        "data": (lambda b: b[:100], "truncated"),
        "index_cut": (lambda b: b[:-7], "index pickle is corrupt"),
        "index_gone": (lambda b: b[: HEADER_BYTES + data_len], "no document index"),
        "width3": (lambda b: b[:8] + struct.pack("<I", 3) + b[12:], "token width 3"),
        "trailing": (lambda b: b + b"junk", "4 unexpected bytes after the index"),
        # A flipped byte in the offset of document 8: the index still unpickles but no longer tiles the data.
        "flipped_index": (
            lambda b: b[:-30] + bytes([b[-30] ^ 0xFF]) + b[-29:],
            "document 8 starts at byte 54940 but document 7 ends at byte 10652",
        ),
    }
    for name, (mutate, message) in cases.items():
        path = _rewrite(golden, tmp_path / f"{name}.pbin", mutate)
        with pytest.raises(PackedDataError) as e:
            read_pbin(path)
        assert str(e.value).startswith(f"{path}: ") and message in str(e.value), (name, str(e.value))


def test_data_len_disagrees_with_file(tmp_path):
    golden = TEST_DATA / "lorem_ipsum.pbin"
    data_len, _, size = read_header(golden)
    bigger = _rewrite(golden, tmp_path / "big.pbin", lambda b: struct.pack("<Q", size + 1) + b[8:])
    with pytest.raises(PackedDataError, match=rf"big\.pbin: header says {size + 1} data bytes.*truncated"):
        read_pbin(bigger)
    # The index pickle is then read from 2 bytes too early, where the last token lies.
    smaller = _rewrite(golden, tmp_path / "small.pbin", lambda b: struct.pack("<Q", data_len - 2) + b[8:])
    with pytest.raises(PackedDataError, match=r"small\.pbin: index pickle is corrupt or not allowed \(Unpickling"):
        read_pbin(smaller)


def _legacy_copy(src, dst):
    """The same file as Modalities wrote it before mid-2024: index offsets counted from the file start."""
    pf = read_pbin(src)
    with open(dst, "wb") as f:
        f.write(src.read_bytes()[: HEADER_BYTES + pf.data_len])
        f.write(pickle.dumps([(int(o) + HEADER_BYTES, int(n)) for o, n in pf.doc_bytes], protocol=4))
    return dst


def test_legacy_offsets_are_read_and_corrected(tmp_path):
    golden = TEST_DATA / "lorem_ipsum.pbin"
    legacy = read_pbin(_legacy_copy(golden, tmp_path / "old.pbin"))
    current = read_pbin(golden)
    assert legacy.legacy_offsets and not current.legacy_offsets
    assert np.array_equal(legacy.doc_bytes, current.doc_bytes)
    assert np.array_equal(legacy.document(3), current.document(3))


def test_merge_offsets_are_correct_with_legacy_input(tmp_path):
    a = TEST_DATA / "lorem_ipsum.pbin"
    b = _legacy_copy(TEST_DATA / "lorem_ipsum_long.pbin", tmp_path / "old.pbin")
    merged = merge_pbin(tmp_path / "merged.pbin", [a, b, a])
    parts = [read_pbin(a), read_pbin(b), read_pbin(a)]
    assert merged.num_docs == sum(p.num_docs for p in parts)
    assert merged.data_len == sum(p.data_len for p in parts)
    docs = [p.document(i) for p in parts for i in range(p.num_docs)]
    for i in [0, 11, 12, 13, 200, 511, 512, merged.num_docs - 1]:
        assert np.array_equal(merged.document(i), docs[i])
    assert np.array_equal(merged.tokens()[:], np.concatenate([p.tokens()[:] for p in parts]))
    # A merge of one file is that file, byte for byte.
    assert (merge_pbin(tmp_path / "one.pbin", [a]) and (tmp_path / "one.pbin").read_bytes()) == a.read_bytes()


def test_merge_refuses_mixed_widths(tmp_path):
    narrow = tmp_path / "narrow.pbin"
    with open(narrow, "wb") as f:
        f.write(struct.pack("<QI", 3, 1) + b"abc" + pickle.dumps([(0, 3)], protocol=4))
    with pytest.raises(PackedDataError, match="different token widths"):
        merge_pbin(tmp_path / "m.pbin", [TEST_DATA / "lorem_ipsum.pbin", narrow])
    assert not (tmp_path / "m.pbin").exists()


def test_atomic_output_leaves_nothing_on_interrupt(tmp_path):
    target = tmp_path / "out.pbin"
    shutil.copy(TEST_DATA / "lorem_ipsum.pbin", target)
    before = target.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(target) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"partial")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == ["out.pbin"] and target.read_bytes() == before


def test_atomic_output_refuses_a_file_as_directory(tmp_path):
    blocker = tmp_path / "x.jsonl"
    blocker.write_bytes(b"{}\n")
    for target in [blocker / "out.pbin", blocker / "deeper" / "out.pbin"]:
        message = rf"out\.pbin: cannot write there, {blocker} is not a directory"
        with pytest.raises(JaxgptError, match=message), atomic_output(target):
            pass
    assert os.listdir(tmp_path) == ["x.jsonl"]


def test_a_command_turns_sigterm_into_exit_and_atomic_output_cleans_up(tmp_path):
    def outer_handler(signum, frame):  # what runs if the command does not handle SIGTERM (instead of dying)
        raise RuntimeError("SIGTERM reached the handler outside the command")

    original = signal.signal(signal.SIGTERM, outer_handler)
    try:
        with pytest.raises(SystemExit) as e, sigterm_exits(), atomic_output(tmp_path / "out.pbin") as tmp:
            with open(tmp, "wb") as f:
                f.write(b"partial")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)  # interrupted by the handler's exception
        assert e.value.code == 128 + signal.SIGTERM
        assert os.listdir(tmp_path) == [] and signal.getsignal(signal.SIGTERM) is outer_handler
    finally:
        signal.signal(signal.SIGTERM, original)
