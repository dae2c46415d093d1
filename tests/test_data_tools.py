"""`jaxgpt data ...`: shuffles and chunks byte-identical to Modalities 0.5.0, streaming, and strict about bad input.

Goldens in tests/data/shuffle were written by Modalities 0.5.0 itself (tests/data/make_golden.md): whole files where
small, SHA256SUMS for the RedPajama shuffles and every chunk of the two-file list.
"""

import errno
import hashlib
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import RAW, REPO, TEST_DATA

from jaxgpt.data.format.pbin import HEADER_BYTES, PbinWriter, read_pbin
from jaxgpt.data.format.pickles import write_pairs
from jaxgpt.data.prepare import chunks, shuffle
from jaxgpt.errors import ConfigError, PackedDataError

GOLD = TEST_DATA / "shuffle"
FILES = GOLD / "redpajama_files.txt"  # redpajama_v2_samples_512_{train,test}
JAXGPT = REPO / ".venv" / "bin" / "jaxgpt"


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _golden_sums() -> dict[str, str]:
    lines = GOLD.joinpath("SHA256SUMS").read_text().splitlines()
    return {name: digest for digest, name in map(str.split, lines)}


def _docs(path) -> list[bytes]:
    pf = read_pbin(path)
    data = path.read_bytes()[HEADER_BYTES:]
    return [data[o : o + n] for o, n in pf.doc_bytes.tolist()]


def _cli(*args, check=True):
    code = "import sys; from jaxgpt.cli import main; main(sys.argv[1:]); assert 'jax' not in sys.modules"
    cmd = [sys.executable, "-c", code]
    proc = subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, cwd=REPO, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def _write_pbin(path, docs: list[np.ndarray], width=2, legacy=False):
    """A .pbin of `docs`; with `legacy`, index offsets start at 12 as old Modalities writers stored them."""
    with open(path, "wb") as f:
        data = b"".join(d.astype(f"<u{width}").tobytes() for d in docs)
        f.write(len(data).to_bytes(8, "little") + width.to_bytes(4, "little") + data)
        lengths = np.array([len(d) * width for d in docs], np.int64)
        offsets = np.cumsum(lengths) - lengths + (HEADER_BYTES if legacy else 0)
        write_pairs(f, np.stack([offsets, lengths], axis=1))


# --- byte identity with Modalities ---------------------------------------------------------------------------------


def test_shuffle_tokenized_data_is_modalities_bytes(tmp_path):
    shuffle.shuffle_pbin(TEST_DATA / "lorem_ipsum_long.pbin", tmp_path / "l.pbin", seed=42)
    assert (tmp_path / "l.pbin").read_bytes() == (GOLD / "lorem_ipsum_long_seed42.pbin").read_bytes()
    # A 4 KiB buffer splits documents across reads and buffer refills; the bytes must not change.
    src = TEST_DATA / "redpajama_v2_samples_512_train.pbin"
    shuffle.shuffle_pbin(src, tmp_path / "r.pbin", seed=42, buffer_bytes=4096)
    assert _sha(tmp_path / "r.pbin") == _golden_sums()["redpajama_train_seed42.pbin"]


def test_shuffle_jsonl_data_is_modalities_bytes(tmp_path):
    src = RAW / "redpajama_v2_samples_512_train.jsonl"
    shuffle.shuffle_jsonl(src, tmp_path / "r.jsonl", seed=42, buffer_bytes=4096)
    assert _sha(tmp_path / "r.jsonl") == _golden_sums()["redpajama_train_seed42.jsonl"]


def _lorem_long_shuffled() -> bytes:
    """Modalities' shuffle of lorem_ipsum_long.jsonl (seed 42) with the b"\n" its unterminated last line lacks."""
    last = (TEST_DATA / "lorem_ipsum_long.jsonl").read_bytes().rsplit(b"\n", 1)[1]
    golden = (GOLD / "lorem_ipsum_long_seed42.jsonl").read_bytes()
    cut = golden.index(last) + len(last)
    assert golden[cut : cut + 1] == b"{"  # Modalities: the last line runs into the next document
    return golden[:cut] + b"\n" + golden[cut:]


