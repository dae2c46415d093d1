"""Export to native Hugging Face classes and import back: logits, bf16, greedy generation, round trips, refusals.

Every row of jaxgpt/interop/hf.py's table, tied and untied, with random non-trivial norm weights and biases, at tiny
sizes. torch and transformers are imported inside the tests only (nothing training imports needs them).
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TOKENIZER, assert_close, model_with, random_params
from flax import nnx

from jaxgpt.errors import ExportError, WarmStartError
from jaxgpt.interop import hf, warmstart
from jaxgpt.interop.params import flat_params
from jaxgpt.model import ModelConfig

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

BASE = ModelConfig(
    vocab_size=128, n_layer=2, n_head_q=4, n_head_kv=2, n_embd=32, ffn_hidden=96, init_std=0.3, seq_len=128
)  # the rest: ModelConfig's defaults
REAL_VOCAB = 100  # the test tokenizer's tokens: ids 100..127 are padded rows
# case -> (options, the native class)
CASES = {
    "stablelm_rope_gqa_tied": (dict(), "StableLmForCausalLM"),
    "stablelm_nopos_nobiasnorm_untied": (
        dict(pos_emb="none", norm="layer_no_bias", tie_embeddings=False),
        "StableLmForCausalLM",
    ),
    "llama_bias_untied": (dict(norm="rms", use_bias=True, tie_embeddings=False, n_head_kv=4), "LlamaForCausalLM"),
    "llama_gqa_tied": (dict(norm="rms", n_head_kv=1), "LlamaForCausalLM"),
    "starcoder2_bias_gqa_untied": (dict(mlp="gelu", use_bias=True, tie_embeddings=False), "Starcoder2ForCausalLM"),
    "starcoder2_nobias_tied": (dict(mlp="gelu", norm="layer_no_bias", n_head_kv=4), "Starcoder2ForCausalLM"),
    "gpt2_learned_bias_untied": (
        dict(mlp="gelu", pos_emb="learned", use_bias=True, tie_embeddings=False, n_head_kv=4),
        "GPT2LMHeadModel",
    ),
    "gpt2_nopos_gqa_tied": (dict(mlp="gelu", pos_emb="none", norm="layer_no_bias"), "GPT2LMHeadModel"),
}


def _tokenizer_file(directory) -> str:
    """A word-level tokenizer.json of REAL_VOCAB tokens, the last one <|endoftext|>."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(REAL_VOCAB - 1)} | {"<|endoftext|>": REAL_VOCAB - 1}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<|endoftext|>"])
    path = str(directory / "tokenizer.json")
    tok.save(path)
    return path


@nnx.jit
def _logits(model, tokens_BxT):
    return model(tokens_BxT)


def _hf_logits(hf_model, tokens_BxT: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return hf_model(torch.from_numpy(tokens_BxT.astype(np.int64))).logits.float().numpy()


def _tokens(cfg, B=2, T=24, seed=0):
    return np.random.default_rng(seed).integers(0, REAL_VOCAB, (B, T)).astype(np.int32)


@pytest.fixture(scope="module", params=sorted(CASES))
def exported(request, tmp_path_factory):
    """(case, cfg, flat params, jaxgpt logits, float32 export folder, bf16 export folder)."""
    name = request.param
    options, _ = CASES[name]
    cfg = dataclasses.replace(BASE, **options)
    flat = random_params(cfg, seed=sorted(CASES).index(name))
    root = tmp_path_factory.mktemp(name)
    tokenizer = _tokenizer_file(root)
    for dtype in hf.DTYPES:
        hf.write_folder(str(root / dtype), flat, cfg, tokenizer_file=tokenizer, dtype=dtype)
    logits = np.asarray(_logits(model_with(cfg, flat), jnp.asarray(_tokens(cfg))))
    return name, cfg, flat, logits, root / "float32", root / "bfloat16"


def test_float32_logits_equal_jaxgpts(exported):
    name, cfg, _, logits, folder, _ = exported
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    assert type(model).__name__ == CASES[name][1]
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert (embed.data_ptr() == head.data_ptr()) == cfg.tie_embeddings  # tied stays tied, untied stays untied
    got = _hf_logits(model, _tokens(cfg))
    assert_close(got, logits, depth=cfg.mlp_hidden)  # torch sums in its own order
    assert np.abs(logits).max() > 0.5  # logits of substance, not near-zero noise


def test_bfloat16_export_loads_within_bf16_tolerance(exported):
    name, cfg, _, logits, _, folder = exported
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype="auto")  # config.json's dtype
    assert model.dtype == torch.bfloat16 and type(model).__name__ == CASES[name][1]
    got = _hf_logits(model, _tokens(cfg))
    # bf16 weights and compute (8 significant bits) over 2 blocks: a few percent, relative to the logits' size
    error = np.linalg.norm(got - logits) / np.linalg.norm(logits)
    assert error <= 0.03, error


