"""The tiktoken fast path gives HF tokenizers' ids on GPT-2's vocabulary, and is refused for every other vocabulary."""

import json
import random
import re

import numpy as np
import pytest
import tokenizers
from conftest import RAW, TEST_DATA, TOKENIZER

from jaxgpt.data.format.pbin import read_pbin
from jaxgpt.data.tokenize import (
    NOT_VETTED,
    PROBE_TEXT,
    VETTED_VOCABULARIES,
    _build_tiktoken,
    fast_path_blocker,
    load_tokenizer,
    vocabulary_hash,
)
from jaxgpt.errors import PackedDataError

EDGE_TEXTS = [
    PROBE_TEXT,
    "<|endoftext|>",
    "a<|endoftext|>b<|endoftext|><|endoftext|>c <|endoftext|> ",
    "<|endoftext|",  # almost a special token
    "emoji 😀😀 👩🏽‍🚀 🇩🇪 flags ✔︎",
    "CJK 漢字かなカナ 한글 混合text混合",
    "combining e\u0301\u0302 o\u0308 \u0915\u094d\u0937 \u05d0\u05b8",
    "line\r\nbreaks\r\n\r\n\rand\n\n\n\ttabs",
    "spaces" + " " * 100 + "x" + "\u00a0" * 5 + "\u3000\u2003 y",
    "digits 0123456789 ١٢٣٤ ০১২ 3.14e-10 1,234,567",
    "'s 't 're 've 'm 'll 'd 'S 'T ''s",
    "\x00\x01\x1f\x7f\x85\u2028\u2029\ufeff\u200b",
    "",
]


@pytest.fixture(scope="module")
def backends():
    return load_tokenizer(TOKENIZER, "tiktoken"), load_tokenizer(TOKENIZER, "hf")


def _same(fast, slow, texts):
    for text, a, b in zip(texts, fast.encode_batch(texts), slow.encode_batch(texts)):
        assert np.array_equal(a, b), text[:80]


def test_gpt2_takes_the_fast_path(backends):
    assert load_tokenizer(TOKENIZER).backend == "tiktoken"
    assert backends[0].vocab_size == 50257 and backends[0].width == 2


def test_edge_cases_identical(backends):
    _same(*backends, EDGE_TEXTS)


def test_every_code_point_identical(backends):
    # All 1.1M scalar values, each followed by "'s": a letter or digit leaves the contraction a pre-token of its own,
    # punctuation swallows the apostrophe, so the ids show which Unicode class each regex engine (tiktoken's, HF's
    # Oniguruma) puts the code point in. Checked to fail when tiktoken's pattern uses \p{Nd} for \p{N}, or \p{L} loses
    # Lm/Lt or gains \p{M}; runs in ~7 s here.
    cps = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    texts = ["".join(f"{c}'s" for c in cps[i : i + 2000]) for i in range(0, len(cps), 2000)]
    _same(*backends, texts)


def test_random_token_concatenations_identical(backends):
    # Where tiktoken and HF's BPE could part (a pair merged that the merges list lacks) is in text made of tokens.
    fast = backends[0]
    pieces = [fast._impl.decode_single_token_bytes(i) for i in range(fast.vocab_size - 1)]  # -1: not <|endoftext|>
    rng = random.Random(0)
    texts = [b"".join(rng.choices(pieces, k=rng.randint(2, 6))).decode("utf-8", "replace") for _ in range(20000)]
    _same(*backends, texts)


def test_code_point_sample_in_context_identical(backends):
    # A spread-out sample of code points next to letters, digits, apostrophes, newlines and space runs.
    cps = [c for c in range(0, 0x110000, 53) if not 0xD800 <= c < 0xE000]
    texts = [f"a{chr(c)}1 {chr(c)}{chr(c)} x{chr(c)}  {chr(c)}'s\n{chr(c)}" for c in cps]
    _same(*backends, texts)


def test_bundled_corpora_identical(backends):
    for split in ["train", "test"]:
        lines = (RAW / f"redpajama_v2_samples_512_{split}.jsonl").read_text(encoding="utf-8").splitlines()
        _same(*backends, [json.loads(x)["raw_content"] for x in lines])


def test_golden_documents_are_the_fast_ids(backends):
    fast = backends[0]
    lines = (TEST_DATA / "lorem_ipsum_long.jsonl").read_text(encoding="utf-8").splitlines()
    pf = read_pbin(TEST_DATA / "lorem_ipsum_long.pbin")
    ids = fast.encode_batch([json.loads(x)["text"] for x in lines])
    for i, a in enumerate(ids):
        expected = a if len(a) and a[-1] == 50256 else np.append(a, 50256)
        assert np.array_equal(pf.document(i), expected)


