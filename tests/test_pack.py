"""Indexing and packing: golden bytes against Modalities 0.5.0, the EOD-once rule, round trips, every bad input."""

import json
import os
import select
import subprocess
import sys

import numpy as np
import pytest
from conftest import RAW, REPO, TEST_DATA, TOKENIZER

from jaxgpt.data.format.pbin import read_pbin, write_idx
from jaxgpt.data.prepare.index import JsonlError, create_index, index_jsonl
from jaxgpt.data.prepare.pack import pack_jsonl
from jaxgpt.data.tokenize import load_tokenizer
from jaxgpt.errors import ConfigError, PackedDataError

CORPORA = [
    (TEST_DATA / "lorem_ipsum.jsonl", ".text", "lorem_ipsum"),
    (TEST_DATA / "lorem_ipsum_long.jsonl", ".text", "lorem_ipsum_long"),
    (RAW / "redpajama_v2_samples_512_train.jsonl", ".raw_content", "redpajama_v2_samples_512_train"),
    (RAW / "redpajama_v2_samples_512_test.jsonl", ".raw_content", "redpajama_v2_samples_512_test"),
]


def _pack(src, dst, pattern=".text", **kw):
    kw.setdefault("num_processes", 1)
    kw.setdefault("progress", False)
    return pack_jsonl(src, dst, tokenizer_file=TOKENIZER, jq_pattern=pattern, **kw)


@pytest.mark.parametrize("src,pattern,golden", CORPORA, ids=[c[2] for c in CORPORA])
def test_index_and_pack_match_modalities_bytes(tmp_path, src, pattern, golden):
    idx = create_index(src, tmp_path / "x.idx")
    assert open(idx, "rb").read() == (TEST_DATA / f"{golden}.idx").read_bytes()
    report = _pack(src, tmp_path / "x.pbin", pattern, index_path=idx, num_processes=2)
    assert report.backend == "tiktoken" and not report.skipped
    assert (tmp_path / "x.pbin").read_bytes() == (TEST_DATA / f"{golden}.pbin").read_bytes()


def test_hf_backend_matches_modalities_bytes(tmp_path):
    src = TEST_DATA / "lorem_ipsum_long.jsonl"
    report = _pack(src, tmp_path / "x.pbin", index_path=TEST_DATA / "lorem_ipsum_long.idx", tokenizer_backend="hf")
    assert report.backend == "hf"
    assert (tmp_path / "x.pbin").read_bytes() == (TEST_DATA / "lorem_ipsum_long.pbin").read_bytes()


def _write_jsonl(path, records, raw_lines=()):
    """Writes JSON records, then raw byte lines, and an index made without validation (as a stale index would be)."""
    lines = [json.dumps(r).encode() for r in records] + list(raw_lines)
    path.write_bytes(b"\n".join(lines) + b"\n")
    offsets = np.cumsum([0] + [len(x) + 1 for x in lines[:-1]])
    write_idx(path.with_suffix(".idx"), np.stack([offsets, [len(x) for x in lines]], axis=1))
    return path


def test_eod_once_and_round_trip(tmp_path):
    texts = ["plain text", "ends with eod<|endoftext|>", "<|endoftext|>", "two<|endoftext|><|endoftext|>", "tail \n"]
    src = _write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in texts])
    _pack(src, tmp_path / "d.pbin")
    pf = read_pbin(tmp_path / "d.pbin")
    tok = load_tokenizer(TOKENIZER)
    eod = 50256
    for i, text in enumerate(texts):
        doc = pf.document(i)
        assert doc[-1] == eod and (len(doc) < 2 or doc[-2] != eod or text.endswith("<|endoftext|><|endoftext|>"))
        expected = text if text.endswith("<|endoftext|>") else text + "<|endoftext|>"
        assert tok.decode(doc) == expected
    assert pf.document(2).tolist() == [eod]
    assert pf.document(3).tolist()[-2:] == [eod, eod]  # a document's own EODs stay; none is added


def test_round_trip_redpajama_golden():
    tok = load_tokenizer(TOKENIZER)
    pf = read_pbin(TEST_DATA / "redpajama_v2_samples_512_train.pbin")
    lines = (RAW / "redpajama_v2_samples_512_train.jsonl").read_text(encoding="utf-8").splitlines()
    for i in [0, 1, 100, 511]:
        assert tok.decode(pf.document(i)) == json.loads(lines[i])["raw_content"] + "<|endoftext|>"