def test_hf_greedy_generate_of_32_tokens_equals_jaxgpt_generate(exported):
    """HF generate (KV cache, generation_config.json's eos and suppressed padded rows) against jaxgpt.generate."""
    from jaxgpt.generate import generate_ids

    _, cfg, flat, _, folder, _ = exported
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    prompts_BxP = _tokens(cfg, B=2, T=8, seed=1)
    with torch.no_grad():
        out = model.generate(torch.from_numpy(prompts_BxP.astype(np.int64)), max_new_tokens=32, do_sample=False)
    eod = REAL_VOCAB - 1
    want = []
    for row in out[:, prompts_BxP.shape[1] :].tolist():  # HF pads a row after its eos: cut after the first
        want.append(row[: row.index(eod) + 1] if eod in row else row)
    got = generate_ids(
        model_with(cfg, flat), prompts_BxP.tolist(), max_new_tokens=32, eos_id=eod, vocab_size=REAL_VOCAB
    )
    assert got == want
    assert all(t < REAL_VOCAB for row in got for t in row)
    assert len(set(got[0] + got[1])) > 2  # not one token repeated (init_std 0.3 keeps random models from that)


def test_round_trip_through_hf_is_bit_identical(exported):
    _, cfg, flat, _, folder, _ = exported
    back = warmstart.load(str(folder), cfg)
    assert sorted(back) == sorted(flat)
    for key in flat:
        np.testing.assert_array_equal(back[key], flat[key], err_msg=key)


def test_folder_has_tokenizer_and_generation_config(exported):
    _, cfg, _, _, folder, _ = exported
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    eod = REAL_VOCAB - 1
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (eod, eod, eod)
    assert tok("w3 w7 <|endoftext|>")["input_ids"] == [3, 7, eod]
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["eos_token_id"] == eod
    assert generation["suppress_tokens"] == list(range(REAL_VOCAB, cfg.vocab_size))
    config = json.loads((folder / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (eod, eod, eod)


# name -> (HF config class, its settings, the jaxgpt options that hold it)
HF_MODELS = {
    "llama": (
        "LlamaConfig",
        dict(
            hidden_size=32,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            attention_bias=True,
            mlp_bias=True,
        ),
        dict(norm="rms", ffn_hidden=384, use_bias=True, tie_embeddings=False),  # SwiGLU: int(2 * 384 / 3) = 256
    ),
    "stablelm": (
        "StableLmConfig",
        dict(
            hidden_size=32,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            layer_norm_eps=1e-5,
            partial_rotary_factor=1.0,
            tie_word_embeddings=True,
        ),
        dict(ffn_hidden=384, n_head_kv=4),
    ),
    "starcoder2": (
        "Starcoder2Config",
        dict(
            hidden_size=32,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            norm_epsilon=1e-5,
            hidden_act="gelu",
            sliding_window=None,
            use_bias=True,
            tie_word_embeddings=True,
        ),
        dict(mlp="gelu", ffn_hidden=128, use_bias=True),
    ),
    "gpt2": (
        "GPT2Config",
        dict(
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_inner=128,
            n_positions=128,
            activation_function="gelu",
            layer_norm_epsilon=1e-5,
            tie_word_embeddings=False,
        ),
        dict(mlp="gelu", ffn_hidden=128, pos_emb="learned", use_bias=True, n_head_kv=4, tie_embeddings=False),
    ),
}


def _random_hf_model(name: str, directory, vocab: int = 128):
    """A randomly initialised HF model of class `name`, built here (nothing downloaded), with random norm weights
    and biases (HF initialises those to 1 and 0), saved to `directory`."""
    config_class, settings, _ = HF_MODELS[name]
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(vocab_size=vocab, **settings)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for key, p in model.named_parameters():
            if key.endswith("bias"):
                p.normal_(0.0, 0.1)
            elif "norm" in key or ".ln_" in key:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif "wte" in key or "embed" in key or "wpe" in key or "lm_head" in key:
                p.normal_(0.0, 0.3)  # HF's 0.02 leaves the logits near 0
    model.save_pretrained(directory)
    return model


@pytest.mark.parametrize("name", sorted(HF_MODELS))
def test_random_hf_model_imports_with_equal_logits(name, tmp_path):
    hf_model = _random_hf_model(name, tmp_path)
    cfg = dataclasses.replace(BASE, **HF_MODELS[name][2])
    flat = warmstart.load(str(tmp_path), cfg)
    tokens = _tokens(cfg)
    want = _hf_logits(hf_model, tokens)
    got = np.asarray(_logits(model_with(cfg, flat), jnp.asarray(tokens)))
    assert_close(got, want, depth=cfg.mlp_hidden)  # torch sums in its own order
    assert np.abs(want).max() > 0.5


def test_smaller_hf_vocab_fills_padded_rows_as_training_init_does(tmp_path):
    """An HF vocab of 100 into a 128-row table: rows 0..99 from HF, rows 100..127 those of the fresh init."""
    from jaxgpt import sharding
    from jaxgpt.train.optim import OptimConfig
    from jaxgpt.train.state import StateLayout, StepConfig

    hf_model = _random_hf_model("gpt2", tmp_path, vocab=REAL_VOCAB)
    cfg = dataclasses.replace(BASE, **HF_MODELS["gpt2"][2])
    step_cfg = StepConfig(cfg, OptimConfig(), num_steps=10, compute_dtype="float32", loss_chunks=1)
    layout = StateLayout.build(step_cfg, sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1]))
    fresh = flat_params(layout.init(7).params)
    state = warmstart.init_state(layout, 7, str(tmp_path))
    params = flat_params(state.params)
    np.testing.assert_array_equal(params["wte.weight"][REAL_VOCAB:], fresh["wte.weight"][REAL_VOCAB:])
    np.testing.assert_array_equal(params["lm_head.weight"][REAL_VOCAB:], fresh["lm_head.weight"][REAL_VOCAB:])
    assert int(state.step) == 0
    tokens = _tokens(cfg)
    got = np.asarray(_logits(layout.model(state.params), jnp.asarray(tokens)))[..., :REAL_VOCAB]
    assert_close(got, _hf_logits(hf_model, tokens), depth=cfg.mlp_hidden)  # torch sums in its own order


