"""Multiple-choice scoring speed on CPU: jaxgpt's `evaluate_tasks` against lm-eval 0.4.13's HF backend, same model.

    flock /tmp/jaxgpt-bench.lock .venv/bin/python bench/eval.py [--config=configs/gpt60m.py] [--requests=500]
        [--batch_size=8] [--lmeval_batch_sizes=8,32] [--torch_threads=2] [--lmeval_venv=DIR]

The model: a random init of --config (gpt60m: StableLmForCausalLM once exported), float32 on one CPU device, written
with jaxgpt/interop/hf.py to a temporary folder that lm-eval loads (dtype=float32, its default float32 softmax). The
task: --requests HellaSwag-shaped requests, drawn with seed 0 from the words of data/raw/ (Italian and Spanish prose):
a context of 60-100 tokens and 4 choices of 15-35 tokens each, scored as context + " " + choice.

Timed, one run each, back to back in this process and one subprocess (the lm-eval venv):
- jaxgpt: `evaluate_tasks(model, tokenizer, [task], batch_size)`: tokenizing, scoring, acc/acc_norm. Before it,
  untimed, `score_pairs` on the same requests compiles every shape the timed run meets (the same rows in the same
  batches); the timed run must compile nothing (checked).
- lm-eval: `HFLM(...).loglikelihood(instances)` on the 4 x --requests (context, " " + choice) requests, in a process
  that has loaded the model and scored a few warm-up requests: tokenizing and scoring, no model loading, no task
  building, no metrics (which take lm-eval milliseconds). Each of --lmeval_batch_sizes in turn; the fastest counts.
All 4 x --requests log-likelihoods of both must agree (5e-4: lm-eval sums in float32), so both did the same work.
Prints a line per engine and, last, `jaxgpt_requests_per_s=X lmeval_requests_per_s=Y` (requests: the task's
multiple-choice requests, 4 continuations each); without the lm-eval venv, a message and the line without lm-eval.
"""

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))

from lmeval_compare import default_venv  # noqa: E402

from jaxgpt import sharding  # noqa: E402
from jaxgpt.data.tokenize import load_tokenizer  # noqa: E402
from jaxgpt.evals import score  # noqa: E402
from jaxgpt.evals.encode import Encoder, request_strings, task_pairs  # noqa: E402
from jaxgpt.evals.run import evaluate_tasks  # noqa: E402
from jaxgpt.evals.tasks import TaskSpec, load_task  # noqa: E402
from jaxgpt.interop import hf  # noqa: E402
from jaxgpt.interop.params import flat_params  # noqa: E402
from jaxgpt.train.state import StateLayout, StepConfig  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", str(REPO / "configs" / "gpt60m.py"), "config file")
_REQUESTS = flags.DEFINE_integer("requests", 500, "multiple-choice requests (4 choices each)")
_BATCH = flags.DEFINE_integer("batch_size", 8, "jaxgpt's rows per forward pass (evaluate_tasks' batch_size)")
_LMEVAL_BATCHES = flags.DEFINE_list("lmeval_batch_sizes", ["8", "32"], "lm-eval's --batch_size values to time")
_THREADS = flags.DEFINE_integer("torch_threads", 2, "PyTorch threads (the dev box has 2 cores)")
_VENV = flags.DEFINE_string("lmeval_venv", "", "default: .bench_cache/lmeval-venv (tools/lmeval_venv.sh)")
_TOKENIZER = flags.DEFINE_string("tokenizer_file", str(REPO / "data" / "tokenizer" / "tokenizer.json"), "tokenizer")
CHOICES = 4
CONTEXT_TOKENS, CHOICE_TOKENS = (60, 100), (15, 35)  # HellaSwag's validation set, GPT-2 tokens, roughly
MAX_WORD_TOKENS = 4