def test_unterminated_last_line_gets_its_newline_where_modalities_glues_it(tmp_path):
    shuffle.shuffle_jsonl(TEST_DATA / "lorem_ipsum_long.jsonl", tmp_path / "l.jsonl", seed=42)
    assert (tmp_path / "l.jsonl").read_bytes() == _lorem_long_shuffled()


@pytest.mark.parametrize("kind", ["pbin", "jsonl"])
def test_every_chunk_of_a_two_file_list_is_modalities_bytes(tmp_path, kind):
    make, root = (chunks.create_pbin_chunk, TEST_DATA) if kind == "pbin" else (chunks.create_jsonl_chunk, RAW)
    sums = _golden_sums()
    for c in range(8):
        out = tmp_path / f"chunk_{c}_of_8_seed42.{kind}"
        make(FILES, root, out, chunk_id=c, num_chunks=8, global_seed=42, buffer_bytes=1 << 16)
        assert _sha(out) == sums[out.name], out.name
    name = f"chunk_3_of_8_seed42.{kind}"
    assert (tmp_path / name).read_bytes() == (GOLD / name).read_bytes()


def test_chunks_partition_the_corpus(tmp_path):
    """The 8 chunks hold every document of both files exactly once; each chunk is a shuffle of 128 of them."""
    corpus = [d for s in ("train", "test") for d in _docs(TEST_DATA / f"redpajama_v2_samples_512_{s}.pbin")]
    got = []
    for c in range(8):
        chunks.create_pbin_chunk(FILES, TEST_DATA, tmp_path / f"{c}.pbin", chunk_id=c, num_chunks=8, global_seed=7)
        got += _docs(tmp_path / f"{c}.pbin")
    assert sorted(got) == sorted(corpus) and len(got) == 1024


def test_pack_index_merge_through_the_console_script_reproduce_the_goldens(tmp_path):
    src = RAW / "redpajama_v2_samples_512_train.jsonl"
    subprocess.run([JAXGPT, "data", "create_raw_index", "--index_path", tmp_path / "t.idx", src], check=True, cwd=REPO)
    assert (tmp_path / "t.idx").read_bytes() == (TEST_DATA / "redpajama_v2_samples_512_train.idx").read_bytes()
    yaml = tmp_path / "pack.yaml"  # Modalities' packing YAML, as in make_golden.md
    yaml.write_text(
        f"settings:\n  src_path: {src}\n  dst_path: {tmp_path / 't.pbin'}\n  index_path: {tmp_path / 't.idx'}\n"
        "  jq_pattern: .raw_content\n  num_cpus: 2\n  eod_token: <|endoftext|>\n  processing_batch_size: 10\n"
        "  raw_samples_queue_size: 300\n  processed_samples_queue_size: 300\ntokenizer:\n  component_key: tokenizer\n"
        "  variant_key: pretrained_hf_tokenizer\n  config:\n    pretrained_model_name_or_path: data/tokenizer\n"
        "    padding: false\n    truncation: false\n"
    )
    _cli("data", "pack_encoded_data", yaml)
    assert (tmp_path / "t.pbin").read_bytes() == (TEST_DATA / "redpajama_v2_samples_512_train.pbin").read_bytes()
    _cli("data", "merge_packed_data", tmp_path / "t.pbin", TEST_DATA / "lorem_ipsum.pbin", tmp_path / "m.pbin")
    assert read_pbin(tmp_path / "m.pbin").num_docs == 512 + 12


