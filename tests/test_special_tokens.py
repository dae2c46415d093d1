"""Tokens the tokenizer lacks: `jaxgpt data add_special_tokens` puts them at the free ids below the model's vocab
table, generation may emit them, and an HF export carries them. (The warm start that re-initialises their rows:
tests/test_warmstart.py.)"""

import json
import subprocess
import sys

import pytest
from conftest import REPO, TOKENIZER

from jaxgpt.data.prepare.special_tokens import add_special_tokens
from jaxgpt.data.tokenize import load_tokenizer, vocabulary_hash
from jaxgpt.errors import PackedDataError

NEW = ["<|im_start|>", "<|im_end|>"]  # chat markers GPT-2's tokenizer lacks; ids 50257, 50258


def _cli(*args):
    code = "import sys; from jaxgpt.cli import main; main(sys.argv[1:]); assert 'jax' not in sys.modules"
    cmd = [sys.executable, "-c", code, "data", "add_special_tokens", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)


def _extended(tmp_path, name="tokenizer.json"):
    out = tmp_path / name
    add_special_tokens(str(TOKENIZER), str(out), NEW, 50304)
    return out


def test_new_tokens_get_the_next_ids_and_encode_as_one_id_with_the_text_around_unchanged(tmp_path):
    out = tmp_path / "chat" / "tokenizer.json"
    done = _cli("--tokenizer_file", TOKENIZER, "--out", out, *NEW)
    assert done.returncode == 0, done.stderr
    assert "'<|im_start|>': new id 50257" in done.stdout and "'<|im_end|>': new id 50258" in done.stdout
    spec, gpt2 = json.loads(out.read_text()), json.loads(TOKENIZER.read_text())
    flags = {"special": True, "normalized": False, "lstrip": False, "rstrip": False, "single_word": False}
    assert spec["added_tokens"] == gpt2["added_tokens"] + [
        {"id": 50257, "content": NEW[0], **flags},
        {"id": 50258, "content": NEW[1], **flags},
    ]
    assert vocabulary_hash(spec) == vocabulary_hash(gpt2)  # the BPE itself is untouched
    before, after = "Hello world, it's 2024:\n", " said the user. <|endoftext|> naïve"
    text = f"{before}{NEW[0]}user{NEW[1]}{after}"
    old = load_tokenizer(TOKENIZER, backend="hf")
    parts = [old.encode_batch([t])[0].tolist() for t in (before, "user", after)]
    want = parts[0] + [50257] + parts[1] + [50258] + parts[2]
    for backend in ("auto", "hf"):  # auto: GPT-2's vocabulary keeps the tiktoken fast path
        tok = load_tokenizer(out, backend=backend)
        assert tok.max_id == 50258
        assert tok.encode_batch([text])[0].tolist() == want, backend
        assert tok.decode(want) == text


def test_no_room_below_vocab_size_is_one_line_and_writes_nothing(tmp_path):
    done = _cli("--tokenizer_file", TOKENIZER, "--out", tmp_path / "t.json", "--vocab_size", 50258, *NEW)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip() == (
        "error: --vocab_size=50258: the new tokens need 2 rows past the tokenizer's 50257 ids, the model's table has"
        " 1 free; nothing written"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_token_already_present_is_reported_and_not_added_again(tmp_path):
    out = tmp_path / "t.json"
    report = add_special_tokens(str(TOKENIZER), str(out), ["<|endoftext|>", "hello", NEW[0], NEW[0]], 50304)
    assert report == (
        f"{out}: '<|endoftext|>': already id 50256, not added; 'hello': already id 31373, not added;"
        " '<|im_start|>': new id 50257; '<|im_start|>': already id 50257, not added"
    )
    added = json.loads(out.read_text())["added_tokens"]
    assert [(t["content"], t["id"]) for t in added] == [("<|endoftext|>", 50256), (NEW[0], 50257)]
    # "hello" stays an ordinary token: " hello" is still one BPE token (had HF's add_special_tokens made it special,
    # it would be split out of the text: [" ", "hello"])
    assert load_tokenizer(out, backend="hf").encode_batch([" hello"])[0].tolist() == [23748]


def test_an_existing_output_follows_the_file_existence_policy(tmp_path):
    out = tmp_path / "t.json"
    out.write_text("old")
    with pytest.raises(PackedDataError, match="file exists"):
        add_special_tokens(str(TOKENIZER), str(out), NEW, 50304)
    assert add_special_tokens(str(TOKENIZER), str(out), NEW, 50304, "skip") is None and out.read_text() == "old"
    assert add_special_tokens(str(TOKENIZER), str(out), NEW, 50304, "override").startswith(f"{out}: ")
    assert load_tokenizer(out).max_id == 50258
    for args, message in [
        ([str(tmp_path / "nope.json"), str(tmp_path / "o.json"), NEW, 50304], "--tokenizer_file=.*nope.json: no such"),
        ([str(TOKENIZER), str(tmp_path / "o.json"), [""], 50304], "TOKEN '' is empty"),
        ([str(TOKENIZER), str(TOKENIZER), NEW, 50304], "the output path is also an input"),
    ]:
        with pytest.raises(PackedDataError, match=message):
            add_special_tokens(*args, "override")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]