def _no_output(tmp_path, *names):
    left = set(os.listdir(tmp_path)) & set(names)
    tmp_left = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert not left and not tmp_left, (left, tmp_left)


BAD_LINES = [
    (b'{"text": "ok"', r"invalid JSON: Expecting ',' delimiter"),
    (b"", "empty line"),
    (b'{"text": "caf\xe9"}', r"invalid UTF-8 at byte 13"),
    (b'{"other": "x"}', r"jq pattern '.text' yields null"),
    (b'{"text": 42}', r"jq pattern '.text' yields a value of type int, expected a string"),
    (b'{"text": ""}', r"text is empty"),
    (b'{"text": "a\\ud800b"}', r"text holds an unpaired high surrogate '\\ud800' \(jq refuses it\)"),
    (b'{"text": {"nested": 1}}', r"jq pattern '.text' yields a value of type dict"),
    (b'{"text": ' + b"[" * 5000 + b"]" * 5000 + b"}", r"invalid JSON: nesting too deep"),
]


@pytest.mark.parametrize("raw,reason", BAD_LINES, ids=[r for _, r in BAD_LINES])
def test_bad_line_fails_pack_with_file_line_reason(tmp_path, raw, reason):
    src = _write_jsonl(tmp_path / "bad.jsonl", [{"text": "fine"}, {"text": "also fine"}], [raw, b'{"text": "after"}'])
    with pytest.raises(JsonlError, match=rf"bad\.jsonl:3: {reason}"):
        _pack(src, tmp_path / "bad.pbin", num_processes=2)
    _no_output(tmp_path, "bad.pbin")


@pytest.mark.parametrize("raw,reason", BAD_LINES[:3] + BAD_LINES[-1:], ids=["json", "empty", "utf8", "deep"])
def test_bad_line_fails_index_with_file_line_reason(tmp_path, raw, reason):
    src = tmp_path / "bad.jsonl"
    src.write_bytes(b'{"text": "a"}\n{"text": "b"}\n' + raw + b'\n{"text": "c"}\n')
    with pytest.raises(JsonlError, match=rf"bad\.jsonl:3: {reason}"):
        create_index(src, tmp_path / "bad.idx")
    _no_output(tmp_path, "bad.idx")


def test_index_line_rules(tmp_path):
    cases = {
        b'{"a": 1}\n{"b": 2}\n': [(0, 8), (9, 8)],  # a final \n adds no line
        b'{"a": 1}\n{"b": 2}': [(0, 8), (9, 8)],  # a last line without \n counts
        b'{"a": 1}\r\n{"b": 2}\r\n': [(0, 9), (10, 9)],  # \r stays in the line
    }
    for i, (data, expected) in enumerate(cases.items()):
        (tmp_path / f"{i}.jsonl").write_bytes(data)
        assert index_jsonl(tmp_path / f"{i}.jsonl").tolist() == [list(p) for p in expected]
        assert index_jsonl(tmp_path / f"{i}.jsonl", chunk_bytes=3).tolist() == [list(p) for p in expected]
    (tmp_path / "empty.jsonl").write_bytes(b"")
    with pytest.raises(JsonlError, match=r"empty\.jsonl:1: file is empty"):
        index_jsonl(tmp_path / "empty.jsonl")
    (tmp_path / "blank.jsonl").write_bytes(b'{"a": 1}\n\n')
    with pytest.raises(JsonlError, match=r"blank\.jsonl:2: empty line"):
        index_jsonl(tmp_path / "blank.jsonl")


def test_index_chunking_matches_one_chunk():
    src = TEST_DATA / "lorem_ipsum_long.jsonl"
    assert np.array_equal(index_jsonl(src, chunk_bytes=4096), index_jsonl(src))


