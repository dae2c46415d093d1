"""Downstream evaluation (jaxgpt/evals): lm-eval's token pairs and rolling windows, metrics on hand-computed cases,
branch scoring == a plain forward per request (document masks included), 8 devices == 1, and every bad input.
tests/test_evals_lmeval.py compares whole tasks with lm-evaluation-harness itself."""

import json
import math
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY, TOKENIZER, model_with, random_params

from jaxgpt import sharding
from jaxgpt.config import load_config_file
from jaxgpt.data.tokenize import load_tokenizer
from jaxgpt.errors import EvalError
from jaxgpt.evals import metrics
from jaxgpt.evals.encode import Encoder, Pair, task_pairs
from jaxgpt.evals.run import evaluate_tasks
from jaxgpt.evals.score import buckets, score_pairs
from jaxgpt.evals.tasks import TaskSpec, check_unchanged, load_task
from jaxgpt.model import ModelConfig
from jaxgpt.train.state import StateLayout, StepConfig

EOD = 50256


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(TOKENIZER)


def small(**kw) -> ModelConfig:
    return ModelConfig(
        **{"n_layer": 2, "n_head_q": 4, "n_head_kv": 2, "n_embd": 32, "ffn_hidden": 64, "seq_len": 128, **kw}
    )


@pytest.fixture(scope="module")
def model():
    cfg = small()
    return model_with(cfg, random_params(cfg, 0))


def write(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows))
    return str(path)


# Token pairs, as lm-eval forms them
# ------------------------------------------------------------------------------------------------------------------


def test_pairs_move_trailing_spaces_and_split_the_whole_tokenization(tok):
    enc = Encoder(tok, EOD, 64)
    [(ctx, cont)] = enc.pairs([("The capital of France is ", "Paris")])
    assert ctx == [int(t) for t in tok.encode_batch(["The capital of France is"])[0]]
    whole = [int(t) for t in tok.encode_batch(["The capital of France is Paris"])[0]]
    assert ctx + cont == whole and tok.decode(cont) == " Paris"


def test_an_empty_context_reads_the_prefix_token_unless_the_continuation_starts_with_it(tok):
    enc = Encoder(tok, EOD, 64)
    (c1, x1), (c2, x2) = enc.pairs([("", " hello world"), ("", "<|endoftext|> hello")])
    assert c1 == [EOD] and tok.decode(x1) == " hello world"
    assert c2 == [EOD] and tok.decode(x2) == " hello"


def test_a_long_pair_is_cut_from_the_left_to_the_window_plus_one(tok):
    enc = Encoder(tok, EOD, 8)
    ctx, cont = enc.cut(list(range(20)), [100, 101, 102])
    assert ctx == tuple(range(14, 20)) and cont == (100, 101, 102)  # 6 + 3 = window + 1
    assert enc.cut([1, 2], [3]) == ((1, 2), (3,))


def test_rolling_windows_predict_every_token_once_with_the_longest_context(tok):
    enc = Encoder(tok, 0, 4)
    ids = list(range(1, 11))
    windows = enc.rolling(ids)
    # lm-eval's get_rolling_token_windows(context_len=1) + make_disjoint_window, worked out by hand for L = 4
    assert windows == [([0], [1, 2, 3, 4]), ([4], [5, 6, 7, 8]), ([6, 7, 8], [9, 10])]
    for n in range(1, 30):
        ws = Encoder(tok, 0, 7).rolling(list(range(1, n + 1)))
        assert [t for _, cont in ws for t in cont] == list(range(1, n + 1))
        assert all(len(c) + len(x) <= 8 and len(c) >= 1 for c, x in ws)


# Metrics on hand-computed cases
# ------------------------------------------------------------------------------------------------------------------


def _task(tmp_path, kind, rows, name="t"):
    return load_task(TaskSpec(name, kind, write(tmp_path / f"{name}.jsonl", rows)))