def test_blockers():
    spec = json.loads(TOKENIZER.read_text(encoding="utf-8"))
    assert fast_path_blocker(spec) is None
    changes = {
        "normalizer": lambda s: s.update(normalizer={"type": "NFC"}),
        "add_prefix_space": lambda s: s["pre_tokenizer"].update(add_prefix_space=True),
        "post_processor": lambda s: s.update(post_processor={"type": "TemplateProcessing"}),
        "lstrip": lambda s: s["added_tokens"][0].update(lstrip=True),
        "merge ranks": lambda s: s["model"].update(merges=s["model"]["merges"][::-1]),
        "not BPE": lambda s: s["model"].update(type="WordPiece"),
    }
    for name, change in changes.items():
        bad = json.loads(json.dumps(spec))
        change(bad)
        assert fast_path_blocker(bad) is not None, name


def _three_merge_tokenizer(path):
    """The reviewer's counterexample: 256 byte tokens, merges `Z J`, `Q Z`, `QZ J`, and <|endoftext|>."""
    spec = json.loads(TOKENIZER.read_text(encoding="utf-8"))
    vocab = {tok: i for tok, i in spec["model"]["vocab"].items() if len(tok) == 1}
    vocab.update(ZJ=256, QZ=257, QZJ=258)
    spec["model"].update(vocab=vocab, merges=["Z J", "Q Z", "QZ J"])
    spec["added_tokens"] = [dict(spec["added_tokens"][0], id=259)]
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path


def test_unvetted_vocabulary_runs_on_hf(tmp_path):
    path = _three_merge_tokenizer(tmp_path / "three_merges.json")
    spec = json.loads(path.read_text(encoding="utf-8"))
    # tiktoken joins QZ+J (QZJ is a token) where HF first merges Z J, as its list says, and can no longer reach QZJ.
    texts = ["QZJ", "xQZJx QZJQZJ<|endoftext|>"]
    assert _build_tiktoken(str(path)).encode("QZJ") == [258]
    hf = load_tokenizer(path, "hf")
    assert hf.encode_batch(["QZJ"])[0].tolist() == [48, 256]
    auto = load_tokenizer(path)
    assert fast_path_blocker(spec) == NOT_VETTED and auto.blocker == NOT_VETTED
    assert auto.backend == "hf"
    for a, b in zip(auto.encode_batch(texts), hf.encode_batch(texts)):
        assert a.tolist() == b.tolist()
    with pytest.raises(PackedDataError, match=re.escape(f"{path}: tokenizer backend 'tiktoken' refused: {NOT_VETTED}")):
        load_tokenizer(path, "tiktoken")


def test_vetted_vocabulary_however_the_file_is_written(tmp_path):
    # `tokenizers` writes merges as [a, b] pairs, other keys and whitespace: still GPT-2, still the fast path.
    resaved = tmp_path / "gpt2_resaved.json"
    resaved.write_text(tokenizers.Tokenizer.from_file(str(TOKENIZER)).to_str(pretty=True), encoding="utf-8")
    assert resaved.read_bytes() != TOKENIZER.read_bytes()
    assert isinstance(json.loads(resaved.read_text(encoding="utf-8"))["model"]["merges"][0], list)
    for path in [TOKENIZER, resaved]:
        assert vocabulary_hash(json.loads(path.read_text(encoding="utf-8"))) in VETTED_VOCABULARIES
        assert load_tokenizer(path).backend == "tiktoken"
    # One merge fewer is another vocabulary.
    spec = json.loads(TOKENIZER.read_text(encoding="utf-8"))
    spec["model"]["merges"] = spec["model"]["merges"][:-1]
    assert vocabulary_hash(spec) not in VETTED_VOCABULARIES


def test_unknown_ids(backends, tmp_path):
    ids = np.array([15, 50256, 50257, 15639], dtype=np.uint32)
    for tok in backends:
        assert tok.unknown_ids(ids).tolist() == [50257]
    small = load_tokenizer(_three_merge_tokenizer(tmp_path / "three_merges.json"))
    assert small.unknown_ids(ids).tolist() == [50256, 50257, 15639]
    assert small.unknown_ids(np.arange(260)).tolist() == []


def test_added_token_ids_as_hf_gives_them(tmp_path):
    # GPT-2 plus <|pad|>: at the next free id both backends agree; at another id HF renumbers it and tiktoken would not.
    spec = json.loads(TOKENIZER.read_text(encoding="utf-8"))
    for pad_id, backend in [(50257, "tiktoken"), (60000, "hf")]:
        spec["added_tokens"] = spec["added_tokens"][:1] + [dict(spec["added_tokens"][0], id=pad_id, content="<|pad|>")]
        path = tmp_path / f"gpt2_pad_{pad_id}.json"
        path.write_text(json.dumps(spec), encoding="utf-8")
        tok = load_tokenizer(path)
        assert tok.backend == backend, tok.blocker
        assert tok.encode_batch(["a<|pad|>b"])[0].tolist() == [64, 50257, 65]
    assert tok.blocker == "added token '<|pad|>' has id 60000 in the file but 50257 in HF tokenizers"
    with pytest.raises(PackedDataError, match=re.escape("'tiktoken' refused: added token '<|pad|>' has id 60000")):
        load_tokenizer(path, "tiktoken")
