"""Fuzzing the boundaries where outside bytes and strings enter jaxgpt: the .idx/.pbin readers, the JSONL indexer and
packer, and `--config.*` overrides. Each must answer with jaxgpt's own one-line errors: no other exception, no hang,
no output file left behind.

Seeded and deterministic (derandomize=True): CI runs the same few hundred cases per target every time.
JAXGPT_FUZZ_SCALE=N runs N times as many (a longer run; it explores other cases, as the seed follows the count).
"""

import contextlib
import functools
import json
import os
import sys
import tempfile

from absl import flags
from conftest import REPO, TEST_DATA, TOKENIZER
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxgpt.data.format import pbin
from jaxgpt.data.loader.source import PackedWindowSource
from jaxgpt.data.prepare import index, pack
from jaxgpt.errors import PackedDataError

SCALE = int(os.environ.get("JAXGPT_FUZZ_SCALE", "1"))


def fuzz(examples: int):
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def damaged(real: bytes):
    """Random bytes, truncations, bit flips of a real file, or (for a .pbin) a header that lies about the rest."""
    flips = st.lists(st.tuples(st.integers(0, len(real) - 1), st.integers(0, 7)), min_size=1, max_size=8)
    header = st.tuples(st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 2, 3, 4, 8, 2**31, 2**32 - 1]))
    return st.one_of(
        st.binary(max_size=2048),
        st.integers(0, len(real)).map(lambda n: real[:n]),
        flips.map(
            lambda fs: functools.reduce(
                lambda b, f: b[: f[0]] + bytes([b[f[0]] ^ (1 << f[1])]) + b[f[0] + 1 :], fs, real
            )
        ),
        header.map(lambda h: h[0].to_bytes(8, "little") + h[1].to_bytes(4, "little") + real[pbin.HEADER_BYTES :]),
    )


def files_in(directory):
    return sorted(os.listdir(directory))