def test_multiple_choice_acc_and_acc_norm_by_characters(tmp_path):
    rows = [
        {"context": "a", "choices": ["xx", "y"], "label": 0},  # ll -2, -1.5: acc picks 1; per char -1, -1.5: picks 0
        {"context": "b", "choices": ["z", "wwww"], "label": 1},  # ll -1, -3: acc picks 0; per char -1, -0.75: picks 1
        {"context": "c", "choices": ["p", "q", "r"], "label": 2},  # -3, -2, -1: both pick 2
    ]
    task = _task(tmp_path, "multiple_choice", rows)
    pairs = [Pair(d, (1,), (2,)) for d, n in enumerate([2, 2, 3]) for _ in range(n)]
    ll = np.asarray([-2, -1.5, -1, -3, -3, -2, -1.0])
    got = metrics.task_metrics(task, pairs, ll, np.zeros(7, bool), 0)
    assert got["metrics"] == {"acc": 1 / 3, "acc_norm": 1.0}
    assert got["stderr"]["acc"] == pytest.approx(math.sqrt(1 / 3) / math.sqrt(3))  # sample std of (0, 0, 1) / sqrt(3)
    assert got["stderr"]["acc_norm"] == 0.0


def test_cloze_acc_is_greedy_and_perplexity_is_exp_minus_mean(tmp_path):
    task = _task(tmp_path, "cloze", [{"context": "a", "target": " b"}] * 3)
    pairs = [Pair(0, (1,), (2,)), Pair(1, (1,), (2,)), Pair(2, (1,), (2,))]
    got = metrics.task_metrics(task, pairs, np.asarray([-1.0, -2.0, -3.0]), np.asarray([True, False, True]), 0)
    assert got["metrics"]["acc"] == pytest.approx(2 / 3)
    assert got["metrics"]["perplexity"] == pytest.approx(math.exp(2.0))
    assert got["stderr"]["perplexity"] is None  # bootstrap_iters=0, as lm-eval


def test_perplexity_task_weights_by_words_and_bytes(tmp_path):
    rows = [{"text": "one two  three"}, {"text": "é ü"}]  # 3 words, 14 bytes; 2 words, 5 bytes
    task = _task(tmp_path, "perplexity", rows)
    pairs = [Pair(0, (1,), (2,)), Pair(0, (1,), (2,)), Pair(1, (1,), (2,))]  # two windows for the first text
    got = metrics.task_metrics(task, pairs, np.asarray([-4.0, -6.0, -5.0]), np.ones(3, bool), 0)["metrics"]
    assert got["word_perplexity"] == pytest.approx(math.exp(15 / 5))
    assert got["byte_perplexity"] == pytest.approx(math.exp(15 / 19))
    assert got["bits_per_byte"] == pytest.approx(15 / 19 / math.log(2))


def test_the_bootstrap_replays_pythons_random_choices_exactly():
    """lm-eval's bootstrap: chunk i of 1000 resamples from random.Random(i).choices(xs, k=len(xs))."""
    xs = list(np.random.default_rng(0).normal(-3.0, 1.0, 37))
    expected = []
    for i in range(3):
        rnd = random.Random(i)
        expected += [math.exp(-sum(s) / len(s)) for s in (rnd.choices(xs, k=len(xs)) for _ in range(1000))]
    mu = sum(expected) / len(expected)
    want = math.sqrt(sum((x - mu) ** 2 for x in expected) / (len(expected) - 1))
    assert metrics.bootstrap_perplexity_stderr(np.asarray(xs), 3000) == pytest.approx(want, rel=1e-9)


# Scoring: each context once, its continuations as branches == a plain forward per pair
# ------------------------------------------------------------------------------------------------------------------


def reference(model, pairs: list[Pair]) -> tuple[np.ndarray, np.ndarray]:
    """Per pair, a forward over context + continuation alone (the model's own path, document masks included), each
    right-padded to the window: causal attention keeps padding after a token out of its logits, and one shape
    compiles once."""
    L = model.cfg.seq_len
    inputs = np.zeros((len(pairs), L), np.int32)
    for i, p in enumerate(pairs):
        tokens = list(p.context) + list(p.continuation)
        inputs[i, : len(tokens) - 1] = tokens[:-1]
    logp = np.asarray(jax.nn.log_softmax(model(jnp.asarray(inputs)), axis=-1))
    ll, greedy = [], []
    for i, p in enumerate(pairs):
        at = np.arange(len(p.context) - 1, len(p.context) + len(p.continuation) - 1)
        ll.append(float(np.sum(logp[i, at, list(p.continuation)])))
        greedy.append(bool(np.all(np.argmax(logp[i, at], -1) == list(p.continuation))))
    return np.asarray(ll), np.asarray(greedy)


