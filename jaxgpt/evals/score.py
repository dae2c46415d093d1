"""Scoring token pairs: each distinct context read once, its continuations as branches after it, many in one row.

Legend: B rows, T slots of a row, K scored (position, token) pairs of a row, V vocab.

Pairs that share their (cut) context form a group. A group is a segment of a row: the context's tokens, then every
continuation but its last token (the branches). A branch's tokens attend to their context and to their own branch only,
and sit at the positions they would have right after the context, so each continuation is scored exactly as by a
forward pass over context + continuation alone; `tests/test_evals.py` checks it against the plain forward, document
masks included. lm-eval instead runs the context again for every choice. The first token of each branch is predicted
at the context's last slot, so one slot can score several tokens: a row's scores are (slot, token) pairs. Only the
hidden states of scored slots go through the vocab projection and its log-softmax (K of them per row): for a model as
narrow as gpt60m a slot's projection costs about as much as all its blocks (BENCHMARKS.md, "Downstream
evaluation"), and of a context only the last slot scores anything.

Segments are packed into rows of a bucket of slots (BUCKET, 1.5 and 2 times that, ... up to the model's seq_len),
rows into batches of a fixed size split over the mesh's batch axes; a batch's K is the smallest of a like ladder that
holds its fullest row's scores. The jitted function compiles once per (bucket, width), never per request. The
attention mask comes from three ids per slot, built here; no [T, T] mask crosses from the host.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxgpt import sharding
from jaxgpt.evals.encode import Pair
from jaxgpt.generate import model_mesh
from jaxgpt.interop.params import on_host
from jaxgpt.model import GPT
from jaxgpt.model.attention import Slots
from jaxgpt.model.gpt import Context

BUCKET = 64  # the shortest row; the others grow by 1.5x and 2x in turn (ladder), up to the model's seq_len
# The narrowest batch of scores per row (K); the others grow as the rows do, up to 2T (a row scores at most its T
# slots plus one first token per branch). A cloze row scores a few of its slots, a multiple-choice row about half.
SCORE_WIDTH = 8


@dataclasses.dataclass
class Segment:
    """One group's slots: the shared context, then its branches. Slots count from the segment's first."""

    tokens: list[int] = dataclasses.field(default_factory=list)  # the ids read
    positions: list[int] = dataclasses.field(default_factory=list)  # each slot's position (rotary, wpe)
    starts: list[int] = dataclasses.field(default_factory=list)  # the first slot each slot may attend to
    branches: list[int] = dataclasses.field(default_factory=list)  # 0: the context (seen by all); b: branch b only
    scores: list[tuple[int, int, int]] = dataclasses.field(default_factory=list)  # (slot, token, pair index)


def segments(pairs: list[Pair], max_len: int, eod_id: int, doc_mask: bool, doc_positions: bool) -> list[Segment]:
    """The segments of all pairs: pairs with equal contexts share one, split where it would exceed max_len slots."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, p in enumerate(pairs):
        groups.setdefault(p.context, []).append(i)
    out = []
    for context, members in groups.items():
        seg = _new_segment(context, eod_id, doc_mask, doc_positions)
        for i in members:
            cont = pairs[i].continuation
            if len(seg.tokens) + len(cont) - 1 > max_len:  # room for this branch in a fresh copy of the context
                out.append(seg)
                seg = _new_segment(context, eod_id, doc_mask, doc_positions)
            _add_branch(seg, context, cont, i, eod_id, doc_mask, doc_positions)
        out.append(seg)
    return out


def _doc_starts(path: list[int], eod_id: int, first: int = 0) -> list[int]:
    """Each path index's document start (the index after the last eod before it), from index `first` on."""
    starts, start = [], 0
    for j, tok in enumerate(path):
        if j >= first:
            starts.append(start)
        if tok == eod_id:
            start = j + 1
    return starts


def _new_segment(context: tuple[int, ...], eod_id: int, doc_mask: bool, doc_positions: bool) -> Segment:
    doc = _doc_starts(list(context), eod_id) if (doc_mask or doc_positions) else [0] * len(context)
    seg = Segment(tokens=list(context), branches=[0] * len(context))
    seg.positions = [j - d if doc_positions else j for j, d in enumerate(doc)]
    seg.starts = [d if doc_mask else 0 for d in doc]  # context slots are its path indices
    return seg


