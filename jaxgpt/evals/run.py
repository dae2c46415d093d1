"""`evaluate_tasks` (for a notebook and the training loop) and the `jaxgpt eval` command.

    jaxgpt eval --workdir=DIR [--step=N] --task=NAME:KIND:PATH[@N] [--task=...] [--batch_size=8] [--mesh=D,F,T]
    jaxgpt eval --hf=FOLDER --task=... [--out=F.json]
    jaxgpt eval convert hellaswag|arc|piqa|lambada IN OUT      (convert.py)

The command prints a table and writes DIR/evals/step_<N>.json: per task, its metrics, their standard errors, the
request count, the task file's sha256 and the seconds it took.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from jaxgpt import checkpoint, rundir, sharding
from jaxgpt.data.tokenize import EOD_TOKEN, load_tokenizer
from jaxgpt.errors import EvalError, check_int
from jaxgpt.evals.encode import Encoder, task_pairs
from jaxgpt.evals.metrics import task_metrics
from jaxgpt.evals.score import score_pairs
from jaxgpt.evals.tasks import Task, TaskSpec, check_unchanged, load_task, parse_specs
from jaxgpt.io import atomic_output

BOOTSTRAP_ITERS = 100_000  # lm-eval's default resamples for the perplexity's standard error


class TaskSet:
    """Tasks read, checked and turned into token pairs once (a run's train.eval_tasks: before step 1, so a bad request
    fails then), scored whenever asked. The files must not change meanwhile: each call checks their hashes."""

    def __init__(self, tasks: list, tokenizer, window: int, prefix_token: str = EOD_TOKEN):
        """tasks: Task objects, TaskSpecs or "NAME:KIND:PATH[@N]" strings; window: the model's seq_len."""
        prefix = tokenizer.token_id(prefix_token)
        if prefix is None:
            raise EvalError(f"{tokenizer.path}: no token {prefix_token!r}, which an empty context reads (prefix_token)")
        encoder = Encoder(tokenizer, prefix, window)
        self.tasks = _as_tasks(tasks)
        self.pairs = [task_pairs(task, encoder) for task in self.tasks]

    def tokens(self) -> int:
        """Tokens one evaluation reads: each distinct context once, then every continuation."""
        contexts = {p.context for pairs in self.pairs for p in pairs}
        return sum(map(len, contexts)) + sum(len(p.continuation) - 1 for pairs in self.pairs for p in pairs)

    def __call__(self, model, *, batch_size: int = 8, bootstrap_iters: int = BOOTSTRAP_ITERS, on_batch=None):
        """{task name: {"metrics", "stderr", "requests", "kind", "path", "sha256", "seconds"}} for `model`."""
        check_int("batch_size", batch_size)
        out = {}
        for task, pairs in zip(self.tasks, self.pairs):
            check_unchanged(task)
            t0 = time.perf_counter()
            ll, greedy = score_pairs(model, pairs, batch_size, on_batch or (lambda rows: None))
            result = task_metrics(task, pairs, ll, greedy, bootstrap_iters)
            out[task.name] = {**result, "kind": task.kind, "path": task.spec.path, "sha256": task.sha256}
            out[task.name]["seconds"] = round(time.perf_counter() - t0, 3)
        return out


def evaluate_tasks(
    model,
    tokenizer,
    tasks: list,
    *,
    batch_size: int = 8,
    prefix_token: str = EOD_TOKEN,
    bootstrap_iters: int = BOOTSTRAP_ITERS,
) -> dict[str, dict]:
    """{task name: {"metrics", "stderr", "requests", "kind", "path", "sha256", "seconds"}} of each task for `model` (a
    GPT, from `checkpoint.load`), on its mesh. tasks: Task objects, TaskSpecs or "NAME:KIND:PATH[@N]" strings.
    tokenizer: a `jaxgpt.data.tokenize.Tokenizer`. prefix_token: what an empty context reads (lm-eval: the model's
    BOS, else its EOS; jaxgpt's exports make <|endoftext|> both)."""
    tasks = TaskSet(tasks, tokenizer, model.cfg.seq_len, prefix_token)
    return tasks(model, batch_size=batch_size, bootstrap_iters=bootstrap_iters)


def _as_tasks(tasks: list) -> list[Task]:
    specs = iter(parse_specs([t for t in tasks if isinstance(t, str)]))
    out = [t if isinstance(t, Task) else load_task(t if isinstance(t, TaskSpec) else next(specs)) for t in tasks]
    names = [t.name for t in out]
    if len(set(names)) < len(names):
        raise EvalError(f"task names {names} repeat; names key the metrics")
    return out


def flat_metrics(results: dict[str, dict]) -> dict[str, float]:
    """The results as metrics.jsonl and W&B keys: eval/<task>/<metric>, and eval/<task>/<metric>_stderr."""
    out = {}
    for name, r in results.items():
        for metric, value in r["metrics"].items():
            out[f"eval/{name}/{metric}"] = value
            if r["stderr"][metric] is not None:
                out[f"eval/{name}/{metric}_stderr"] = r["stderr"][metric]
    return out


def table(results: dict[str, dict]) -> str:
    """The results as lm-eval prints them: task, metric, value, stderr, one line each."""
    lines = [f"{'task':<20} {'metric':<16} {'value':>12} {'stderr':>10} {'n':>6}"]
    for name, r in results.items():
        for metric, value in r["metrics"].items():
            err = r["stderr"][metric]
            err = "N/A" if err is None else f"{err:.4f}"
            lines.append(f"{name:<20} {metric:<16} {value:>12.4f} {err:>10} {r['requests']:>6}")
    return "\n".join(lines)


def run_command(args: argparse.Namespace) -> str | None:
    """`jaxgpt eval`: loads the model, scores the tasks, prints the table and writes the JSON (returns its path)."""
    specs = parse_specs(args.task)
    tasks = [load_task(s) for s in specs]  # a bad task file fails before the model is read
    mesh = sharding.mesh_flag(args.mesh)
    if args.hf:
        from jaxgpt.interop.hf_import import load_hf  # safetensors, only for an HF folder

        model = load_hf(args.hf, mesh)
        step, tokenizer_file = None, args.tokenizer_file or rundir.tokenizer_path(args.hf)
    else:
        checkpoint.quiet_orbax_errors()
        model, config, step = checkpoint.load_step(args.workdir, args.step, mesh)
        tokenizer_file = rundir.find_tokenizer(args.workdir, args.tokenizer_file, config)
    tokenizer = load_tokenizer(tokenizer_file)
    results = evaluate_tasks(model, tokenizer, tasks, batch_size=args.batch_size, bootstrap_iters=args.bootstrap_iters)
    print(table(results))
    out = args.out or (None if args.hf else os.path.join(args.workdir, "evals", f"step_{step}.json"))
    if out:
        source = {"hf": args.hf} if args.hf else {"workdir": args.workdir, "step": step}
        with atomic_output(out) as tmp, open(tmp, "w", encoding="utf-8") as f:
            json.dump({**source, "tasks": results}, f, indent=1, ensure_ascii=False)
    return out