def mixed_pairs(rng, n: int, window: int, eod_every: int = 0) -> list[Pair]:
    """Shared and unshared contexts, single- and multi-token continuations, lengths up to the window."""
    out = []
    for d in range(n):
        ctx = [int(t) for t in rng.integers(0, 1000, rng.integers(1, window - 8))]
        if eod_every:
            ctx = [EOD if i % eod_every == eod_every - 1 else t for i, t in enumerate(ctx)]
        for _ in range(int(rng.integers(1, 5))):
            cont = [int(t) for t in rng.integers(0, 1000, rng.integers(1, 9))]
            if eod_every and len(cont) > 2:
                cont[1] = EOD
            out.append(Pair(d, tuple(ctx), tuple(cont)))
    return out


@pytest.mark.parametrize(
    "options",
    [{}, {"pos_emb": "learned", "mlp": "gelu", "use_bias": True}, {"doc_mask": True, "doc_positions": True}],
    ids=["rope", "learned", "doc_mask"],
)
def test_branch_scoring_equals_a_plain_forward_per_pair(options):
    cfg = small(**options)
    model = model_with(cfg, random_params(cfg, 1))
    pairs = mixed_pairs(np.random.default_rng(2), 12, cfg.seq_len, eod_every=5 if options.get("doc_mask") else 0)
    pairs.append(Pair(99, tuple(range(1, 120)), (5, 6, 7, 8, 9, 10, 11, 12, 13)))  # a full window: bucket 128
    ll, greedy = score_pairs(model, pairs, batch_size=2)
    want_ll, want_greedy = reference(model, pairs)
    np.testing.assert_allclose(ll, want_ll, rtol=0, atol=2e-4)
    assert (greedy == want_greedy).all()


def test_buckets_grow_two_per_octave_up_to_the_window():
    assert buckets(64) == [64] and buckets(128) == [64, 96, 128] and buckets(200) == [64, 96, 128, 192, 200]
    assert buckets(512) == [64, 96, 128, 192, 256, 384, 512] and buckets(40) == [40]


def on_mesh(mesh, seq_len: int = 128):
    """configs/tiny.py's model (GPT-2's vocab) with params of seed 0, laid out on `mesh` by the sharding table."""
    cfg = load_config_file(TINY)
    cfg.data.seq_len = seq_len
    layout = StateLayout.build(StepConfig.from_config(cfg, num_steps=1), mesh)
    return layout.model(layout.init(0).params)


def test_a_2x2x2_mesh_gives_the_single_device_scores():
    pairs = mixed_pairs(np.random.default_rng(3), 20, 128)
    one_ll, one_greedy = score_pairs(on_mesh(sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])), pairs)
    many_ll, many_greedy = score_pairs(on_mesh(sharding.make_mesh(2, 2, 2)), pairs)
    np.testing.assert_allclose(many_ll, one_ll, rtol=0, atol=1e-4)
    assert (many_greedy == one_greedy).all()


# evaluate_tasks end to end, and the bad inputs
# ------------------------------------------------------------------------------------------------------------------


def test_evaluate_tasks_scores_the_three_kinds(model, tok, tmp_path):
    mc = write(tmp_path / "mc.jsonl", [{"context": "Q: sky?\nA:", "choices": ["blue", "grün", "海"], "label": 0}] * 3)
    cz = write(tmp_path / "cz.jsonl", [{"context": "one two", "target": " three"}, {"context": "", "target": "Hi"}])
    pp = write(tmp_path / "pp.jsonl", [{"text": "word " * 300}])  # several windows of 128
    got = evaluate_tasks(model, tok, [f"mc:multiple_choice:{mc}", f"cz:cloze:{cz}@1", f"pp:perplexity:{pp}"])
    assert set(got) == {"mc", "cz", "pp"} and got["cz"]["requests"] == 1
    assert set(got["mc"]["metrics"]) == {"acc", "acc_norm"}
    assert set(got["pp"]["metrics"]) == {"word_perplexity", "byte_perplexity", "bits_per_byte"}
    assert got["mc"]["stderr"]["acc"] == 0.0 and len(got["mc"]["sha256"]) == 64