def test_shuffles_and_chunks_through_the_console_script(tmp_path):
    runs = [
        ("shuffle_tokenized_data", "--input_data_path", TEST_DATA / "lorem_ipsum_long.pbin", "--batch_size", 7),
        ("shuffle_jsonl_data", "--input_data_path", RAW / "redpajama_v2_samples_512_train.jsonl"),
    ]
    outs = [tmp_path / "l.pbin", tmp_path / "r.jsonl"]
    for (name, *args), out in zip(runs, outs):
        _cli("data", name, *args, "--output_data_path", out, "--seed", 42)
    assert outs[0].read_bytes() == (GOLD / "lorem_ipsum_long_seed42.pbin").read_bytes()
    assert _sha(outs[1]) == _golden_sums()["redpajama_train_seed42.jsonl"]
    for name, root, ext in [
        ("create_shuffled_dataset_chunk", TEST_DATA, "pbin"),
        ("create_shuffled_jsonl_chunk", RAW, "jsonl"),
    ]:
        out = tmp_path / f"c.{ext}"
        _cli(
            "data",
            name,
            "--input_file_list_path",
            FILES,
            "--input_data_root_path",
            root,
            "--output_chunk_file_path",
            out,
            "--chunk_id",
            3,
            "--num_chunks",
            8,
            "--global_seed",
            42,
        )
        assert out.read_bytes() == (GOLD / f"chunk_3_of_8_seed42.{ext}").read_bytes()


def test_unseeded_runs_print_a_seed_that_reproduces_them(tmp_path):
    src = TEST_DATA / "lorem_ipsum_long.pbin"
    proc = _cli("data", "shuffle_tokenized_data", "--input_data_path", src, "--output_data_path", tmp_path / "a.pbin")
    seed = int(proc.stderr.split("drew --seed ")[1].split()[0])
    shuffle.shuffle_pbin(src, tmp_path / "b.pbin", seed=seed)
    assert (tmp_path / "a.pbin").read_bytes() == (tmp_path / "b.pbin").read_bytes()
    assert sorted(_docs(tmp_path / "a.pbin")) == sorted(_docs(src)) and _docs(tmp_path / "a.pbin") != _docs(src)
    proc = _cli(
        "data",
        "create_shuffled_jsonl_chunk",
        "--input_file_list_path",
        FILES,
        "--input_data_root_path",
        RAW,
        "--output_chunk_file_path",
        tmp_path / "a.jsonl",
        "--chunk_id",
        1,
        "--num_chunks",
        3,
    )
    seed = int(proc.stderr.split("drew --global_seed ")[1].split()[0])
    chunks.create_jsonl_chunk(FILES, RAW, tmp_path / "b.jsonl", chunk_id=1, num_chunks=3, global_seed=seed)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


# --- where Modalities misbehaves ------------------------------------------------------------------------------------


def _chunk_list(tmp_path, sizes: list[int], widths: list[int] | None = None):
    """A file list of .pbin files with the given document counts; document i of file f holds [f, i]."""
    names = []
    for f, n in enumerate(sizes):
        _write_pbin(tmp_path / f"f{f}.pbin", [np.array([f, i]) for i in range(n)], width=(widths or [2] * 9)[f])
        names.append(f"f{f}")
    (tmp_path / "list.txt").write_text("\n".join(names) + "\n\n")  # a trailing blank line is skipped
    return tmp_path / "list.txt"


def test_bad_chunk_ids_are_refused_before_anything_is_read(tmp_path):
    files = _chunk_list(tmp_path, [5])
    for chunk_id, num_chunks in [(3, 3), (-1, 3), (0, 0), (0, -2)]:
        with pytest.raises(ConfigError, match="--chunk_id must be in|--num_chunks=.* must be an int >= 1"):
            chunks.create_pbin_chunk(files, tmp_path, tmp_path / "o.pbin", chunk_id=chunk_id, num_chunks=num_chunks)
    assert not (tmp_path / "o.pbin").exists()


