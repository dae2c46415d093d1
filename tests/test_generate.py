"""Generation: the kv-cached decode loop against full re-forwards, its sampling, its mesh, its CLI and its errors."""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, TEST_DATA, TOKENIZER, assert_close, tiny_config
from flax import nnx

from jaxgpt import checkpoint, cli, generate, sharding, train
from jaxgpt.config import load_config_file
from jaxgpt.data.tokenize import load_tokenizer
from jaxgpt.errors import ConfigError, JaxgptError
from jaxgpt.train.state import StateLayout, StepConfig

VOCAB = 512  # a small padded vocab for the model tests; the "tokenizer" has LIMIT ids
LIMIT = 500
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [1, 2, 3], [40 + i for i in range(21)], [7]]


def make_model(mesh=None, noise=0.3, seq_len=64, **overrides):
    """configs/tiny.py with `overrides` ({"key": value} of cfg.model), params moved far from init so that greedy
    decoding does not just repeat the last token (what a freshly initialised tied-embedding model does)."""
    cfg = load_config_file(str(REPO / "configs" / "tiny.py"))
    cfg.model.vocab_size = VOCAB
    cfg.data.seq_len = seq_len
    for key, value in overrides.items():
        cfg.model[key] = value
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1]) if mesh is None else mesh
    layout = StateLayout.build(StepConfig.from_config(cfg, num_steps=1), mesh)
    params = layout.init(0).params
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    noisy = [x + noise * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    params = jax.device_put(jax.tree.unflatten(tree, noisy), layout.shardings.params)
    return layout.model(params)


VARIANTS = {
    "rope, GQA, SwiGLU (tiny)": {},
    "learned positions": {"pos_emb": "learned"},
    "no positions": {"pos_emb": "none"},
    "qk-norm": {"qk_norm": True},
    "GELU, biases, untied": {"mlp": "gelu", "use_bias": True, "tie_embeddings": False},
    "RMSNorm, no GQA": {"norm": "rms", "n_head_kv": 4},
}


@pytest.mark.parametrize("overrides", VARIANTS.values(), ids=VARIANTS.keys())
def test_cached_greedy_equals_full_reforward(overrides):
    model = make_model(**overrides)
    cached = generate.generate_ids(model, PROMPTS, max_new_tokens=10, eos_id=None, vocab_size=LIMIT)
    reference = generate.reforward_ids(model, PROMPTS, max_new_tokens=10, vocab_size=LIMIT)
    assert cached == reference
    assert len({tuple(ids) for ids in cached}) > 1 and all(len(set(ids)) > 1 for ids in cached)  # not degenerate


def test_a_short_context_caps_the_prompt_bucket():
    # seq_len 48: a prompt of 5 rounds up to 64 slots, more than fit; the prefill takes 48 - 16 = 32 slots instead
    model = make_model(seq_len=48)
    prompts = [[3, 4, 5, 6, 7], [9] * 32]
    cached = generate.generate_ids(model, prompts, max_new_tokens=16, eos_id=None)
    assert cached == generate.reforward_ids(model, prompts, max_new_tokens=16)


def test_decoding_across_growing_caches_equals_full_reforward():
    # P = 64 slots and 150 new tokens: three decode loops, with caches of 128, 192 and 213 slots
    assert generate.cache_capacities(64, 150) == [128, 192, 213]
    model = make_model(seq_len=256)
    cached = generate.generate_ids(model, PROMPTS[:2], max_new_tokens=150, eos_id=None, vocab_size=LIMIT)
    assert cached == generate.reforward_ids(model, PROMPTS[:2], max_new_tokens=150, vocab_size=LIMIT)


@pytest.mark.parametrize("P, max_new", [(64, 1), (64, 2), (64, 65), (64, 66), (128, 448), (32, 16)])
def test_cache_capacities_grow_to_what_the_last_token_needs(P, max_new):
    capacities = generate.cache_capacities(P, max_new)
    assert capacities[0] >= P and capacities[-1] == P + max_new - 1  # the prefill fits; the last token's slot is there
    assert all(b - a == generate.CACHE_STEP for a, b in zip(capacities, capacities[1:-1]))
    assert all(a < b for a, b in zip(capacities, capacities[1:]))


def test_the_decode_layout_transposes_a_copy_and_keeps_the_logits():
    model = make_model()
    assert generate.decode_layout(model, generate.TRANSPOSED_FROM_ROWS - 1) is model
    copy = generate.decode_layout(model, generate.TRANSPOSED_FROM_ROWS)
    kernel = model.h[0].mlp.W_2.kernel[...]
    assert copy.h[0].mlp.W_2.transposed and not model.h[0].mlp.W_2.transposed
    np.testing.assert_array_equal(copy.h[0].mlp.W_2.kernel[...], kernel.T)
    assert model.h[0].mlp.W_2.kernel[...].shape == kernel.shape  # the model itself is untouched
    tokens_BxT = jnp.asarray([p + [0] * (21 - len(p)) for p in PROMPTS])
    assert_close(copy(tokens_BxT), model(tokens_BxT), depth=model.cfg.mlp_hidden)  # another order of each sum


@pytest.fixture(scope="module")
def model():
    return make_model()


def test_a_batch_gives_what_each_prompt_gives_alone(model):
    for t in (0.0, 1.0):
        batch = generate.generate_ids(model, PROMPTS, max_new_tokens=8, eos_id=None, temperature=t)
        alone = [
            generate.generate_ids(model, [p], max_new_tokens=8, eos_id=None, temperature=t, sample_ids=[i])[0]
            for i, p in enumerate(PROMPTS)
        ]
        assert batch == alone
        # and chunked into batches of 2 rows
        assert batch == generate.generate_ids(
            model, PROMPTS, max_new_tokens=8, eos_id=None, temperature=t, batch_size=2
        )


def test_top_k_1_is_greedy(model):
    greedy = generate.generate_ids(model, PROMPTS, max_new_tokens=8, eos_id=None)
    assert greedy == generate.generate_ids(model, PROMPTS, max_new_tokens=8, eos_id=None, temperature=1.5, top_k=1)
    # top_p small enough to keep only the most likely token is greedy too
    assert greedy == generate.generate_ids(model, PROMPTS, max_new_tokens=8, eos_id=None, temperature=1.5, top_p=1e-6)


def test_the_same_seed_gives_the_same_samples_and_another_seed_others(model):
    def draw(seed, **kw):
        return generate.generate_ids(model, PROMPTS, max_new_tokens=12, eos_id=None, temperature=1.0, seed=seed, **kw)

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)
    assert draw(3, top_k=20, top_p=0.9) == draw(3, top_k=20, top_p=0.9)
    # rows with the same prompt draw different samples (each row its own key)
    rows = generate.generate_ids(model, [PROMPTS[0]] * 4, max_new_tokens=12, eos_id=None, temperature=1.0)
    assert len({tuple(r) for r in rows}) == 4


