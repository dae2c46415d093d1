"""jaxgpt's downstream evaluation against lm-evaluation-harness 0.4.13 on the same model, request by request.

    python tools/lmeval_compare.py --workdir=DIR [--step=N] --task=NAME:KIND:PATH [--task=...] [--batch_size=8]
        [--lmeval_venv=DIR] [--softmax_dtype=float64|float32] [--keep=DIR] [--save_lmeval=F.json]

The checkpoint is exported with jaxgpt's HF export (float32) and scored on this CPU in float32 twice: by jaxgpt
(`encode.task_pairs` + `score.score_pairs` for each request, `evaluate_tasks` for the metrics) and by lm-eval's HF
backend (`lm_eval run --model hf`, offline, in the venv tools/lmeval_venv.sh makes), over one lm-eval task YAML per
task that reads the same JSONL and forms the same request strings. Compared (TOLERANCES): the strings, each request's
log-likelihood (multiple choice: each choice; cloze: the target; perplexity: the text's total over its windows), whether
the continuation is greedy, the metrics and their standard errors. Prints the largest difference of each quantity;
exits 1 on a mismatch.

lm-eval runs the float32 model with `softmax_dtype=float64` (its own model argument): its log-softmax, and so its sum
over a request's tokens, in float64. With the default (float32) it adds up to 64 log-probabilities of about -11 in
float32, whose spacing at a window's total of ~700 is 6e-5: its rolling totals then carry up to ~1.3e-4 of its own
rounding (a float64 sum of the same float32 log-probabilities agrees with jaxgpt's to 1.3e-5; tests/data/evals/
README.md), more than the 1e-4 the comparison allows. lm-eval 0.4.13's command line has no --bootstrap_iters (it
always draws 100,000 resamples for the perplexity's standard error), so jaxgpt draws as many; the table checks the
count lm-eval recorded.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # `python tools/lmeval_compare.py` imports this checkout's jaxgpt

from jaxgpt.evals.encode import Encoder, request_strings, task_pairs  # noqa: E402
from jaxgpt.evals.run import evaluate_tasks  # noqa: E402
from jaxgpt.evals.score import score_pairs  # noqa: E402
from jaxgpt.evals.tasks import Task, load_task, parse_specs  # noqa: E402

LMEVAL_BOOTSTRAP_ITERS = 100_000  # what lm-eval 0.4.13's command line always passes to its evaluator
PREFIX = "jaxgpt_"  # before each task's name in lm-eval, whose own tasks (hellaswag, ...) must not answer instead
METRICS = {  # each kind's metrics, in both frameworks
    "multiple_choice": ("acc", "acc_norm"),
    "cloze": ("perplexity", "acc"),
    "perplexity": ("word_perplexity", "byte_perplexity", "bits_per_byte"),
}
# quantity -> (how differences are measured, the largest one allowed)
TOLERANCES = {
    "strings": ("unequal", 0),  # the request's (context, continuation) or (text,) strings
    "loglikelihood": ("abs", 1e-4),  # each request's, float64 sums of float32 log-probabilities
    "is_greedy": ("unequal", 0),  # whether each continuation is the argmax at every token
    "acc": ("abs", 0.0),
    "acc_norm": ("abs", 0.0),
    "perplexity": ("rel", 1e-4),
    "word_perplexity": ("rel", 1e-4),
    "byte_perplexity": ("rel", 1e-4),
    "bits_per_byte": ("rel", 1e-4),
    "acc_stderr": ("rel", 1e-9),  # closed form over the same 0/1 values: only the summation order differs
    "acc_norm_stderr": ("rel", 1e-9),
    "perplexity_stderr": ("rel", 1e-4),  # bootstrap: the same resamples (random.Random(i)) of per-request values
    "bootstrap_iters": ("abs", 0),
}


# The lm-eval side
# ------------------------------------------------------------------------------------------------------------------


def default_venv() -> pathlib.Path:
    """REPO/.bench_cache/lmeval-venv, else the one in the main checkout of this git worktree (where it was made)."""
    here = REPO / ".bench_cache" / "lmeval-venv"
    if here.exists():
        return here
    try:
        common = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--path-format=absolute", "--git-common-dir"],
            capture_output=True,
            text=True,
        )
    except OSError:  # no git: a plain copy of the repository has no other checkout either
        return here
    return (pathlib.Path(common.stdout.strip()).parent if common.returncode == 0 else REPO) / ".bench_cache" / here.name


def task_yaml(task: Task, data_file: str) -> str:
    """An lm-eval task config over the JSONL whose requests carry jaxgpt's strings: the fields by name (no template
    renders them), the multiple-choice delimiter " ", the cloze target verbatim (no delimiter), the perplexity text
    as the rolling target. Written as YAML lines of JSON values, which YAML reads as they are."""
    kind = {
        "multiple_choice": {
            "output_type": "multiple_choice",
            "doc_to_text": "context",
            "doc_to_choice": "choices",
            "doc_to_target": "label",
            "target_delimiter": " ",
        },
        "cloze": {"output_type": "loglikelihood", "doc_to_text": "context", "doc_to_target": "target"},
        "perplexity": {"output_type": "loglikelihood_rolling", "doc_to_text": "", "doc_to_target": "text"},
    }[task.kind]
    config = {
        "task": PREFIX + task.name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": os.path.abspath(data_file)}},
        "test_split": "test",
        **kind,
        "metric_list": [{"metric": m} for m in METRICS[task.kind]],
    }
    return "".join(f"{key}: {json.dumps(value, ensure_ascii=False)}\n" for key, value in config.items())


def data_file(task: Task, folder: str) -> str:
    """The task's own file, or (with @N) its first N requests written out for lm-eval, which reads whole files."""
    if task.spec.limit is None:
        return task.spec.path
    path = os.path.join(folder, f"{task.name}.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(doc, ensure_ascii=False) + "\n" for doc in task.docs)
    return path


def run_lmeval(
    hf_folder: str, tasks: list[Task], out: str, *, venv: pathlib.Path, batch_size: int = 8, softmax_dtype="float64"
) -> dict:
    """lm-eval's results on the HF folder: {task: {"strings", "loglikelihood", "is_greedy", metrics..., stderrs...,
    "bootstrap_iters"}}, from its per-sample logs and its aggregated results."""
    include = os.path.join(out, "tasks")
    os.makedirs(include, exist_ok=True)
    for task in tasks:
        with open(os.path.join(include, f"{task.name}.yaml"), "w", encoding="utf-8") as f:
            f.write(task_yaml(task, data_file(task, include)))
    cmd = [str(venv / "bin" / "lm_eval"), "run", "--model", "hf"]
    model_args = f"pretrained={hf_folder},dtype=float32,softmax_dtype={softmax_dtype}"
    cmd += ["--model_args", model_args, "--device", "cpu", "--batch_size", str(batch_size)]
    cmd += ["--include_path", include, "--tasks", ",".join(PREFIX + t.name for t in tasks)]
    cmd += ["--log_samples", "--output_path", os.path.join(out, "results")]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # lm-eval's venv imports its own packages only
    env |= {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": os.path.join(out, "datasets")}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"lm_eval exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    (results_file,) = glob.glob(os.path.join(out, "results", "*", "results_*.json"))
    with open(results_file, encoding="utf-8") as f:
        results = json.load(f)
    stamp = os.path.basename(results_file).removeprefix("results_").removesuffix(".json")  # the run's, in every name
    folder = os.path.dirname(results_file)
    return {
        t.name: _lmeval_task(t, os.path.join(folder, f"samples_{PREFIX}{t.name}_{stamp}.jsonl"), results) for t in tasks
    }


def _lmeval_task(task: Task, samples_file: str, results: dict) -> dict:
    with open(samples_file, encoding="utf-8") as f:
        samples = sorted((json.loads(line) for line in f), key=lambda s: s["doc_id"])
    strings, lls, greedy = [], [], []
    for s in samples:
        strings += [tuple(args.values()) for args in s["arguments"].values()]
        for (resp,) in s["resps"]:  # one response per request: [ll, is_greedy], or a rolling text's ll alone
            ll, is_greedy = resp if isinstance(resp, list) else (resp, None)
            lls.append(float(ll))
            greedy += [] if is_greedy is None else [is_greedy == "True"]
    out = {"strings": strings, "loglikelihood": lls, "is_greedy": greedy or None}
    aggregated = results["results"][PREFIX + task.name]
    for metric in METRICS[task.kind]:
        out[metric] = aggregated[f"{metric},none"]
        stderr = aggregated[f"{metric}_stderr,none"]
        out[f"{metric}_stderr"] = None if stderr == "N/A" else stderr
    out["bootstrap_iters"] = results["config"]["bootstrap_iters"]
    return out


# The jaxgpt side
# ------------------------------------------------------------------------------------------------------------------


def run_jaxgpt(model, tokenizer, tasks: list[Task], *, batch_size: int = 8, bootstrap_iters: int) -> dict:
    """jaxgpt's results in run_lmeval's form: per request from score_pairs, the metrics from evaluate_tasks."""
    encoder = Encoder(tokenizer, tokenizer.token_id("<|endoftext|>"), model.cfg.seq_len)
    evaluated = evaluate_tasks(model, tokenizer, tasks, batch_size=batch_size, bootstrap_iters=bootstrap_iters)
    out = {}
    for task in tasks:
        pairs = task_pairs(task, encoder)
        ll, greedy = score_pairs(model, pairs, batch_size)
        strings = request_strings(task)
        if task.kind == "perplexity":  # a text's windows -> its total
            ll = np.bincount([p.doc for p in pairs], weights=ll, minlength=len(task.docs))
        r = evaluated[task.name]
        out[task.name] = {
            "strings": [s for _, s in strings],
            "loglikelihood": [float(x) for x in ll],
            "is_greedy": None if task.kind == "perplexity" else [bool(g) for g in greedy],
            **r["metrics"],
            **{f"{m}_stderr": e for m, e in r["stderr"].items()},
            "bootstrap_iters": bootstrap_iters,
        }
    return out


def float32_model(params: dict[str, np.ndarray], m):
    """A float32 GPT of options `m` holding the flat params, on one device."""
    import jax.numpy as jnp
    from flax import nnx

    from jaxgpt.interop.params import with_params
    from jaxgpt.model import GPT

    model = GPT(m, rngs=nnx.Rngs(0), dtype=jnp.float32)
    nnx.update(model, with_params(nnx.state(model, nnx.Param), params))
    return model


# The comparison
# ------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the table: a quantity of a task in both frameworks."""

    task: str
    quantity: str  # a key of TOLERANCES
    count: int  # values compared
    worst: float  # the largest difference (unequal: how many differ)
    ok: bool  # within TOLERANCES[quantity]


def compare(ours: dict, theirs: dict) -> list[Row]:
    """A Row per task and quantity that both sides hold (the golden file holds no strings)."""
    rows = []
    for name, mine in ours.items():
        other = theirs[name]
        for quantity, (how, tolerance) in TOLERANCES.items():
            if quantity not in mine or quantity not in other:
                continue
            a, b = mine[quantity], other[quantity]
            if a is None or b is None:  # a value neither side defines (no stderr, no greedy flag) agrees
                rows.append(Row(name, quantity, 0, 0.0 if a is b else math.inf, a is b))
                continue
            a, b = (list(x) if isinstance(x, list) else [x] for x in (a, b))
            if len(a) != len(b):
                rows.append(Row(name, quantity, max(len(a), len(b)), math.inf, False))
            elif how == "unequal":
                worst = sum(x != y for x, y in zip(a, b))
                rows.append(Row(name, quantity, len(a), worst, worst <= tolerance))
            else:
                x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
                diff = np.abs(x - y) / (np.maximum(np.abs(y), 1e-300) if how == "rel" else 1.0)
                worst = float(diff.max())
                rows.append(Row(name, quantity, len(a), worst, worst <= tolerance))
    return rows


def table(rows: list[Row]) -> str:
    lines = [f"{'task':<16} {'quantity':<18} {'n':>5} {'max diff':>12} {'allowed':>14}  ok"]
    for r in rows:
        how, tolerance = TOLERANCES[r.quantity]
        if how == "unequal":
            worst, allowed = f"{r.worst:g} differ", "0 unequal"
        else:
            worst, allowed = f"{r.worst:.3g}", f"{tolerance:g} {how}"
        worst = "both none" if r.count == 0 and r.ok else worst
        verdict = "ok" if r.ok else "FAIL"
        lines.append(f"{r.task:<16} {r.quantity:<18} {r.count:>5} {worst:>12} {allowed:>14}  {verdict}")
    return "\n".join(lines)


def compare_params(
    params, m, tokenizer_file: str, tasks: list[Task], work: str, *, venv, batch_size: int = 8, softmax_dtype="float64"
):
    """(jaxgpt's results, lm-eval's results, rows) for flat params of options `m`, exported to work/hf."""
    from jaxgpt.data.tokenize import load_tokenizer
    from jaxgpt.interop import hf

    folder = os.path.join(work, "hf")
    hf.write_folder(folder, params, m, tokenizer_file=tokenizer_file)
    lmeval = os.path.join(work, "lmeval")
    theirs = run_lmeval(folder, tasks, lmeval, venv=venv, batch_size=batch_size, softmax_dtype=softmax_dtype)
    model = float32_model(params, m)
    ours = run_jaxgpt(
        model, load_tokenizer(tokenizer_file), tasks, batch_size=batch_size, bootstrap_iters=LMEVAL_BOOTSTRAP_ITERS
    )
    return ours, theirs, compare(ours, theirs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="tools/lmeval_compare.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="a jaxgpt run directory: its newest checkpoint, or --step")
    p.add_argument("--step", type=int, default=None)
    p.add_argument("--task", action="append", required=True, help="NAME:KIND:PATH[@N] (repeatable)")
    p.add_argument("--batch_size", type=int, default=8, help="lm-eval's --batch_size and jaxgpt's rows per batch")
    p.add_argument("--lmeval_venv", default=None, help="default: .bench_cache/lmeval-venv (tools/lmeval_venv.sh)")
    p.add_argument("--softmax_dtype", default="float64", choices=("float64", "float32"), help="lm-eval's (see above)")
    p.add_argument("--keep", default=None, help="a folder for the export, YAMLs and lm-eval's logs (default: temp)")
    p.add_argument("--save_lmeval", default=None, help="write lm-eval's per-request values and metrics as JSON")
    args = p.parse_args(argv)

    from flax import nnx

    from jaxgpt import checkpoint, rundir
    from jaxgpt.interop.params import flat_params
    from jaxgpt.model import ModelConfig

    venv = pathlib.Path(args.lmeval_venv) if args.lmeval_venv else default_venv()
    if not (venv / "bin" / "lm_eval").exists():
        sys.exit(f"--lmeval_venv={venv}: no bin/lm_eval; make it with tools/lmeval_venv.sh")
    tasks = [load_task(s) for s in parse_specs(args.task)]
    model, cfg = checkpoint.load(args.workdir, args.step)
    params, m = flat_params(nnx.state(model, nnx.Param)), ModelConfig.from_config(cfg)
    tokenizer_file = rundir.find_tokenizer(args.workdir, None, cfg)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or tmp
        ours, theirs, rows = compare_params(
            params,
            m,
            tokenizer_file,
            tasks,
            work,
            venv=venv,
            batch_size=args.batch_size,
            softmax_dtype=args.softmax_dtype,
        )
    print(table(rows))
    if args.save_lmeval:
        save_lmeval(args.save_lmeval, theirs)
    return 0 if all(r.ok for r in rows) else 1


def without_strings(results: dict) -> dict:
    """Results without the request strings, which the task files hold: what --save_lmeval and the golden file keep."""
    return {name: {k: v for k, v in r.items() if k != "strings"} for name, r in results.items()}


def save_lmeval(path: str, results: dict) -> None:
    from jaxgpt.io import atomic_output

    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(without_strings(results), f, indent=1)
        f.write("\n")


def lmeval_versions(venv: pathlib.Path) -> dict[str, str]:
    """The versions of lm-eval, torch and transformers in the venv."""
    code = "import json; from importlib.metadata import version as v; print(json.dumps({p: v(p) for p in PACKAGES}))"
    packages = ["lm_eval", "torch", "transformers", "datasets"]
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code.replace("PACKAGES", repr(packages))],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout)


if __name__ == "__main__":
    from jaxgpt.errors import JaxgptError

    try:
        sys.exit(main())
    except JaxgptError as e:  # bad input (a task file, a workdir): one line; anything else keeps its traceback
        sys.exit(f"error: {e}")
