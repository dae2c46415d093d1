"""Requests -> token pairs (context ids, continuation ids), exactly as lm-eval 0.4.x's HF backend forms them.

- A pair (context, continuation) of strings: the context's trailing whitespace moves to the continuation; the whole
  string is tokenized, and the continuation's tokens are the whole's tokens after the context's own tokenization. An
  empty context is the prefix token (<|endoftext|>), unless the continuation starts with it.
- Multiple choice: (context, " " + choice) for each choice (lm-eval's default target_delimiter). Cloze: (context,
  target). Perplexity: the text's tokens in rolling windows of the model's length, each predicting its own tokens.
- A pair longer than the window (L tokens of input, L + 1 with the last target) loses tokens from the left.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from jaxgpt.errors import EvalError
from jaxgpt.evals.tasks import Task

DELIMITER = " "  # between a multiple-choice context and each choice: lm-eval's default target_delimiter


@dataclasses.dataclass(frozen=True)
class Pair:
    """One log-likelihood request: the model reads `context` and then `continuation`, scoring the latter."""

    doc: int  # the request's index in its task
    context: tuple[int, ...]  # the ids read first, already cut to the window (at least one)
    continuation: tuple[int, ...]  # the ids scored (each one predicted from all before it)


class Encoder:
    """Tokenizes as lm-eval's HF backend: the tokenizer's own special tokens (a BOS post-processor, if any), except for
    a string that already starts with the prefix token's text, and for a continuation after an empty context."""

    def __init__(self, tokenizer, prefix_token_id: int, window: int):
        self.tokenizer, self.prefix, self.window = tokenizer, prefix_token_id, window
        self.prefix_text = tokenizer.decode([prefix_token_id])

    def ids(self, texts: list[str], specials: bool = True) -> list[list[int]]:
        """Ids of each text (batched: the tokenizer runs once per call)."""
        with_specials = [specials and not t.startswith(self.prefix_text) for t in texts]
        out: list[list[int] | None] = [None] * len(texts)
        for add in (True, False):  # one batch each way
            index = [i for i, w in enumerate(with_specials) if w == add]
            if index:
                encoded = self.tokenizer.encode_batch([texts[i] for i in index], add_special_tokens=add)
                for i, ids in zip(index, encoded):
                    out[i] = [int(t) for t in ids]
        return out

    def pairs(self, strings: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
        """(context ids, continuation ids) of each (context, continuation) string pair, uncut."""
        moved = [_move_spaces(c, x) for c, x in strings]
        full = [c for c, _ in moved if c]
        whole = iter(self.ids([c + x for c, x in moved if c]))
        ctx = iter(self.ids(full))
        empty = iter(self.ids([x for c, x in moved if not c], specials=False))
        out = []
        for c, _ in moved:
            if c:
                w, ci = next(whole), next(ctx)
                out.append((ci, w[len(ci) :]))
            else:  # an empty context reads the prefix token, or the continuation's own first token if it is that
                x = next(empty)
                out.append(([self.prefix], x) if not x or x[0] != self.prefix else (x[:1], x[1:]))
        return out

    def cut(self, context: list[int], continuation: list[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The pair as the model reads it: at most window + 1 tokens in all, cut from the left (the continuation
        whole, and at least one context token)."""
        both = (context + continuation)[-(self.window + 1) :]
        return tuple(both[: len(both) - len(continuation)]), tuple(continuation)

    def rolling(self, ids: list[int]) -> list[tuple[list[int], list[int]]]:
        """lm-eval's rolling windows over a text's ids: the first reads the prefix token then ids[:L-1] and predicts
        ids[:L]; each next one predicts up to L more ids, reading the L ids before its last (disjoint: a window's
        context is what precedes its predictions)."""
        L, out, done = self.window, [], 0
        while done < len(ids):
            n = min(L, len(ids) - done)
            if done == 0:
                out.append(([self.prefix] + ids[: n - 1], ids[:n]))
            else:
                out.append((ids[done + n - L - 1 : done + n - 1], ids[done : done + n]))
            done += n
        return [(a[: len(a) - (len(b) - 1)], b) for a, b in out]


def _move_spaces(context: str, continuation: str) -> tuple[str, str]:
    n = len(context) - len(context.rstrip())
    return (context[:-n], context[-n:] + continuation) if n else (context, continuation)


def request_strings(task: Task) -> list[tuple[int, tuple[str, ...]]]:
    """(request index, strings) of each log-likelihood request, as lm-eval's requests carry them: (context, " " +
    choice) for each choice, (context, target), or (text,) for a perplexity text (scored in rolling windows)."""
    if task.kind == "multiple_choice":
        return [(i, (d["context"], DELIMITER + c)) for i, d in enumerate(task.docs) for c in d["choices"]]
    if task.kind == "cloze":
        return [(i, (d["context"], d["target"])) for i, d in enumerate(task.docs)]
    return [(i, (d["text"],)) for i, d in enumerate(task.docs)]


def task_pairs(task: Task, encoder: Encoder) -> list[Pair]:
    """Every log-likelihood request of the task, cut to the window; an error names the request's file and line."""
    kind, strings = task.kind, request_strings(task)
    if kind == "perplexity":
        texts = encoder.ids([text for _, (text,) in strings])
        raw = [(i, pair) for (i, _), ids in zip(strings, texts) for pair in encoder.rolling(ids)]
    else:
        raw = list(zip([i for i, _ in strings], encoder.pairs([s for _, s in strings])))
    out = []
    for i, (context, continuation) in raw:
        field = {"multiple_choice": "choices", "cloze": "target", "perplexity": "text"}[kind]
        where = f"{task.spec.path}:{task.lines[i]}: field {field!r}"
        if not continuation:
            raise EvalError(f"{where}: leaves no token to score after its context")
        if len(continuation) > encoder.window:
            raise EvalError(
                f"{where}: {len(continuation)} tokens leave no room for a context in the model's window of"
                f" {encoder.window} tokens"
            )
        out.append(Pair(i, *encoder.cut(context, continuation)))
    return out


def doc_sizes(task: Task) -> tuple[np.ndarray, np.ndarray]:
    """(words, UTF-8 bytes) of each perplexity request's text, as lm-eval counts them (words: re.split on \\s+)."""
    words = np.asarray([len(re.split(r"\s+", d["text"])) for d in task.docs], np.float64)
    nbytes = np.asarray([len(d["text"].encode("utf-8")) for d in task.docs], np.float64)
    return words, nbytes