def test_more_chunks_than_documents_and_an_empty_chunk(tmp_path, capfd):
    files = _chunk_list(tmp_path, [2, 6])  # f0: 2 documents for 4 chunks
    for c in range(4):
        chunks.create_pbin_chunk(files, tmp_path, tmp_path / f"{c}.pbin", chunk_id=c, num_chunks=4, global_seed=1)
    held = [sorted(tuple(np.frombuffer(d, "<u2")) for d in _docs(tmp_path / f"{c}.pbin")) for c in range(4)]
    assert held == [[(0, 0), (1, 0), (1, 1)], [(0, 1), (1, 2), (1, 3)], [(1, 4)], [(1, 5)]]
    assert "f0.pbin: 2 documents for 4 chunks: chunks 2..3 get none of them" in capfd.readouterr().err
    with pytest.raises(PackedDataError, match="chunk 7 has no documents"):
        chunks.create_pbin_chunk(files, tmp_path, tmp_path / "7.pbin", chunk_id=7, num_chunks=8, global_seed=1)
    assert not (tmp_path / "7.pbin").exists()


def test_output_that_is_an_input_is_refused_even_under_override(tmp_path):
    src = tmp_path / "in.pbin"
    shutil.copy(TEST_DATA / "lorem_ipsum.pbin", src)
    os.link(src, tmp_path / "hard.pbin")
    before = src.read_bytes()
    for dst in [src, tmp_path / "hard.pbin", tmp_path / "sub" / ".." / "in.pbin"]:
        with pytest.raises(PackedDataError, match="the output is also an input"):
            shuffle.shuffle_pbin(src, dst, seed=1, file_existence_policy="override")
    files = _chunk_list(tmp_path, [3])
    for dst in [tmp_path / "f0.pbin", files]:
        with pytest.raises(PackedDataError, match="the output is also an input"):
            chunks.create_pbin_chunk(files, tmp_path, dst, chunk_id=0, num_chunks=1, file_existence_policy="override")
    assert src.read_bytes() == before and read_pbin(tmp_path / "f0.pbin").num_docs == 3


def test_different_token_widths_are_refused(tmp_path):
    files = _chunk_list(tmp_path, [3, 3], widths=[2, 4])
    with pytest.raises(PackedDataError, match=r"different token widths \(.*f0.pbin: 2, .*f1.pbin: 4\)"):
        chunks.create_pbin_chunk(files, tmp_path, tmp_path / "o.pbin", chunk_id=0, num_chunks=1, global_seed=1)
    assert not (tmp_path / "o.pbin").exists()


def test_file_existence_policy(tmp_path, capfd):
    src, dst = TEST_DATA / "lorem_ipsum.jsonl", tmp_path / "o.jsonl"
    dst.write_bytes(b"old\n")
    with pytest.raises(PackedDataError, match="file exists"):
        shuffle.shuffle_jsonl(src, dst, seed=1)
    assert shuffle.shuffle_jsonl(src, dst, seed=1, file_existence_policy="skip") is None
    assert dst.read_bytes() == b"old\n"
    assert shuffle.shuffle_jsonl(src, dst, seed=1, file_existence_policy="override") == 1
    assert sorted(dst.read_bytes().splitlines()) == sorted(src.read_bytes().splitlines())


def test_bad_inputs_are_one_line_errors_and_leave_nothing(tmp_path):
    _write_pbin(tmp_path / "empty.pbin", [])
    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "list.txt").write_text("f0\nmissing\n")
    _write_pbin(tmp_path / "f0.pbin", [np.array([1])])
    cases = [
        (["shuffle_tokenized_data", "--input_data_path", tmp_path / "empty.pbin"], "has no documents"),
        (["shuffle_tokenized_data", "--input_data_path", TEST_DATA / "lorem_ipsum.jsonl"], "token width"),
        (
            ["shuffle_tokenized_data", "--input_data_path", TEST_DATA / "lorem_ipsum.pbin", "--batch_size", 0],
            "--batch_size=0 must be an int >= 1",
        ),
        (["shuffle_jsonl_data", "--input_data_path", tmp_path / "empty.jsonl"], "file is empty"),
        (["shuffle_jsonl_data", "--input_data_path", tmp_path / "nope.jsonl"], "nope.jsonl: no such file"),
    ]
    for args, message in cases:
        proc = _cli("data", *args, "--output_data_path", tmp_path / "o", "--seed", 1, check=False)
        assert proc.returncode == 1 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    proc = _cli(
        "data",
        "create_shuffled_dataset_chunk",
        "--input_file_list_path",
        tmp_path / "list.txt",
        "--input_data_root_path",
        tmp_path,
        "--output_chunk_file_path",
        tmp_path / "o",
        "--chunk_id",
        0,
        "--num_chunks",
        1,
        check=False,
    )
    assert proc.returncode == 1 and f"list.txt:2: {tmp_path / 'missing.pbin'} does not exist" in proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["empty.jsonl", "empty.pbin", "f0.pbin", "list.txt"]


