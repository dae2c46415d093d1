"""Downstream evaluation: multiple-choice, cloze and perplexity tasks scored as lm-evaluation-harness 0.4.x scores them.

tasks.py reads task files, encode.py turns requests into lm-eval's token pairs, score.py runs them through the model
(a context once, its continuations from it), metrics.py aggregates, run.py is `evaluate_tasks` and `jaxgpt eval`,
convert.py turns published data sets into task files.
"""
