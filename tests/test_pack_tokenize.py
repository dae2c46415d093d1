"""The tiktoken fast path gives exactly HF tokenizers' ids, and is refused for tokenizers where it might not."""

import json

import numpy as np
import pytest
from conftest import RAW, TEST_DATA, TOKENIZER

from jaxgpt.pbin import read_pbin
from jaxgpt.tokenize import PROBE_TEXT, fast_path_blocker, load_tokenizer

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


def test_code_point_sweep_identical(backends):
    # Every code point was compared once (0 differences); the test keeps a spread-out sample so it runs in seconds.
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