def test_old_offset_12_files_shuffle_their_true_documents(tmp_path):
    docs = [np.arange(i, 3 * i + 1) for i in range(1, 40)]
    _write_pbin(tmp_path / "old.pbin", docs, legacy=True)
    _write_pbin(tmp_path / "new.pbin", docs)
    shuffle.shuffle_pbin(tmp_path / "old.pbin", tmp_path / "a.pbin", seed=3)
    shuffle.shuffle_pbin(tmp_path / "new.pbin", tmp_path / "b.pbin", seed=3)
    assert (tmp_path / "a.pbin").read_bytes() == (tmp_path / "b.pbin").read_bytes()


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("settings: {}\ntokenizer: {}\n", "settings.src_path is missing"),
        ("settings: [\n", "not valid YAML"),
        (
            "settings:\n  src_path: ${modalities_env:x}\n",
            "p.yaml:2: settings.src_path: interpolation resolver 'modalities_env'",
        ),
        (
            "settings:\n  a: 1\n  src_path: ${settings.b}\n",
            "p.yaml:3: settings.src_path: Interpolation key 'settings.b' not",
        ),
        (
            "{SETTINGS}tokenizer:\n  component_key: tokenizer\n  variant_key: pretrained_sp_tokenizer\n"
            "  config: {tokenizer_model_file: t.model}\n",
            "SentencePiece) is not supported",
        ),
        (
            "{SETTINGS}{HF}    truncation: sideways\n",
            "p.yaml:11: tokenizer.config.truncation 'sideways' is not supported",
        ),
        (
            "{SETTINGS}{HF}    padding: max_length\n    max_length: 8\n",
            ":11: tokenizer.config.padding max_length needs",
        ),
        ("{SETTINGS}{HF}    truncation: true\n    max_length: 0\n", ":12: tokenizer.config.max_length must be an int"),
        ("{SETTINGS}{HF}    special_tokens: {pad_token: '[PAD]'}\n", "special token '[PAD]' is not in the vocabulary"),
        (
            "{SETTINGS}tokenizer:\n  component_key: tokenizer\n  variant_key: pretrained_hf_tokenizer\n"
            "  config: {pretrained_model_name_or_path: gpt2}\n",
            "not a local directory",
        ),
    ],
)
def test_pack_yaml_errors(tmp_path, yaml_text, message):
    settings = f"settings:\n  src_path: {TEST_DATA / 'lorem_ipsum.jsonl'}\n  dst_path: {tmp_path / 'o.pbin'}\n"
    settings += "  jq_pattern: .text\n  eod_token: <|endoftext|>\n"
    hf = "tokenizer:\n  component_key: tokenizer\n  variant_key: pretrained_hf_tokenizer\n  config:\n"
    hf += "    pretrained_model_name_or_path: data/tokenizer\n"
    (tmp_path / "p.yaml").write_text(yaml_text.replace("{SETTINGS}", settings).replace("{HF}", hf))
    proc = _cli("data", "pack_encoded_data", tmp_path / "p.yaml", check=False)
    assert proc.returncode == 1 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "o.pbin").exists()


# --- streaming ------------------------------------------------------------------------------------------------------


