"""Document masking (model.doc_mask, model.doc_positions): a packed window behaves as its documents run alone, on
every position-embedding kind and both CPU attention paths; no gradient crosses a document boundary; generation
follows the same rule; and the kernel choice never drops the mask."""

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxgpt.errors import ConfigError
from jaxgpt.model import GPT, ModelConfig
from jaxgpt.model.attention import Kernel, attention_implementation
from jaxgpt.model.gpt import document_starts

EOD = 63
CFG = ModelConfig(
    vocab_size=64, n_layer=2, n_head_q=4, n_head_kv=2, n_embd=32, ffn_hidden=96, seq_len=40, eod_token_id=EOD
)
LENGTHS = (6, 11, 1, 9)  # three documents ending with EOD (one of them the EOD alone), then a cut one of 9 tokens
KERNELS = {"one call": Kernel("xla", None), "query blocks of 8": Kernel("xla", 8)}


def _documents(seed=0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    docs = [np.append(rng.integers(0, EOD, n - 1), EOD) for n in LENGTHS[:-1]]
    return [*docs, rng.integers(0, EOD, LENGTHS[-1])]


def _model(pos_emb: str, kernel: Kernel = KERNELS["one call"], **flags) -> GPT:
    cfg = dataclasses.replace(CFG, pos_emb=pos_emb, **flags)
    return GPT(cfg, rngs=nnx.Rngs(params=0), attention=kernel)


def _logits(model: GPT, tokens) -> np.ndarray:
    return np.asarray(model(jnp.asarray(np.asarray(tokens)[None], jnp.int32))[0])


def test_document_starts_are_the_index_after_the_last_eod():
    tokens_BxT = jnp.asarray([[1, EOD, 2, 3, EOD, EOD, 4], [EOD, 5, 6, 7, 8, 9, EOD]])
    start_BxT, after_B = document_starts(tokens_BxT, EOD)
    np.testing.assert_array_equal(start_BxT, [[0, 0, 2, 2, 2, 5, 6], [0, 1, 1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(after_B, [6, 7])  # row 0 ends inside a document that starts at 6
    # generation's form: tokens at slots 10 .. 16, nothing before slot 12 (a row's first real slot)
    start_BxT, after_B = document_starts(tokens_BxT, EOD, at=10, floor_B=jnp.asarray([12, 0]))
    np.testing.assert_array_equal(start_BxT, [[12, 12, 12, 12, 12, 15, 16], [0, 11, 11, 11, 11, 11, 11]])


@pytest.mark.parametrize("kernel", KERNELS, ids=list(KERNELS))
@pytest.mark.parametrize("pos_emb", ["rope", "learned", "none"])
def test_a_packed_window_gives_each_documents_logits_alone(pos_emb, kernel):
    docs = _documents()
    model = _model(pos_emb, KERNELS[kernel], doc_mask=True, doc_positions=True)
    packed = _logits(model, np.concatenate(docs))
    alone = np.concatenate([_logits(model, d) for d in docs])
    np.testing.assert_allclose(packed, alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pos_emb", ["rope", "none"])
def test_relative_positions_need_no_restart(pos_emb):
    """Rotary scores depend on the distance alone (and "none" has no positions): the mask is enough."""
    docs = _documents(1)
    model = _model(pos_emb, doc_mask=True)
    np.testing.assert_allclose(
        _logits(model, np.concatenate(docs)), np.concatenate([_logits(model, d) for d in docs]), rtol=1e-5, atol=1e-5
    )


def test_without_the_mask_documents_see_each_other():
    """The equivalence above is not vacuous: the plain model's later documents change with what precedes them."""
    docs = _documents()
    model = _model("rope")
    packed = _logits(model, np.concatenate(docs))
    assert np.abs(packed[LENGTHS[0] :] - _logits(model, np.concatenate(docs[1:]))).max() > 1e-3


@pytest.mark.parametrize("kernel", KERNELS, ids=list(KERNELS))
@pytest.mark.parametrize("pos_emb", ["rope", "learned", "none"])
def test_no_gradient_crosses_a_document_boundary(pos_emb, kernel):
    """The gradient of a loss on document 1's logits is exactly zero on every other document's embeddings."""
    tokens_BxT = jnp.asarray(np.concatenate(_documents())[None], jnp.int32)
    model = _model(pos_emb, KERNELS[kernel], doc_mask=True, doc_positions=pos_emb == "learned")
    ctx, _ = model.context(tokens_BxT)
    doc = slice(LENGTHS[0], LENGTHS[0] + LENGTHS[1])

    def loss(x_BxTxD):
        logits_BxTxV = model.project(model.layers(x_BxTxD, ctx)[0])
        return jax.nn.log_softmax(logits_BxTxV[:, doc]).sum()

    grad_TxD = np.asarray(jax.grad(loss)(model.embed(tokens_BxT, ctx.positions_BxT))[0])
    assert np.abs(grad_TxD[doc]).min(axis=1).max() > 0  # the document's own tokens do get gradient
    others = np.ones(len(grad_TxD), bool)
    others[doc] = False
    assert not np.any(grad_TxD[others])  # exactly 0.0, not merely small


@pytest.mark.parametrize("pos_emb", ["rope", "learned"])
def test_generation_attends_only_after_the_last_eod(pos_emb):
    """Left-padded rows whose prompts hold documents: the cache's prefill and each decode step give the logits of the
    last document alone."""
    model = _model(pos_emb, doc_mask=True, doc_positions=True)
    docs = _documents(2)
    prompts = [np.concatenate(docs[:2]), np.concatenate([docs[2], docs[1][:4]])]  # end inside a document
    P = max(map(len, prompts))
    tokens_BxP = np.zeros((2, P), np.int32)
    first_B = np.asarray([P - len(p) for p in prompts], np.int32)
    for b, p in enumerate(prompts):
        tokens_BxP[b, first_B[b] :] = p
    cache = model.init_cache(jnp.asarray(first_B), 2 * P)
    logits_BxPxV, cache = model(jnp.asarray(tokens_BxP), cache=cache)
    step_B = jnp.asarray([[5], [EOD]], jnp.int32)  # row 1 ends its document: its next token starts afresh
    next_Bx1xV, cache = model(step_B, cache=cache)
    last_docs = [docs[1], docs[1][:4]]
    for b in range(2):
        alone = _logits(model, np.append(last_docs[b], step_B[b]))
        np.testing.assert_allclose(logits_BxPxV[b, -1], alone[-2], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(next_Bx1xV[b, 0], alone[-1], rtol=1e-5, atol=1e-5)
    after_eod_1xV, _ = model(jnp.asarray([[7], [7]], jnp.int32), cache=cache)
    np.testing.assert_allclose(after_eod_1xV[1, 0], _logits(model, [7])[0], rtol=1e-5, atol=1e-5)


def test_a_prompt_without_eod_gives_the_plain_models_logits():
    """What the HF export relies on: without an <|endoftext|>, a doc-masked model is the plain one."""
    tokens = _documents(3)[-1]  # no EOD in it
    plain, masked = _model("learned"), _model("learned", doc_mask=True, doc_positions=True)
    np.testing.assert_array_equal(_logits(plain, tokens), _logits(masked, tokens))


def test_cudnn_is_never_chosen_with_the_document_mask():
    bf16, hopper = jnp.bfloat16, dict(backend="gpu", compute_capability="9.0")
    assert attention_implementation("auto", bf16, 64, **hopper) == "cudnn"
    with pytest.warns(UserWarning, match="segment ids"):
        assert attention_implementation("auto", bf16, 64, doc_mask=True, **hopper) == "xla"
    with pytest.raises(ConfigError, match=r"train.attention='cudnn' cannot run here: model.doc_mask=True"):
        attention_implementation("cudnn", bf16, 64, doc_mask=True, **hopper)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # where cuDNN would not run anyway, nothing to warn about
        assert attention_implementation("auto", bf16, 64, backend="cpu", doc_mask=True) == "xla"
    assert Kernel.choose("auto", jnp.float32, 64, "cpu", doc_mask=True) == Kernel("xla", 128)


def test_eod_token_id_is_checked_against_the_vocab_only_when_used():
    ModelConfig(vocab_size=64)  # 50256 unused: no error
    with pytest.raises(ConfigError, match=r"model.eod_token_id=50256 must be below model.vocab_size=64"):
        ModelConfig(vocab_size=64, doc_mask=True)
    with pytest.raises(ConfigError, match=r"model.doc_positions=1 must be True or False"):
        ModelConfig(doc_positions=1)