def test_generation_stops_at_eos(model):
    free = generate.generate_ids(model, PROMPTS, max_new_tokens=12, eos_id=None)
    eos = free[0][4]
    stopped = generate.generate_ids(model, PROMPTS, max_new_tokens=12, eos_id=eos)
    for row, full in zip(stopped, free):
        expected = full[: full.index(eos) + 1] if eos in full else full
        assert row == expected
    assert stopped[0][-1] == eos and len(stopped[0]) <= 5


def test_the_loop_ends_when_every_row_has_emitted_eos(model):
    graphdef, params = nnx.split(model)
    first = generate.generate_ids((graphdef, params), PROMPTS[:1], max_new_tokens=1, eos_id=None)[0][0]
    tokens_BxP, first_B = generate._left_pad(PROMPTS[:1], 1, pad_id=0, max_slots=52)
    kw = {"mesh": generate.model_mesh(model), "sampling": generate.Sampling(), "max_new": 12, "vocab_limit": VOCAB}
    keys_B = jax.random.split(jax.random.key(0), 1)
    out_BxM, steps = generate._decode(graphdef, params, tokens_BxP, first_B, keys_B, 1, eos_id=first, **kw)
    assert int(steps) == 1 and np.asarray(out_BxM)[0].tolist() == [first] + [-1] * 11  # eos at once: no decode step
    out_BxM, steps = generate._decode(graphdef, params, tokens_BxP, first_B, keys_B, 1, eos_id=None, **kw)
    assert int(steps) == 12 and (np.asarray(out_BxM) >= 0).all()
    # the same row among 7 filler rows (a batch padded to the mesh): the filler rows must not keep the loop going
    tokens_BxP, first_B = generate._left_pad(PROMPTS[:1], 8, pad_id=first, max_slots=52)
    keys_B = jax.random.split(jax.random.key(0), 8)
    out_BxM, steps = generate._decode(graphdef, params, tokens_BxP, first_B, keys_B, 1, eos_id=first, **kw)
    assert int(steps) == 1 and np.asarray(out_BxM)[0].tolist() == [first] + [-1] * 11