@contextlib.contextmanager
def file_holding(blob: bytes, name: str):
    """The path of a file `name` holding `blob`, in a temporary directory removed afterwards."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, name)
        with open(path, "wb") as f:
            f.write(blob)
        yield path


REAL_PBIN = (TEST_DATA / "lorem_ipsum.pbin").read_bytes()
REAL_IDX = (TEST_DATA / "lorem_ipsum.idx").read_bytes()


@fuzz(300)
@given(blob=damaged(REAL_PBIN))
def test_pbin_readers_refuse_damaged_files_cleanly(blob):
    with file_holding(blob, "f.pbin") as path:
        try:
            packed = pbin.read_pbin(path)
            total = sum(len(packed.document(i)) for i in range(packed.num_docs))
            assert total == packed.num_tokens  # what the index promised is what is there
        except PackedDataError:
            pass
        try:
            source = PackedWindowSource(path, seq_len=8, vocab_size=50304)
            source.read_windows(list(range(len(source))))
        except PackedDataError:
            pass


@fuzz(200)
@given(blob=damaged(REAL_IDX))
def test_idx_reader_refuses_damaged_files_cleanly(blob):
    with file_holding(blob, "f.idx") as path:
        try:
            pairs = pbin.read_idx_array(path)
            assert pairs.ndim == 2 and pairs.shape[1] == 2
        except PackedDataError:
            pass


JSON = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["text", "t", ""]) | st.text(), inner, max_size=4)
    ),
    max_leaves=12,
)
LINE = st.one_of(
    st.binary(max_size=200),
    JSON.map(lambda v: json.dumps(v).encode()),
    st.text(max_size=50).map(lambda t: json.dumps({"text": t}).encode()),
    st.integers(0, 40).map(lambda n: b'{"text": "a\x00b' + b"\x00" * n + b'"}'),  # raw NUL bytes
    st.integers(1 << 16, 1 << 18).map(lambda n: json.dumps({"text": "lorem " * (n // 6)}).encode()),  # huge lines
    st.integers(1, 5000).map(lambda n: b'{"text": ' + b"[" * n + b"]" * n + b"}"),  # deep nesting
)


@functools.cache
def _cached_tokenizer(*args):
    return _load_tokenizer_with_eod(*args)


_load_tokenizer_with_eod = pack._load_tokenizer_with_eod


@fuzz(300)
@given(lines=st.lists(LINE, min_size=0, max_size=6), final_newline=st.booleans(), skip=st.booleans())
def test_the_indexer_and_packer_refuse_bad_jsonl_cleanly_and_leave_no_file(lines, final_newline, skip):
    # The tokenizer (0.3 s to load) is loaded once: the target is what the packer does with the lines.
    pack._load_tokenizer_with_eod = _cached_tokenizer
    try:
        with tempfile.TemporaryDirectory() as d:
            src, idx, out = (os.path.join(d, name) for name in ("in.jsonl", "in.idx", "out.pbin"))
            with open(src, "wb") as f:
                f.write(b"\n".join(lines) + (b"\n" if final_newline and lines else b""))
            try:
                index.create_index(src, idx)
            except PackedDataError as e:
                assert "\n" not in str(e) and files_in(d) == ["in.jsonl"], (str(e), files_in(d))
                return
            try:
                pack.pack_jsonl(
                    src,
                    out,
                    tokenizer_file=TOKENIZER,
                    jq_pattern=".text",
                    index_path=idx,
                    num_processes=1,
                    skip_faulty_lines=skip,
                    progress=False,
                )
            except PackedDataError as e:
                assert "\n" not in str(e) and files_in(d) == ["in.idx", "in.jsonl"], (str(e), files_in(d))
                return
            assert pbin.read_pbin(out).num_docs <= len(lines)
    finally:
        pack._load_tokenizer_with_eod = _load_tokenizer_with_eod


KNOBS = sorted(
    f"{section}.{key}"
    for section, values in json.loads(
        __import__("jaxgpt.config", fromlist=["default_config"]).default_config().to_json()
    ).items()
    for key in values
)
VALUE = st.one_of(
    st.text(max_size=12),
    st.integers().map(str),
    st.floats().map(str),
    st.sampled_from(["True", "false", "None", "[1, 2]", "{}", "1e400", "-0", "0x10", "", "'quoted'", "\n", "1\n2"]),
)
KEY = st.one_of(
    st.sampled_from(KNOBS),
    st.sampled_from(["train", "model", ""]),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz_.", min_size=1, max_size=20),
)


@fuzz(300)
@given(key=KEY, value=VALUE, with_value=st.booleans())
def test_config_overrides_parse_or_fail_in_one_line_naming_the_key(key, value, with_value):
    from jaxgpt.train import loop

    override = f"--config.{key}={value}" if with_value else f"--config.{key}"
    argv = ["train", f"--config={REPO / 'configs' / 'tiny.py'}", "--workdir=unused", override]
    sys.argv, saved = argv, sys.argv  # ml_collections finds the override flags in sys.argv
    try:
        loop._parse_flags(argv)
        node = loop._CONFIG.value
        for part in key.split("."):
            node = node[part]  # the key exists; the value was taken, with the knob's type
    except SystemExit as e:
        message = str(e)
        assert "\n" not in message.strip() and message.startswith(("error: ", "--config.")), message
        assert key.split(".")[0] in message or "--config" in message, message
    finally:
        sys.argv = saved
        for name in [n for n in flags.FLAGS if n.startswith("config.")]:  # absl keeps them: a fresh parse each case
            delattr(flags.FLAGS, name)
        flags.FLAGS.unparse_flags()


def test_the_fuzz_targets_see_the_real_files():
    """The mutations start from real, valid files: unmutated, they read whole."""
    with file_holding(REAL_PBIN, "f.pbin") as path:
        assert pbin.read_pbin(path).num_docs > 1
    assert len(pbin.read_idx_array(TEST_DATA / "lorem_ipsum.idx")) > 1
    assert len(KNOBS) > 40 and "train.compute_dtype" in KNOBS