def _add_branch(seg: Segment, context, cont, pair: int, eod_id: int, doc_mask: bool, doc_positions: bool) -> None:
    """Appends continuation `cont` of `context` as a branch: its tokens but the last, their scores, their mask ids."""
    P, at, branch = len(context), len(seg.tokens), max(seg.branches) + 1
    path = [*context, *cont[:-1]]
    doc = _doc_starts(path, eod_id, first=P) if (doc_mask or doc_positions) else [0] * (len(cont) - 1)

    def slot(index: int) -> int:  # a path index's slot in the segment
        return index if index < P else at + index - P

    for j, d in enumerate(doc):
        seg.tokens.append(cont[j])
        seg.positions.append(P + j - d if doc_positions else P + j)
        seg.starts.append(slot(d) if doc_mask else 0)
        seg.branches.append(branch)
    seg.scores.append((P - 1, cont[0], pair))  # the context's last slot predicts the continuation's first token
    seg.scores.extend((at + j - 1, cont[j], pair) for j in range(1, len(cont)))


def ladder(first: int, stop: int) -> list[int]:
    """Sizes below stop, two per octave: first, 1.5 * first, 2 * first, 3 * first, 4 * first, ... Padding to the next
    one wastes under a third of it."""
    octaves = [first << i for i in range(max(0, math.ceil(math.log2(stop / first))))]
    return sorted(size for octave in octaves for size in (octave, octave * 3 // 2) if size < stop)


def buckets(max_len: int) -> list[int]:
    """Row lengths: the ladder from BUCKET below max_len, then max_len."""
    return ladder(BUCKET, max_len) + [max_len]


def pack(segs: list[Segment], max_len: int) -> dict[int, list[list[Segment]]]:
    """Rows of segments by row length: longest segments first, each row as long as its first segment's bucket, then
    filled with the next segments while they fit (next-fit decreasing)."""
    sizes = buckets(max_len)
    rows: dict[int, list[list[Segment]]] = {}
    row, room = None, 0
    for seg in sorted(segs, key=lambda s: -len(s.tokens)):
        if row is None or len(seg.tokens) > room:
            T = next(s for s in sizes if s >= len(seg.tokens))
            row, room = [], T
            rows.setdefault(T, []).append(row)
        row.append(seg)
        room -= len(seg.tokens)
    return rows


def score_width(rows: list[list[Segment]], T: int) -> int:
    """K of a batch of rows of T slots: the smallest size of the ladder from SCORE_WIDTH (at most 2T) that holds its
    fullest row's scores."""
    need = max(sum(len(seg.scores) for seg in row) for row in rows)
    return next((k for k in ladder(SCORE_WIDTH, 2 * T) if k >= need), 2 * T)


def row_arrays(rows: list[list[Segment]], B: int, T: int) -> dict[str, np.ndarray]:
    """The batch's host arrays [B, T] and [B, K] (score_width); rows past len(rows) and slots past a row's segments
    are padding (a padding slot attends to itself alone, and scores nothing: pair -1)."""
    K = score_width(rows, T)
    out = {
        "tokens": np.zeros((B, T), np.int32),
        "positions": np.zeros((B, T), np.int32),
        "starts": np.broadcast_to(np.arange(T, dtype=np.int32), (B, T)).copy(),
        "branches": np.full((B, T), -1, np.int32),
        "score_slots": np.zeros((B, K), np.int32),
        "score_tokens": np.zeros((B, K), np.int32),
        "score_pairs": np.full((B, K), -1, np.int64),
    }
    for b, row in enumerate(rows):
        at, k = 0, 0
        for seg in row:
            n = len(seg.tokens)
            out["tokens"][b, at : at + n] = seg.tokens
            out["positions"][b, at : at + n] = seg.positions
            out["starts"][b, at : at + n] = np.asarray(seg.starts) + at
            out["branches"][b, at : at + n] = seg.branches
            for slot, token, pair in seg.scores:
                out["score_slots"][b, k], out["score_tokens"][b, k], out["score_pairs"][b, k] = slot + at, token, pair
                k += 1
            at += n
    return out


def score_pairs(
    model: GPT, pairs: list[Pair], batch_size: int = 8, on_batch: Callable[[int], None] = lambda n: None
) -> tuple[np.ndarray, np.ndarray]:
    """(log-likelihood float64 [P], is_greedy bool [P]) of each pair's continuation, on the model's mesh. batch_size:
    rows per forward pass, rounded up to a multiple of the mesh's batch shards. on_batch(rows): after each batch."""
    cfg, mesh = model.cfg, model_mesh(model)
    shards = sharding.data_parallel_size(mesh)
    B = math.ceil(batch_size / shards) * shards
    segs = segments(pairs, cfg.seq_len, cfg.eod_token_id, cfg.doc_mask, cfg.doc_positions)
    graphdef, params = nnx.split(model)
    ll, greedy = np.zeros(len(pairs)), np.ones(len(pairs), bool)
    pending = []
    for T, rows in sorted(pack(segs, cfg.seq_len).items()):
        for start in range(0, len(rows), B):
            chunk = rows[start : start + B]
            arrays = row_arrays(chunk, B, T)
            pairs_BxK = arrays.pop("score_pairs")
            placed = {k: _place(v, sharding.batch_sharding(mesh)) for k, v in arrays.items()}
            pending.append((_score_rows(graphdef, params, placed, mesh=mesh), pairs_BxK, len(chunk)))
    for (ll_BxK, greedy_BxK), pairs_BxK, n in pending:  # every batch is dispatched before the first is read back
        real = pairs_BxK >= 0
        np.add.at(ll, pairs_BxK[real], on_host(ll_BxK).astype(np.float64)[real])  # rows of every host
        np.logical_and.at(greedy, pairs_BxK[real], on_host(greedy_BxK)[real])
        on_batch(n)
    return ll, greedy


def _place(x: np.ndarray, where: jax.sharding.NamedSharding) -> jax.Array:
    """Every process builds the same rows: each device takes its block of them (on many hosts too)."""
    return jax.make_array_from_callback(x.shape, where, lambda index: x[index])


@functools.partial(jax.jit, static_argnames=("graphdef", "mesh"))
def _score_rows(graphdef, params, rows: dict, *, mesh):
    """(log-probability [B, K] of each scored token, whether it is the argmax [B, K]) of one batch of rows."""
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        model = nnx.merge(graphdef, params)
        tokens_BxT, starts_BxT, branches_BxT = rows["tokens"], rows["starts"], rows["branches"]
        B, T = tokens_BxT.shape
        key_1x1xT, query_1xTx1 = jnp.arange(T)[None, None, :], jnp.arange(T)[None, :, None]
        shared_BxTxT = (branches_BxT[:, None, :] == 0) | (branches_BxT[:, None, :] == branches_BxT[:, :, None])
        allowed_BxTxT = (key_1x1xT >= starts_BxT[:, :, None]) & (key_1x1xT <= query_1xTx1) & shared_BxTxT
        ctx = Context(rows["positions"], None, Slots(jnp.int32(0), allowed_BxTxT))
        x_BxTxD = model.embed(tokens_BxT, rows["positions"])
        # the cache is scratch space of T slots: attention with an explicit mask is generation's cached path
        h_BxTxD, _ = model.layers(x_BxTxD, ctx, model.init_cache(jnp.zeros((B,), jnp.int32), T))
        h_BxKxD = jnp.take_along_axis(h_BxTxD, rows["score_slots"][:, :, None], axis=1)  # the scored slots only
        logits_BxKxV = model.project(h_BxKxD)
        lse_BxK, best_BxK = jax.nn.logsumexp(logits_BxKxV, axis=-1), jnp.argmax(logits_BxKxV, axis=-1)
        tokens_BxK = rows["score_tokens"]
        ll_BxK = jnp.take_along_axis(logits_BxKxV, tokens_BxK[:, :, None], axis=-1)[:, :, 0] - lse_BxK
        return ll_BxK, best_BxK == tokens_BxK
