"""Tokens the tokenizer lacks: `jaxgpt data add_special_tokens` puts them at the free ids below the model's vocab
table, generation may emit them, and an HF export carries them. (The warm start that re-initialises their rows:
tests/test_warmstart.py.)"""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, TOKENIZER, random_params

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


def _model_favouring(favoured: int, trap_from: int):
    """configs/tiny.py (vocab 50304, lm_head untied) whose every hidden state is u and whose lm_head rows make id
    `favoured` win among the ids below `trap_from`, and the ids from `trap_from` on win over it."""
    from jaxgpt import sharding
    from jaxgpt.config import load_config_file
    from jaxgpt.train.state import StateLayout, StepConfig

    cfg = load_config_file(str(REPO / "configs" / "tiny.py"))
    cfg.model.tie_embeddings = False
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    layout = StateLayout.build(StepConfig.from_config(cfg, num_steps=1), mesh)
    model = layout.model(layout.init(0).params)
    u = np.ones(model.cfg.n_embd, np.float32)
    model.lm_head_norm.weight[...] = jnp.zeros(model.cfg.n_embd)
    model.lm_head_norm.bias[...] = jnp.asarray(u)
    head = np.asarray(model.lm_head.weight[...]) * 0.01
    head[favoured] = 50.0 * u
    head[trap_from:] = 100.0 * u
    model.lm_head.weight[...] = jnp.asarray(head)
    return model


def test_generation_emits_an_added_token_and_never_an_id_above_the_tokenizer(tmp_path):
    from jaxgpt import generate

    model = _model_favouring(50258, trap_from=50259)
    extended = load_tokenizer(_extended(tmp_path))
    for kw in ({"temperature": 1e-6}, {"temperature": 1.0}, {"temperature": 1.0, "top_k": 5}):
        got = generate.generate(model, extended, ["Hello"], max_new_tokens=4, **kw)[0]
        assert got.completion_ids == [50258] * 4 and got.completion == NEW[1] * 4, kw
    # GPT-2's own tokenizer has no id 50258: the same model never emits it, nor anything above 50256
    got = generate.generate(model, load_tokenizer(TOKENIZER), ["Hello"], max_new_tokens=4)[0]
    assert all(i <= 50256 for i in got.completion_ids)


def test_an_hf_export_carries_the_added_tokens(tmp_path):
    transformers = pytest.importorskip("transformers")
    from jaxgpt.interop import hf
    from jaxgpt.model import ModelConfig

    extended = _extended(tmp_path)
    cfg = ModelConfig(n_layer=1, n_embd=16, n_head_q=2, n_head_kv=2, ffn_hidden=32, seq_len=64)  # vocab 50304
    hf.write_folder(str(tmp_path / "out"), random_params(cfg, 0), cfg, tokenizer_file=str(extended))
    out = tmp_path / "out"
    assert (out / "tokenizer.json").read_bytes() == extended.read_bytes()
    decoder = json.loads((out / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    assert decoder == {str(t.pop("id")): t for t in json.loads(extended.read_text())["added_tokens"]}
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["suppress_tokens"] == list(range(50259, 50304))  # after the largest id, 50258
    tok = transformers.AutoTokenizer.from_pretrained(out)
    for token, id_ in zip(NEW, (50257, 50258)):
        assert tok(token)["input_ids"] == [id_] and token in tok.all_special_tokens
    assert tok.eos_token_id == 50256
    text = f"Hi{NEW[0]}user\nhello{NEW[1]} <|endoftext|>"
    assert tok(text)["input_ids"] == load_tokenizer(extended).encode_batch([text])[0].tolist()