def test_token_too_large_for_width(tmp_path):
    # A byte-level tokenizer with 256 base tokens (width 1) and an added token whose id needs 2 bytes: HF renumbers
    # the file's id 300 to 256, the first free one (the tiktoken path kept 300); either way it does not fit.
    spec = json.loads(TOKENIZER.read_text(encoding="utf-8"))
    base = {tok: i for tok, i in spec["model"]["vocab"].items() if len(tok) == 1}
    spec["model"]["vocab"], spec["model"]["merges"] = base, []
    spec["added_tokens"] = [dict(spec["added_tokens"][0], id=300, content="<|big|>")]
    (tmp_path / "tiny.json").write_text(json.dumps(spec), encoding="utf-8")
    src = _write_jsonl(tmp_path / "t.jsonl", [{"text": "ab"}, {"text": "a<|big|>b"}, {"text": "c"}])
    kw = dict(tokenizer_file=tmp_path / "tiny.json", jq_pattern=".text", eod_token="!", num_processes=1, progress=False)
    big = int(load_tokenizer(tmp_path / "tiny.json").encode_batch(["<|big|>"])[0][0])
    assert big >= 256
    with pytest.raises(JsonlError, match=rf"t\.jsonl:2: token id {big} does not fit the token width of 1 bytes"):
        pack_jsonl(src, tmp_path / "t.pbin", **kw)
    _no_output(tmp_path, "t.pbin")
    report = pack_jsonl(src, tmp_path / "t.pbin", skip_faulty_lines=True, **kw)
    assert report.skipped == [(2, f"token id {big} does not fit the token width of 1 bytes")]
    pf = read_pbin(tmp_path / "t.pbin")
    assert pf.width == 1 and [pf.document(i).tolist() for i in range(2)] == [[64, 65, 0], [66, 0]]


def test_missing_tokenizer_and_unknown_eod(tmp_path):
    src = _write_jsonl(tmp_path / "d.jsonl", [{"text": "x"}])
    with pytest.raises(PackedDataError, match=r"nope\.json: tokenizer file not found"):
        pack_jsonl(src, tmp_path / "d.pbin", tokenizer_file=tmp_path / "nope.json", jq_pattern=".text")
    with pytest.raises(PackedDataError, match=r"tokenizer\.json: unknown EOD token '<\|eot\|>'"):
        _pack(src, tmp_path / "d.pbin", eod_token="<|eot|>")
    _no_output(tmp_path, "d.pbin")


def test_stale_index_is_refused(tmp_path):
    src = _write_jsonl(tmp_path / "d.jsonl", [{"text": "x" * 50}, {"text": "y"}])
    src.write_bytes(b'{"text": "short"}\n')
    with pytest.raises(PackedDataError, match=r"d\.idx: entry 0 .* reaches past the end of .*d\.jsonl.*stale"):
        _pack(src, tmp_path / "d.pbin")
    _no_output(tmp_path, "d.pbin")


def test_index_of_fewer_lines_than_the_file_is_refused(tmp_path):
    src = tmp_path / "a.jsonl"
    src.write_bytes(b'{"text": "one"}\n{"text": "two"}\n')
    create_index(src)
    with open(src, "ab") as f:
        f.write(b'{"text": "three"}\n{"text": "four"}\n')
    stale = r"a\.idx: index covers bytes 0\.\.31 of the 67 of .*a\.jsonl, but line 3 after them holds JSON: it is stale"
    with pytest.raises(PackedDataError, match=stale + r" or for another file; re-run create_memmap_index"):
        _pack(src, tmp_path / "a.pbin")
    _no_output(tmp_path, "a.pbin")


@pytest.mark.parametrize(
    "data",
    [
        b'{"text": "a"}\n{"text": "b"}\n',
        b'{"text": "a"}\n{"text": "b"}',  # no final newline
        b'{"text": "a"}\r\n{"text": "b"}\r\n',  # the \r is inside each line
        b'{"text": "a"}\r\n{"text": "b"}\r',
    ],
    ids=["lf", "no_final_newline", "crlf", "cr_last"],
)
def test_index_of_every_line_is_not_stale(tmp_path, data):
    src = tmp_path / "a.jsonl"
    src.write_bytes(data)
    create_index(src)
    assert _pack(src, tmp_path / "a.pbin").num_docs == 2


def test_lines_an_index_may_leave_out_at_the_end(tmp_path):
    # Blank lines and lines that are not JSON (what Modalities' drop_faulty_entries leaves out) after the last entry
    # lose no document: the index is not stale. A non-contiguous index (a chosen subset of lines) is never checked.
    src = tmp_path / "a.jsonl"
    lines = [b'{"text": "a"}', b'{"text": "b"}', b'{"text": "c"}']
    src.write_bytes(b"\n".join(lines) + b"\n\n  \r\nnot json\n")
    write_idx(tmp_path / "a.idx", np.array([[0, 13], [14, 13], [28, 13]]))
    assert _pack(src, tmp_path / "a.pbin").num_docs == 3
    write_idx(tmp_path / "a.idx", np.array([[0, 13], [28, 13]]))
    assert _pack(src, tmp_path / "a.pbin", file_existence_policy="override").num_docs == 2


