"""Per-task metrics from per-pair log-likelihoods, with lm-eval 0.4.x's aggregations and standard errors.

- acc, acc_norm (multiple choice), acc (cloze: the target is the greedy continuation): means, with the sample standard
  error of the mean.
- perplexity (cloze): exp(-mean log-likelihood), with lm-eval's bootstrap standard error: `iters` resamples drawn in
  chunks of 1000, chunk i by Python's random.Random(i), here replayed in numpy from the same Mersenne Twister state.
- word_perplexity, byte_perplexity, bits_per_byte (perplexity tasks): ratios of sums over all texts; lm-eval gives
  them no standard error, and neither does this (None).
"""

from __future__ import annotations

import math
import random

import numpy as np

from jaxgpt.evals.encode import Pair, doc_sizes
from jaxgpt.evals.tasks import Task

BOOTSTRAP_CHUNK = 1000  # resamples per seeded generator, as lm-eval draws them


def task_metrics(task: Task, pairs: list[Pair], ll: np.ndarray, greedy: np.ndarray, bootstrap_iters: int) -> dict:
    """{"metrics": {name: value}, "stderr": {name: value or None}, "requests": n} of one task."""
    docs = np.asarray([p.doc for p in pairs])
    n = len(task.docs)
    if task.kind == "multiple_choice":
        metrics, stderr = _multiple_choice(task, docs, ll)
    elif task.kind == "cloze":
        doc_ll = np.bincount(docs, weights=ll, minlength=n)
        doc_greedy = np.ones(n, bool)
        np.logical_and.at(doc_greedy, docs, greedy)
        acc = doc_greedy.astype(np.float64)
        metrics = {"acc": float(acc.mean()), "perplexity": math.exp(-float(doc_ll.mean()))}
        stderr = {"acc": mean_stderr(acc), "perplexity": bootstrap_perplexity_stderr(doc_ll, bootstrap_iters)}
    else:
        total = -float(np.bincount(docs, weights=ll, minlength=n).sum())
        words, nbytes = doc_sizes(task)
        metrics = {
            "word_perplexity": math.exp(total / words.sum()),
            "byte_perplexity": math.exp(total / nbytes.sum()),
            "bits_per_byte": total / nbytes.sum() / math.log(2),
        }
        stderr = dict.fromkeys(metrics)
    return {"metrics": metrics, "stderr": stderr, "requests": n}


def _multiple_choice(task: Task, docs: np.ndarray, ll: np.ndarray) -> tuple[dict, dict]:
    acc, acc_norm, at = [], [], 0
    for i, doc in enumerate(task.docs):
        choices = doc["choices"]
        lls = ll[at : at + len(choices)]
        assert (docs[at : at + len(choices)] == i).all()  # pairs come in request order, one per choice
        at += len(choices)
        chars = np.asarray([float(len(c)) for c in choices])
        acc.append(float(np.argmax(lls) == doc["label"]))
        acc_norm.append(float(np.argmax(lls / chars) == doc["label"]))
    acc, acc_norm = np.asarray(acc), np.asarray(acc_norm)
    return (
        {"acc": float(acc.mean()), "acc_norm": float(acc_norm.mean())},
        {"acc": mean_stderr(acc), "acc_norm": mean_stderr(acc_norm)},
    )


def mean_stderr(x: np.ndarray) -> float | None:
    """The sample standard deviation (n - 1) over sqrt(n); None for a single value."""
    return float(np.std(x, ddof=1) / math.sqrt(len(x))) if len(x) > 1 else None


def bootstrap_perplexity_stderr(doc_ll: np.ndarray, iters: int) -> float | None:
    """lm-eval's bootstrap of exp(-mean) over `iters` resamples (0: none). Resample r of chunk i takes
    len(doc_ll) indices floor(u * n), u the next doubles of random.Random(i), exactly as random.choices draws them."""
    n = len(doc_ll)
    if iters <= 0 or n < 2:
        return None
    chunk = min(BOOTSTRAP_CHUNK, iters)
    stats = []
    for i in range(iters // chunk):
        u = _python_random(i).random_sample(chunk * n)
        index = np.floor(u * n).astype(np.int64).reshape(chunk, n)
        stats.append(np.exp(-doc_ll[index].mean(axis=1)))
    stats = np.concatenate(stats)
    return float(np.std(stats, ddof=1))


def _python_random(seed: int) -> np.random.RandomState:
    """A numpy generator in the state of random.Random(seed): both are MT19937 and make a double from two 32-bit
    draws the same way, so random_sample() gives random.random()'s sequence."""
    _, words, _ = random.Random(seed).getstate()
    rs = np.random.RandomState()
    rs.set_state(("MT19937", np.asarray(words[:-1], np.uint32), words[-1]))
    return rs