@pytest.mark.parametrize(
    "options, named",
    [
        (dict(qk_norm=True), "model.qk_norm=True"),
        (dict(norm="rms", mlp="gelu"), "model.norm='rms'"),
        (dict(pos_emb="learned"), "model.pos_emb='learned'"),
        (dict(use_bias=True), "model.use_bias=True"),
        (dict(norm="rms", pos_emb="none"), "model.pos_emb='none'"),
    ],
)
def test_options_without_a_native_class_are_refused_by_name(options, named, tmp_path):
    cfg = dataclasses.replace(BASE, **options)
    flat = random_params(cfg, 0)
    with pytest.raises(ExportError, match="no exact Hugging Face class") as e:
        hf.write_folder(str(tmp_path / "out"), flat, cfg, tokenizer_file=_tokenizer_file(tmp_path))
    assert named in str(e.value) and "Llama" in str(e.value) and "GPT-2" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_import_names_the_option_that_differs_and_both_values(tmp_path):
    _random_hf_model("llama", tmp_path)
    cfg = dataclasses.replace(BASE, **HF_MODELS["llama"][2], n_layer=3, norm_eps=1e-6)
    with pytest.raises(WarmStartError) as e:
        warmstart.load(str(tmp_path), cfg)
    assert "model.n_layer: the run has 3" in str(e.value) and "2" in str(e.value)
    assert "model.norm_eps: the run has 1e-06" in str(e.value) and "1e-05" in str(e.value)


def test_import_refuses_biases_the_run_cannot_hold(tmp_path):
    _random_hf_model("gpt2", tmp_path)  # random, non-zero biases
    cfg = dataclasses.replace(BASE, **{**HF_MODELS["gpt2"][2], "use_bias": False})
    with pytest.raises(WarmStartError, match=r"transformer\.h\.0\.attn\.c_attn\.bias is not zero.*use_bias"):
        warmstart.load(str(tmp_path), cfg)


def test_gpt2_tokenizer_export_sets_50256_and_suppresses_the_padded_rows(tmp_path):
    cfg = dataclasses.replace(BASE, vocab_size=50304, n_layer=1, n_embd=16, n_head_q=2, n_head_kv=2)
    hf.write_folder(str(tmp_path / "out"), random_params(cfg, 0), cfg, tokenizer_file=str(TOKENIZER))
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (50256, 50256, 50256)
    generation = transformers.GenerationConfig.from_pretrained(tmp_path / "out")
    assert generation.suppress_tokens == list(range(50257, 50304)) and generation.eos_token_id == 50256
    from tokenizers import Tokenizer

    text = "Hello world, jaxgpt exports.<|endoftext|>"
    assert tok(text)["input_ids"] == Tokenizer.from_file(str(TOKENIZER)).encode(text).ids


def test_a_document_masked_model_exports_with_a_note_and_plain_logits_without_eod(tmp_path):
    """HF's classes have no document masking: the folder says so, and a prompt without <|endoftext|> still gives
    jaxgpt's logits."""
    cfg = dataclasses.replace(
        BASE, mlp="gelu", pos_emb="learned", use_bias=True, doc_mask=True, doc_positions=True, eod_token_id=99
    )
    flat = random_params(cfg, seed=0)
    with pytest.warns(UserWarning, match="have no document masking"):
        hf.write_folder(str(tmp_path / "hf"), flat, cfg, tokenizer_file=_tokenizer_file(tmp_path))
    assert "model.doc_mask=True" in (tmp_path / "hf" / "README.md").read_text()
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert "document masking" in model.config.jaxgpt_note
    tokens = _tokens(cfg) % 99  # no <|endoftext|> (id 99)
    want = np.asarray(_logits(model_with(cfg, flat), jnp.asarray(tokens)))
    assert_close(_hf_logits(model, tokens), want, depth=cfg.mlp_hidden)