@pytest.mark.parametrize(
    "spec, message",
    [
        ("hellaswag", "must be NAME:KIND:PATH"),
        ("h:mc:x.jsonl", "unknown kind 'mc'"),
        ("h w:cloze:x.jsonl", "may hold only"),
        ("h:cloze:x.jsonl@0", "at least 1 request"),
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises(EvalError, match=message):
        TaskSpec.parse(spec)


@pytest.mark.parametrize(
    "kind, row, message",
    [
        ("multiple_choice", {"context": "a", "choices": ["x", "y"]}, "missing field 'label'"),
        ("multiple_choice", {"context": "a", "choices": ["x", "y"], "label": 2}, "'label'=2 is outside the 2 choices"),
        (
            "multiple_choice",
            {"context": "a", "choices": ["x", ""], "label": 0},
            "'choices' entry 1 must be a non-empty",
        ),
        ("multiple_choice", {"context": "a", "choices": "xy", "label": 0}, "'choices' must be a list"),
        ("multiple_choice", {"context": "a", "choices": ["x", "y"], "label": True}, "'label' must be a int"),
        ("cloze", {"context": "a", "target": ""}, "field 'target' is empty"),
        ("cloze", {"context": 3, "target": " b"}, "field 'context' must be a str"),
        ("perplexity", {"txt": "a"}, "missing field 'text'"),
        ("perplexity", "[1, 2]", "must be a JSON object"),
        ("perplexity", "{oops", "not a JSON line"),
    ],
)
def test_bad_requests_name_the_file_line_and_field(tmp_path, kind, row, message):
    good = {
        "multiple_choice": {"context": "a", "choices": ["x", "y"], "label": 0},
        "cloze": {"context": "a", "target": " b"},
    }
    path = write(tmp_path / "t.jsonl", [good.get(kind, {"text": "fine"}), row])
    with pytest.raises(EvalError, match=f"t.jsonl:2: .*{message}" if "JSON" not in message else message) as e:
        load_task(TaskSpec("t", kind, path))
    assert "t.jsonl:2" in str(e.value) and "\n" not in str(e.value)


def test_a_continuation_longer_than_the_window_is_refused(model, tok, tmp_path):
    path = write(tmp_path / "t.jsonl", [{"context": "a", "target": " b"}, {"context": "a", "target": " b" * 200}])
    with pytest.raises(EvalError, match=r"t.jsonl:2: field 'target': 200 tokens leave no room for a context .* 128"):
        task_pairs(load_task(TaskSpec("t", "cloze", path)), Encoder(tok, EOD, model.cfg.seq_len))


def test_missing_empty_and_changed_task_files(tmp_path):
    with pytest.raises(EvalError, match="nope.jsonl: task file cannot be read"):
        load_task(TaskSpec("t", "cloze", str(tmp_path / "nope.jsonl")))
    with pytest.raises(EvalError, match="no requests"):
        load_task(TaskSpec("t", "cloze", write(tmp_path / "e.jsonl", [""])))
    path = write(tmp_path / "c.jsonl", [{"context": "a", "target": " b"}])
    task = load_task(TaskSpec("t", "cloze", path))
    check_unchanged(task)
    write(tmp_path / "c.jsonl", [{"context": "a", "target": " c"}])
    with pytest.raises(EvalError, match="c.jsonl: task 't' changed during the run"):
        check_unchanged(task)


def test_cloze_targets_without_a_space_warn(tmp_path):
    with pytest.warns(UserWarning, match="scored verbatim"):
        load_task(TaskSpec("t", "cloze", write(tmp_path / "t.jsonl", [{"context": "is", "target": "Paris"}])))
