"""Indexing and packing: golden bytes against Modalities 0.5.0, the EOD-once rule, round trips, every bad input."""

import json
import os

import numpy as np
import pytest
from conftest import RAW, TEST_DATA, TOKENIZER

from jaxgpt.packing import JsonlError, create_index, index_jsonl, pack_jsonl
from jaxgpt.pbin import PackedDataError, read_pbin, write_idx
from jaxgpt.tokenize import load_tokenizer

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
    (b'{"text": "a\\ud800b"}', r"text holds an unpaired surrogate"),
    (b'{"text": {"nested": 1}}', r"jq pattern '.text' yields a value of type dict"),
]


@pytest.mark.parametrize("raw,reason", BAD_LINES, ids=[r for _, r in BAD_LINES])
def test_bad_line_fails_pack_with_file_line_reason(tmp_path, raw, reason):
    src = _write_jsonl(tmp_path / "bad.jsonl", [{"text": "fine"}, {"text": "also fine"}], [raw, b'{"text": "after"}'])
    with pytest.raises(JsonlError, match=rf"bad\.jsonl:3: {reason}"):
        _pack(src, tmp_path / "bad.pbin", num_processes=2)
    _no_output(tmp_path, "bad.pbin")


@pytest.mark.parametrize("raw,reason", BAD_LINES[:3], ids=["json", "empty", "utf8"])
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
    # A byte-level tokenizer with 256 base tokens (width 1) and an added token whose id 300 needs 2 bytes.
    spec = json.loads(TOKENIZER.read_text(encoding="utf-8"))
    base = {tok: i for tok, i in spec["model"]["vocab"].items() if len(tok) == 1}
    spec["model"]["vocab"], spec["model"]["merges"] = base, []
    spec["added_tokens"] = [dict(spec["added_tokens"][0], id=300, content="<|big|>")]
    (tmp_path / "tiny.json").write_text(json.dumps(spec), encoding="utf-8")
    src = _write_jsonl(tmp_path / "t.jsonl", [{"text": "ab"}, {"text": "a<|big|>b"}, {"text": "c"}])
    kw = dict(tokenizer_file=tmp_path / "tiny.json", jq_pattern=".text", eod_token="!", num_processes=1, progress=False)
    with pytest.raises(JsonlError, match=r"t\.jsonl:2: token id 300 does not fit the token width of 1 bytes"):
        pack_jsonl(src, tmp_path / "t.pbin", **kw)
    _no_output(tmp_path, "t.pbin")
    report = pack_jsonl(src, tmp_path / "t.pbin", skip_faulty_lines=True, **kw)
    assert report.skipped == [(2, "token id 300 does not fit the token width of 1 bytes")]
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