def test_a_tiny_temperature_is_greedy_not_id_0(model):
    greedy = generate.generate_ids(model, PROMPTS, max_new_tokens=6, eos_id=None)
    assert greedy == generate.generate_ids(model, PROMPTS, max_new_tokens=6, eos_id=None, temperature=1e-38)
    assert 0 not in {i for row in greedy for i in row}  # else the test could not tell


def test_the_2x2x2_mesh_gives_the_tokens_of_one_device(model):
    one = generate.generate_ids(model, PROMPTS, max_new_tokens=10, eos_id=None)
    mesh = sharding.make_mesh(2, 2, 2)
    cfg = StepConfig.from_config(load_config_file(str(REPO / "configs" / "tiny.py")), num_steps=1)
    cfg = StepConfig(**{**cfg.__dict__, "model": model.cfg})
    layout = StateLayout.build(cfg, mesh)
    params = jax.device_put(nnx.state(model, nnx.Param), layout.shardings.params)
    sharded = layout.model(params)
    assert generate.model_mesh(sharded).shape == {"data": 2, "fsdp": 2, "tensor": 2}
    assert generate.generate_ids(sharded, PROMPTS, max_new_tokens=10, eos_id=None) == one


def test_padded_vocab_ids_are_never_emitted_even_with_huge_logits():
    model = make_model(tie_embeddings=False)
    # every hidden state becomes u (norm weight 0, bias u), and the padded rows of lm_head point along u: their logits
    # are huge, the real rows' small
    u = np.ones(model.cfg.n_embd, np.float32)
    model.lm_head_norm.weight[...] = jax.numpy.zeros(model.cfg.n_embd)
    model.lm_head_norm.bias[...] = jax.numpy.asarray(u)
    head = np.asarray(model.lm_head.weight[...]) * 0.01
    head[LIMIT:] = 100.0 * u
    model.lm_head.weight[...] = jax.numpy.asarray(head)
    unrestricted = generate.generate_ids(model, PROMPTS[:1], max_new_tokens=4, eos_id=None)
    assert all(i >= LIMIT for i in unrestricted[0])  # the trap works: without a limit they win
    for kw in ({}, {"temperature": 1.0}, {"temperature": 2.0, "top_p": 0.5}, {"temperature": 1.0, "top_k": 50}):
        rows = generate.generate_ids(model, PROMPTS, max_new_tokens=6, eos_id=None, vocab_size=LIMIT, **kw)
        assert all(0 <= i < LIMIT for row in rows for i in row), kw


def test_nothing_recompiles_within_a_prompt_bucket(model):
    generate.generate_ids(model, [[1] * 3], max_new_tokens=5, eos_id=None)
    before = generate._decode._cache_size()
    for n in (1, 17, 40, 59):
        generate.generate_ids(model, [[2] * n], max_new_tokens=5, eos_id=None)
    assert generate._decode._cache_size() == before


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prompt_ids": [[1, 2], []]}, "prompt 1 is empty"),
        ({"prompt_ids": [[1] * 60], "max_new_tokens": 8}, "prompt 0 has 60 tokens; with --max_new_tokens=8 at most"),
        ({"max_new_tokens": 0}, "--max_new_tokens=0 must be an int >= 1"),
        ({"temperature": -0.5}, "--temperature=-0.5 must be >= 0"),
        ({"top_p": 0.0}, "--top_p=0.0 must be in (0, 1]"),
        ({"top_p": 1.5}, "--top_p=1.5 must be in (0, 1]"),
        ({"top_k": -1}, "--top_k=-1 must be an int >= 0"),
        ({"vocab_size": VOCAB + 1}, f"the tokenizer has {VOCAB + 1} ids, more than model.vocab_size={VOCAB}"),
    ],
)
def test_bad_arguments_are_one_line_errors(model, kwargs, message):
    kwargs = {"prompt_ids": [[1, 2]], "max_new_tokens": 4, "eos_id": None, **kwargs}
    with pytest.raises(ConfigError, match=None) as e:
        generate.generate_ids(model, **kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)


# The command line, on a real (tiny) training run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("tiny_run"))
    train.run(tiny_config(**{"train.num_steps": 4, "train.eval_every": 2, "checkpoint.every": 2}), workdir)
    return workdir