def test_shuffle_copies_one_document_at_a_time_inside_the_kernel(tmp_path, monkeypatch):
    """Every copy of the data is one document's copy_file_range; nothing is read into Python or memory-mapped."""
    copies = []
    real = os.copy_file_range

    def copy_file_range(src, dst, count, offset_src=None, *args):
        copies.append(count)
        return real(src, dst, count, offset_src, *args)

    monkeypatch.setattr(os, "copy_file_range", copy_file_range)
    monkeypatch.setattr(os, "preadv", None)  # the fallback must not run
    monkeypatch.setattr(np, "memmap", None)  # nor any memmap
    src = TEST_DATA / "lorem_ipsum_long.pbin"  # 665,750 data bytes in 500 documents
    shuffle.shuffle_pbin(src, tmp_path / "l.pbin", seed=42)
    assert (tmp_path / "l.pbin").read_bytes() == (GOLD / "lorem_ipsum_long_seed42.pbin").read_bytes()
    pf = read_pbin(src)
    assert max(copies) <= pf.doc_bytes[:, 1].max() and sum(copies) == pf.data_len and len(copies) == pf.num_docs


def test_fallback_without_kernel_copy_reads_through_a_fixed_buffer(tmp_path, monkeypatch):
    """Where copy_file_range is refused (EXDEV: another file system), positioned reads of at most the buffer."""
    reads = []
    real = os.preadv

    def refuse(*args):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def preadv(fd, buffers, offset):
        reads.append(sum(map(len, buffers)))
        return real(fd, buffers, offset)

    monkeypatch.setattr(os, "copy_file_range", refuse)
    monkeypatch.setattr(os, "preadv", preadv)
    src = TEST_DATA / "lorem_ipsum_long.pbin"
    shuffle.shuffle_pbin(src, tmp_path / "l.pbin", seed=42, buffer_bytes=1 << 10)
    assert (tmp_path / "l.pbin").read_bytes() == (GOLD / "lorem_ipsum_long_seed42.pbin").read_bytes()
    assert max(reads) <= 1 << 10 and sum(reads) == read_pbin(src).data_len
    jsonl = TEST_DATA / "lorem_ipsum_long.jsonl"  # unterminated last line: the fallback adds its b"\n" too
    shuffle.shuffle_jsonl(jsonl, tmp_path / "l.jsonl", seed=42, buffer_bytes=1 << 10)
    assert (tmp_path / "l.jsonl").read_bytes() == _lorem_long_shuffled()


_RSS_SCRIPT = """
import resource, sys
limit = 128 << 20  # a private buffer of the 256 MB data section cannot be allocated under this
resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
from jaxgpt.data.prepare.shuffle import shuffle_pbin
shuffle_pbin(sys.argv[1], sys.argv[2], seed=5)
# VmHWM: this process image's own peak RSS (ru_maxrss would start at the forking parent's)
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


def test_shuffle_of_a_file_larger_than_its_memory_limit(tmp_path):
    """A 256 MB .pbin shuffles in a process whose heap is limited to 128 MB; output document k is input perm[k]."""
    src = tmp_path / "big.pbin"
    num_docs, doc_tokens = 2048, 1 << 16  # 2048 documents of 128 KiB; document i holds the token i everywhere
    writer = PbinWriter(src, 2)
    for first in range(0, num_docs, 64):
        ids = np.arange(first, first + 64, dtype="<u2")
        writer.write(np.repeat(ids, doc_tokens), np.full(64, doc_tokens))
    writer.close()
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, src, tmp_path / "out.pbin"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) < 100 << 10  # peak RSS in KiB: under 100 MB for 256 MB of data
    src.unlink()
    out = read_pbin(tmp_path / "out.pbin")
    firsts = out.tokens()[out.doc_bytes[:, 0] // 2]
    assert np.array_equal(firsts, shuffle.python_permutation(num_docs, 5))
    (tmp_path / "out.pbin").unlink()