def test_skip_faulty_lines_skips_exactly_those(tmp_path):
    good = [{"text": f"document number {i} " * (i + 1)} for i in range(6)]
    raws = [json.dumps(r).encode() for r in good]
    mixed = [raws[0], b'{"text": null}', raws[1], b'{"text": ""}', b"{oops", raws[2], raws[3], b'{"text": 7}']
    mixed += raws[4:]
    src = tmp_path / "m.jsonl"
    src.write_bytes(b"\n".join(mixed) + b"\n")
    offsets = np.cumsum([0] + [len(x) + 1 for x in mixed[:-1]])
    write_idx(tmp_path / "m.idx", np.stack([offsets, [len(x) for x in mixed]], axis=1))
    report = _pack(src, tmp_path / "m.pbin", skip_faulty_lines=True, num_processes=2, batch_bytes=40)
    assert [line for line, _ in report.skipped] == [2, 4, 5, 8]
    assert "yields null" in report.skipped[0][1] and "invalid JSON" in report.skipped[2][1]
    clean = _write_jsonl(tmp_path / "clean.jsonl", good)
    _pack(clean, tmp_path / "clean.pbin")
    assert (tmp_path / "m.pbin").read_bytes() == (tmp_path / "clean.pbin").read_bytes()


def test_line_numbers_with_an_index_that_skips_lines(tmp_path):
    # An index that leaves out line 2 (as Modalities' drop_faulty_entries would): errors still name the file's line.
    lines = [b'{"text": "a"}', b"garbage", b'{"text": "b"}', b'{"text": null}']
    src = tmp_path / "s.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    offsets = np.cumsum([0] + [len(x) + 1 for x in lines[:-1]])
    keep = [0, 2, 3]
    write_idx(tmp_path / "s.idx", np.stack([offsets[keep], [len(lines[k]) for k in keep]], axis=1))
    with pytest.raises(JsonlError, match=r"s\.jsonl:4: jq pattern '.text' yields null"):
        _pack(src, tmp_path / "s.pbin")


def test_general_jq_pattern_matches_simple_path(tmp_path):
    src = _write_jsonl(tmp_path / "j.jsonl", [{"meta": {"body": f"text {i}"}} for i in range(5)])
    _pack(src, tmp_path / "simple.pbin", ".meta.body")
    _pack(src, tmp_path / "jq.pbin", '.meta | .["body"]')
    assert (tmp_path / "simple.pbin").read_bytes() == (tmp_path / "jq.pbin").read_bytes()
    _pack(src, tmp_path / "first.pbin", '.meta.body, "a second result, ignored as Modalities ignores it"')
    assert (tmp_path / "first.pbin").read_bytes() == (tmp_path / "jq.pbin").read_bytes()
    with pytest.raises(JsonlError, match=r"j\.jsonl:1: jq pattern '.meta.body.x' fails: cannot index a str"):
        _pack(src, tmp_path / "bad.pbin", ".meta.body.x")


def test_file_existence_policy(tmp_path):
    src = _write_jsonl(tmp_path / "d.jsonl", [{"text": "x"}])
    dst = tmp_path / "d.pbin"
    dst.write_bytes(b"old")
    with pytest.raises(PackedDataError, match=r"d\.pbin: file exists"):
        _pack(src, dst)
    assert dst.read_bytes() == b"old"
    assert _pack(src, dst, file_existence_policy="skip") is None and dst.read_bytes() == b"old"
    assert _pack(src, dst, file_existence_policy="override").num_docs == 1 and read_pbin(dst).num_docs == 1
    with pytest.raises(PackedDataError, match=r"d\.idx: file exists"):
        create_index(src)
    assert create_index(src, file_existence_policy="skip") is None
    with pytest.raises(PackedDataError, match="also an input"):
        _pack(src, src, file_existence_policy="override")