def _cli(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "jaxgpt.generate", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def test_a_run_records_its_tokenizer_and_the_workdir_alone_generates(tiny_run, tmp_path):
    with open(os.path.join(tiny_run, "tokenizer.json"), "rb") as a, open(TOKENIZER, "rb") as b:
        assert a.read() == b.read()
    out = tmp_path / "out.jsonl"
    proc = _cli(
        f"--workdir={tiny_run}",
        "--prompt=The capital of France is",
        "--prompt=Once upon a time",
        "--max_new_tokens=6",
        "--temperature=0",
        "--num_samples=2",
        f"--output_jsonl={out}",
    )
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["prompt"], r["sample"]) for r in records] == [
        ("The capital of France is", 0),
        ("The capital of France is", 1),
        ("Once upon a time", 0),
        ("Once upon a time", 1),
    ]
    tok = load_tokenizer(TOKENIZER)
    model, _ = checkpoint.load(tiny_run)
    expected = generate.generate(model, tok, ["The capital of France is"], max_new_tokens=6, temperature=0.0)[0]
    assert records[0]["completion_ids"] == expected.completion_ids == records[1]["completion_ids"]  # greedy: equal
    assert records[0]["completion"] == expected.completion and expected.completion in proc.stdout
    assert 1 <= len(expected.completion_ids) <= 6


def test_the_cli_names_what_is_missing(tiny_run, tmp_path):
    old = tmp_path / "old_run"  # a run trained before runs recorded their tokenizer
    shutil.copytree(TEST_DATA / "checkpoint_v0_1" / "run", old)
    proc = _cli(f"--workdir={old}", "--prompt=hi")  # in a process of its own: the error is one line on stderr
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "pass --tokenizer_file" in proc.stderr.strip().splitlines()[-1]
    cases = [
        ([f"--workdir={old}", "--prompt=hi", f"--tokenizer_file={TOKENIZER}"], "more than model.vocab_size=256"),
        ([f"--workdir={tmp_path / 'empty'}", "--prompt=hi"], "no checkpoints/ directory"),
        ([f"--workdir={tiny_run}", "--prompt=hi", "--step=3"], "no checkpoint for step 3; available: [2, 4]"),
        ([f"--workdir={tiny_run}", "--prompt="], "prompt 0 is empty"),
        ([f"--workdir={tiny_run}"], "no prompt: pass --prompt=TEXT"),
        ([f"--workdir={tiny_run}", "--prompt=hi", "--top_p=2"], "--top_p=2.0 must be in (0, 1]"),
        ([f"--workdir={tiny_run}", "--prompt=hi", "--num_samples=0"], "--num_samples=0 must be an int >= 1"),
        ([f"--workdir={tiny_run}", "--prompt=hi", "--mesh=2,x,1"], "--mesh='2,x,1' must be three ints"),
        ([f"--workdir={tiny_run}", f"--prompts_file={tmp_path / 'none.txt'}"], "--prompts_file="),
    ]
    (tmp_path / "empty").mkdir()
    for argv, message in cases:
        with pytest.raises(JaxgptError) as e:
            generate.run_command(cli.parser().parse_args(["generate", *argv]))
        assert message in str(e.value) and "\n" not in str(e.value), argv


def test_prompts_file_holds_one_prompt_per_line(tiny_run, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The capital of France is\nOnce upon a time\n")
    out = tmp_path / "out.jsonl"
    proc = _cli(f"--workdir={tiny_run}", f"--prompts_file={prompts}", "--max_new_tokens=3", f"--output_jsonl={out}")
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["prompt"] for line in out.read_text().splitlines()] == [
        "The capital of France is",
        "Once upon a time",
    ]


def test_the_committed_notebook_runs_on_a_tiny_run(tiny_run, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("JAXGPT_WORKDIR", tiny_run)
    nb = nbformat.read(REPO / "notebooks" / "getting_started.ipynb", as_version=4)
    assert 'WORKDIR = os.environ.get("JAXGPT_WORKDIR", "runs/gpt60m_steps24")' in nb.cells[1].source
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    logged = [json.loads(line) for line in open(os.path.join(tiny_run, "metrics.jsonl"))]
    last_eval = [e for e in logged if e["event"] == "eval"][-1]
    # the notebook's evaluation reproduces the run's last logged eval loss
    assert f"the run logged {last_eval['eval_loss']:.4f}" in text
    assert f"validation loss {last_eval['eval_loss']:.4f}" in text
    assert any("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "The best way to learn a language is" in text
