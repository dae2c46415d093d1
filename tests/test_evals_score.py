"""Branch scoring (jaxgpt/evals/score.py) equals a plain forward pass per request in every row shape it compiles: rows
of each bucket of a 256-slot model (64, 96, 128, 192, 256) and score widths from a few slots to more than the row."""

import collections

import numpy as np
from conftest import assert_close, model_with, random_params

from jaxgpt.evals import score
from jaxgpt.evals.encode import Pair
from jaxgpt.model import ModelConfig

CFG = ModelConfig(vocab_size=512, n_layer=2, n_embd=32, n_head_q=4, n_head_kv=2, ffn_hidden=64, seq_len=256)


def test_ladders_pad_by_under_a_third():
    assert score.buckets(512) == [64, 96, 128, 192, 256, 384, 512]
    assert score.buckets(64) == [64] and score.buckets(100) == [64, 96, 100]
    for n in range(1, 2049):
        size = next(s for s in score.buckets(2048) if s >= max(n, score.BUCKET))
        assert size - n < size / 3 or n < score.BUCKET


def pairs_of_every_shape(rng) -> list[Pair]:
    """Groups of continuations after contexts of 5 to 240 tokens: at batch size 4, rows of every bucket, scoring a few
    of their slots (a short continuation after a long context) to more than them (90 one-token branches)."""
    groups = [(240, 1, 4), (180, 1, 4), (150, 4, 10), (100, 2, 20), (70, 2, 10), (50, 2, 6), (5, 90, 1), (40, 3, 6)]
    groups += [(20, 2, 8)]  # (context tokens, continuations, their longest)
    pairs = []
    for doc, (n_ctx, n_cont, longest) in enumerate(groups):
        context = tuple(int(t) for t in rng.integers(0, CFG.vocab_size, n_ctx))
        for _ in range(n_cont):
            n = int(rng.integers(1, longest + 1))
            pairs.append(Pair(doc, context, tuple(int(t) for t in rng.integers(0, CFG.vocab_size, n))))
    return pairs


def log_probs(model, sequences: list[tuple[int, ...]]) -> list[np.ndarray]:
    """Log-probabilities [len, V] after each prefix of each sequence, from the plain causal forward over the sequence
    right-padded to the model's length (the padding comes after every position read, so it changes nothing)."""
    import jax
    from flax import nnx

    forward = nnx.jit(lambda m, tokens: jax.nn.log_softmax(m(tokens), axis=-1))
    out = []
    for start in range(0, len(sequences), 16):
        chunk = sequences[start : start + 16]
        tokens_BxT = np.zeros((16, CFG.seq_len), np.int32)
        for b, seq in enumerate(chunk):
            tokens_BxT[b, : len(seq)] = seq
        logp_BxTxV = np.asarray(forward(model, tokens_BxT), np.float64)
        out += [logp_BxTxV[b, : len(seq)] for b, seq in enumerate(chunk)]
    return out


def greedy_pairs(model, rng, first_doc: int) -> list[Pair]:
    """A greedy continuation of 1 to 3 tokens (is_greedy must hold) and a non-greedy one after each of 3 contexts."""
    contexts = [tuple(int(t) for t in rng.integers(0, CFG.vocab_size, n)) for n in (3, 30, 90)]
    grown = contexts
    for _ in range(3):
        grown = [seq + (int(logp[-1].argmax()),) for seq, logp in zip(grown, log_probs(model, grown))]
    pairs = []
    for doc, (context, seq) in enumerate(zip(contexts, grown), start=first_doc):
        greedy = seq[len(context) : len(context) + doc % 3 + 1]
        pairs += [Pair(doc, context, greedy), Pair(doc, context, ((greedy[0] + 1) % CFG.vocab_size,) + greedy[1:])]
    return pairs


def plain_scores(model, pairs: list[Pair]) -> tuple[np.ndarray, np.ndarray]:
    """Each pair's log-likelihood and greedy flag from the plain forward over context + continuation[:-1]."""
    logps = log_probs(model, [p.context + p.continuation[:-1] for p in pairs])
    ll, greedy = np.zeros(len(pairs)), np.zeros(len(pairs), bool)
    for i, (p, logp) in enumerate(zip(pairs, logps)):
        at = np.arange(len(p.context) - 1, len(p.context) - 1 + len(p.continuation))
        ll[i] = logp[at, p.continuation].sum()
        greedy[i] = (logp[at].argmax(-1) == p.continuation).all()
    return ll, greedy


def test_branch_scoring_equals_the_plain_forward_in_every_row_shape():
    model = model_with(CFG, random_params(CFG, 0))
    rng = np.random.default_rng(0)
    pairs = pairs_of_every_shape(rng)
    pairs += greedy_pairs(model, rng, first_doc=pairs[-1].doc + 1)
    segs = score.segments(pairs, CFG.seq_len, CFG.eod_token_id, CFG.doc_mask, CFG.doc_positions)
    shapes = collections.Counter()
    for T, rows in score.pack(segs, CFG.seq_len).items():
        for start in range(0, len(rows), 4):
            shapes[T, score.score_width(rows[start : start + 4], T)] += 1
    assert {T for T, _ in shapes} == set(score.buckets(CFG.seq_len))
    assert any(K <= T // 4 for T, K in shapes) and any(K > T for T, K in shapes)

    ll, greedy = score.score_pairs(model, pairs, batch_size=4)
    want_ll, want_greedy = plain_scores(model, pairs)
    assert_close(ll, want_ll, depth=CFG.seq_len)
    np.testing.assert_array_equal(greedy, want_greedy)
    assert greedy.sum() >= 3  # the greedy pairs