@pytest.mark.parametrize("pattern", [".text", ".text | ."], ids=["json", "jq"])
def test_bom_and_lone_low_surrogate_read_as_jq_reads_them(tmp_path, pattern):
    # Modalities gives jq one line at a time: jq drops a UTF-8 BOM at the start of each line and reads a lone low
    # surrogate escape as U+FFFD. A BOM inside the text (here escaped) stays.
    texts = [b"first", b"a\\udc00b \\udc00\\ud800\\udc00", b"middle", b"\\ufeffkept"]
    plain = [b'{"text": "%s"}' % t for t in texts]
    with_bom = [b"\xef\xbb\xbf" + plain[0], plain[1], b"\xef\xbb\xbf" + plain[2], plain[3]]
    (tmp_path / "bom.jsonl").write_bytes(b"\n".join(with_bom) + b"\n")
    expected = [line.replace(b"\\udc00\\ud800", b"\\ufffd\\ud800").replace(b"a\\udc00", b"a\\ufffd") for line in plain]
    (tmp_path / "plain.jsonl").write_bytes(b"\n".join(expected) + b"\n")
    for name in ["bom", "plain"]:
        create_index(tmp_path / f"{name}.jsonl")
        _pack(tmp_path / f"{name}.jsonl", tmp_path / f"{name}.pbin", pattern, num_processes=2)
    assert (tmp_path / "bom.pbin").read_bytes() == (tmp_path / "plain.pbin").read_bytes()
    doc = read_pbin(tmp_path / "bom.pbin").document(1)
    assert load_tokenizer(TOKENIZER).decode(doc) == "a\ufffdb \ufffd\U00010000<|endoftext|>"


def test_num_processes_below_one_is_refused(tmp_path):
    src = _write_jsonl(tmp_path / "d.jsonl", [{"text": "x"}])
    for n in [0, -1]:
        with pytest.raises(ConfigError, match=rf"--num_processes={n} must be an int >= 1"):
            _pack(src, tmp_path / "d.pbin", num_processes=n)
    _no_output(tmp_path, "d.pbin")


# Packs argv[1] with argv[3] processes through a test hook that misbehaves on cue: a document "DIE" kills its worker
# with SIGKILL (as the out-of-memory killer would); a document "WAIT" prints "ready" and blocks.
_HOOKED_PACK = """
import os, signal, sys, time
from jaxgpt.data import tokenize
from jaxgpt.cli import clean_errors
from jaxgpt.data.prepare.pack import pack_jsonl

def encode_batch(self, texts, _encode_batch=tokenize.Tokenizer.encode_batch):
    if "DIE" in texts:
        os.kill(os.getpid(), signal.SIGKILL)
    if "WAIT" in texts:
        os.write(1, b"ready\\n")
        time.sleep(60)
    return _encode_batch(self, texts)

tokenize.Tokenizer.encode_batch = encode_batch
with clean_errors():
    pack_jsonl(sys.argv[1], sys.argv[2], tokenizer_file=sys.argv[4], jq_pattern=".text", num_processes=int(sys.argv[3]),
               progress=False, batch_bytes=30)
"""


def _hooked_pack(tmp_path, cue, num_processes):
    texts = [f"document {i}" for i in range(40)]
    texts[25] = cue
    src = _write_jsonl(tmp_path / "h.jsonl", [{"text": t} for t in texts])
    args = [sys.executable, "-c", _HOOKED_PACK, src, tmp_path / "h.pbin", str(num_processes), TOKENIZER]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(list(map(str, args)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)


def test_a_worker_that_dies_stops_packing_with_an_error(tmp_path):
    proc = _hooked_pack(tmp_path, "DIE", 2)
    try:
        _, err = proc.communicate(timeout=60)  # multiprocessing.Pool waited here forever
    finally:
        proc.kill()
    assert proc.returncode == 1, err
    assert f"error: {tmp_path / 'h.jsonl'}: a packing worker process died (killed by SIGKILL)" in err
    assert "Traceback" not in err
    _no_output(tmp_path, "h.pbin")


@pytest.mark.parametrize("num_processes", [1, 2])
def test_sigterm_while_packing_leaves_no_temporary_file(tmp_path, num_processes):
    proc = _hooked_pack(tmp_path, "WAIT", num_processes)
    try:
        # a child that hangs before "ready" must fail the test, not hang the suite
        assert select.select([proc.stdout], [], [], 120)[0], "the packing subprocess never reached the WAIT document"
        assert proc.stdout.readline() == "ready\n"
        assert any(name.endswith(".tmp") for name in os.listdir(tmp_path))  # mid-write
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + 15, err  # SystemExit(143), not death by the signal (-15)
    assert "Traceback" not in err
    _no_output(tmp_path, "h.pbin")
