"""jaxgpt's downstream evaluation equals lm-evaluation-harness 0.4.13's, request by request, on GPT-2-vocab models.

Two models of data.seq_len 64 (so long contexts lose tokens from the left and long texts take several rolling windows)
with random params from fixed seeds, one per family of the HF export's classes: StableLM (jaxgpt's defaults: LayerNorm,
rotary, SwiGLU, GQA, tied) and GPT-2 (learned positions, GELU, biases, untied). The task files, and how lm-eval's
numbers were made: tests/data/evals/README.md.

- Always: jaxgpt's per-request log-likelihoods, greedy flags, metrics and standard errors against lm-eval's in
  tests/data/evals/lmeval_golden.json, at tools/lmeval_compare.py's tolerances.
- With the lm-eval venv (tools/lmeval_venv.sh): tools/lmeval_compare.py live on the same models, the request strings
  included, and the golden file still what lm-eval gives. JAXGPT_WRITE_LMEVAL_GOLDEN=1 rewrites it from that run.
"""

import dataclasses
import importlib.util
import json
import os
import pathlib
import sys

import pytest
from conftest import REPO, TEST_DATA, TOKENIZER, random_params

from jaxgpt.data.tokenize import load_tokenizer
from jaxgpt.evals.encode import Encoder, request_strings, task_pairs
from jaxgpt.evals.tasks import load_task, parse_specs
from jaxgpt.interop import hf
from jaxgpt.io import atomic_output
from jaxgpt.model import ModelConfig


def _tool():
    spec = importlib.util.spec_from_file_location("lmeval_compare", REPO / "tools" / "lmeval_compare.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up while the module runs
    spec.loader.exec_module(module)
    return module


lmeval_compare = _tool()
EVALS = TEST_DATA / "evals"
GOLDEN = EVALS / "lmeval_golden.json"
BASE = ModelConfig(n_layer=2, n_embd=64, n_head_q=4, n_head_kv=2, ffn_hidden=256, seq_len=64)  # configs/tiny.py's
MODELS = {  # name -> (options over BASE, seed of random_params, the HF export's class)
    "stablelm": ({}, 0, "stablelm"),
    "gpt2": (dict(mlp="gelu", pos_emb="learned", use_bias=True, tie_embeddings=False, n_head_kv=4), 1, "gpt2"),
}
SPECS = [
    f"mc:multiple_choice:{EVALS}/mc.jsonl",
    f"cloze:cloze:{EVALS}/cloze.jsonl",
    f"ppl:perplexity:{EVALS}/ppl.jsonl",
]
LMEVAL_VENV = lmeval_compare.default_venv()
needs_lmeval = pytest.mark.skipif(
    not (LMEVAL_VENV / "bin" / "lm_eval").exists(), reason=f"lm-eval venv absent ({LMEVAL_VENV})"
)


@pytest.fixture(scope="module")
def tasks():
    return [load_task(s) for s in parse_specs(SPECS)]


def model_params(name: str):
    """(ModelConfig, flat params) of MODELS[name]."""
    options, seed, _ = MODELS[name]
    cfg = dataclasses.replace(BASE, **options)
    return cfg, random_params(cfg, seed)


def model_record(name: str) -> dict:
    """What the golden file records of a model, so that one changed here without a new golden fails by name."""
    options, seed, _ = MODELS[name]
    return {"options": dataclasses.asdict(dataclasses.replace(BASE, **options)), "seed": seed}


def test_models_export_to_their_classes():
    for name, (options, _, kind) in MODELS.items():
        assert hf.model_type(dataclasses.replace(BASE, **options)) == kind, name


def test_task_files_hold_the_cases_they_are_for(tasks):
    """Truncation from the left, several rolling windows, single- and multi-token continuations, a continuation of the
    whole window, empty and space-ended contexts, the prefix token, accents, CJK and emoji: each is present."""
    encoder = Encoder(load_tokenizer(TOKENIZER), prefix_token_id=50256, window=BASE.seq_len)
    mc, cloze, ppl = tasks
    for task in (mc, cloze):
        raw = encoder.pairs([s for _, s in request_strings(task)])
        assert sum(len(c) + len(x) > BASE.seq_len + 1 for c, x in raw) >= 10  # cut from the left
        assert any(len(x) == 1 for _, x in raw) and any(len(x) > 5 for _, x in raw)
        contexts = [d["context"] for d in task.docs]
        assert any(c.endswith(" ") for c in contexts) and any(c.endswith("\n") for c in contexts)
    assert max(len(p.continuation) for p in task_pairs(cloze, encoder)) == BASE.seq_len
    assert any(d["context"] == "" and d["target"].startswith("<|endoftext|>") for d in cloze.docs)
    assert any(d["context"] == "" and not d["target"].startswith("<|endoftext|>") for d in cloze.docs)
    windows = [sum(p.doc == i for p in task_pairs(ppl, encoder)) for i in range(len(ppl.docs))]
    assert max(windows) >= 5 and 2 in windows
    text = json.dumps([t.docs for t in tasks], ensure_ascii=False)
    for sample in ("é", "ü", "東京", "🙂", "🚀", "<|endoftext|>"):
        assert sample in text


@pytest.mark.parametrize("name", sorted(MODELS))
def test_jaxgpt_equals_lmeval_golden(name, tasks):
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert golden["models"][name]["model"] == model_record(name), "MODELS changed: remake the golden (README.md)"
    cfg, params = model_params(name)
    ours = lmeval_compare.run_jaxgpt(
        lmeval_compare.float32_model(params, cfg),
        load_tokenizer(TOKENIZER),
        tasks,
        bootstrap_iters=golden["bootstrap_iters"],
    )
    rows = lmeval_compare.compare(ours, golden["models"][name]["tasks"])
    assert {r.task for r in rows} == {t.name for t in tasks}
    assert all(r.ok for r in rows), "\n" + lmeval_compare.table(rows)


@needs_lmeval
def test_lmeval_live_equals_jaxgpt_and_the_golden(tasks, tmp_path):
    write = bool(os.environ.get("JAXGPT_WRITE_LMEVAL_GOLDEN"))
    golden = None if write else json.loads(GOLDEN.read_text(encoding="utf-8"))
    made = {"models": {}}
    for name in sorted(MODELS):
        cfg, params = model_params(name)
        work = tmp_path / name
        _, theirs, rows = lmeval_compare.compare_params(params, cfg, str(TOKENIZER), tasks, str(work), venv=LMEVAL_VENV)
        assert all(r.ok for r in rows), f"{name}\n" + lmeval_compare.table(rows)
        made["models"][name] = {"model": model_record(name), "tasks": lmeval_compare.without_strings(theirs)}
        if not write:
            still = lmeval_compare.compare(golden["models"][name]["tasks"], theirs)
            assert all(r.ok for r in still), f"{name}: the golden file is not what lm-eval gives\n" + (
                lmeval_compare.table(still)
            )
    if write:
        about = {
            "made_by": "JAXGPT_WRITE_LMEVAL_GOLDEN=1 pytest tests/test_evals_lmeval.py (tests/data/evals/README.md)",
            "lmeval_model_args": "pretrained=FOLDER,dtype=float32,softmax_dtype=float64",
            "lmeval_batch_size": 8,
            "versions": lmeval_compare.lmeval_versions(LMEVAL_VENV),
            "bootstrap_iters": lmeval_compare.LMEVAL_BOOTSTRAP_ITERS,
        }
        with atomic_output(GOLDEN) as tmp:
            pathlib.Path(tmp).write_text(json.dumps({**about, **made}, indent=1) + "\n", encoding="utf-8")