def word_pool(tokenizer) -> tuple[list[str], np.ndarray]:
    """The words of data/raw in order, without those of more than MAX_WORD_TOKENS tokens (URLs, run-together strings),
    and each one's GPT-2 tokens after a space (a space-joined run of words costs their sum: the tokenizer splits text
    at spaces before merging)."""
    words = []
    for path in sorted((REPO / "data" / "raw").glob("*.jsonl")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                words += json.loads(line)["raw_content"].split()
    tokens = np.asarray([len(ids) for ids in tokenizer.encode_batch([" " + w for w in words])])
    keep = tokens <= MAX_WORD_TOKENS
    return [w for w, k in zip(words, keep) if k], tokens[keep]


def run_of_words(words: list[str], tokens: np.ndarray, rng, budget: int) -> str:
    """Consecutive words from a random start, as many as reach `budget` tokens."""
    start = int(rng.integers(0, len(words) - 400))
    end = start + int(np.searchsorted(np.cumsum(tokens[start:]), budget)) + 1
    return " ".join(words[start:end])


def requests(tokenizer, n: int) -> list[dict]:
    """n multiple-choice requests with HellaSwag's shape (seed 0)."""
    words, tokens = word_pool(tokenizer)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        context = run_of_words(words, tokens, rng, int(rng.integers(*CONTEXT_TOKENS, endpoint=True)))
        choices = [
            run_of_words(words, tokens, rng, int(rng.integers(*CHOICE_TOKENS, endpoint=True))) for _ in range(CHOICES)
        ]
        out.append({"context": context, "choices": choices, "label": int(rng.integers(0, CHOICES))})
    return out


def write_task(path: pathlib.Path, docs: list[dict]):
    path.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    return load_task(TaskSpec(path.stem, "multiple_choice", str(path)))


def time_jaxgpt(model, tokenizer, task) -> tuple[float, np.ndarray]:
    """(seconds of evaluate_tasks on the task, each pair's log-likelihood from the untimed warm-up)."""
    encoder = Encoder(tokenizer, tokenizer.token_id("<|endoftext|>"), model.cfg.seq_len)
    ll, _ = score.score_pairs(model, task_pairs(task, encoder), _BATCH.value)  # compiles what evaluate_tasks meets
    compiled = score._score_rows._cache_size()
    start = time.perf_counter()
    result = evaluate_tasks(model, tokenizer, [task], batch_size=_BATCH.value)
    seconds = time.perf_counter() - start
    assert score._score_rows._cache_size() == compiled, "the timed run compiled"
    assert result[task.name]["requests"] == len(task.docs)
    return seconds, ll


LMEVAL_SCRIPT = """
import json, sys, time
import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

folder, task_file, threads, *batch_sizes = sys.argv[1:]
torch.set_num_threads(int(threads))

def instances(path):
    with open(path) as f:
        pairs = json.load(f)
    return [Instance("loglikelihood", {}, tuple(p), i) for i, p in enumerate(pairs)]

lm = HFLM(pretrained=folder, dtype="float32", device="cpu", batch_size=int(batch_sizes[0]))
lm.loglikelihood(instances(task_file)[:16], disable_tqdm=True)  # torch's first-call costs
out = {"seconds": {}}
for b in batch_sizes:
    lm.batch_size_per_gpu = int(b)
    reqs = instances(task_file)
    start = time.perf_counter()
    lls = lm.loglikelihood(reqs, disable_tqdm=True)
    out["seconds"][b] = time.perf_counter() - start
    out["lls"] = [ll for ll, _ in lls]
print("RESULT " + json.dumps(out))
"""


def time_lmeval(venv: pathlib.Path, folder: str, task, tmp: str) -> tuple[dict[str, float], np.ndarray]:
    """({batch size: seconds of loglikelihood on the task's requests}, their log-likelihoods)."""
    requests_file, script = f"{tmp}/requests.json", f"{tmp}/lmeval_time.py"
    with open(requests_file, "w", encoding="utf-8") as f:
        json.dump([list(s) for _, s in request_strings(task)], f, ensure_ascii=False)
    pathlib.Path(script).write_text(LMEVAL_SCRIPT)
    cmd = [str(venv / "bin" / "python"), script, folder, requests_file, str(_THREADS.value), *_LMEVAL_BATCHES.value]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"lm-eval's timing script exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    out = json.loads(line.removeprefix("RESULT "))
    return out["seconds"], np.asarray(out["lls"])


def jaxgpt_model(cfg):
    """A float32 random init of the config on one CPU device."""
    cfg.train.compute_dtype = "float32"
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    layout = StateLayout.build(StepConfig.from_config(cfg, num_steps=1), mesh)
    return layout.model(layout.init(0).params)


def main(argv):
    del argv
    tokenizer = load_tokenizer(_TOKENIZER.value)
    model = jaxgpt_model(_CONFIG.value)
    encoder = Encoder(tokenizer, tokenizer.token_id("<|endoftext|>"), model.cfg.seq_len)
    venv = pathlib.Path(_VENV.value) if _VENV.value else default_venv()
    with tempfile.TemporaryDirectory() as tmp:
        docs = requests(tokenizer, _REQUESTS.value)
        task = write_task(pathlib.Path(tmp) / "mc.jsonl", docs)
        pairs = task_pairs(task, encoder)
        ctx = [len(p.context) for p in pairs[::CHOICES]]
        cont = [len(p.continuation) for p in pairs]
        print(
            f"{len(docs)} requests x {CHOICES} choices; context tokens {min(ctx)}-{max(ctx)} (mean {np.mean(ctx):.0f}),"
            f" choice tokens {min(cont)}-{max(cont)} (mean {np.mean(cont):.1f}); {jax.devices()[0].device_kind},"
            f" {model.cfg.n_layer} layers x {model.cfg.n_embd}, seq_len {model.cfg.seq_len}",
            flush=True,
        )
        seconds, jax_ll = time_jaxgpt(model, tokenizer, task)
        rates = {"jaxgpt": len(docs) / seconds}
        print(f"jaxgpt evaluate_tasks, batch_size {_BATCH.value}: {seconds:.1f} s, {rates['jaxgpt']:.2f} requests/s")
        if not (venv / "bin" / "python").exists():
            print(f"no lm-eval venv at {venv} (tools/lmeval_venv.sh makes one): lm-eval not timed")
            print(f"jaxgpt_requests_per_s={rates['jaxgpt']:.2f}")
            return
        folder = f"{tmp}/hf"
        hf.write_folder(folder, flat_params(nnx.state(model, nnx.Param)), model.cfg, tokenizer_file=_TOKENIZER.value)
        timed, lm_ll = time_lmeval(venv, folder, task, tmp)
    worst = float(np.max(np.abs(jax_ll - lm_ll)))
    assert worst < 5e-4, f"jaxgpt and lm-eval disagree on a log-likelihood by {worst:.2e}"
    for b, s in timed.items():
        print(f"lm-eval HFLM.loglikelihood, batch_size {b}: {s:.1f} s, {len(docs) / s:.2f} requests/s", flush=True)
    rates["lmeval"] = len(docs) / min(timed.values())
    ratio = rates["jaxgpt"] / rates["lmeval"]
    print(f"all {len(lm_ll)} log-likelihoods agree to {worst:.1e}; jaxgpt / lm-eval: {ratio:.2f}x")
    print(f"jaxgpt_requests_per_s={rates['jaxgpt']:.2f} lmeval_requests_per_s={rates['lmeval']:.2f}")


if __name__ == "__main__":
    app.run(main)
