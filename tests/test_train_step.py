"""The sharded train/eval steps on 8 fake CPU devices: sharded == single device, remat == plain, accumulation == one
big batch, the loss goes down, and the pieces around them (schedule, decay mask, mesh)."""

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close, atol_for

from jaxgpt.data.sft import loss_mask
from jaxgpt.errors import ConfigError
from jaxgpt.model import ModelConfig, count_params
from jaxgpt.sharding import batch_sharding, data_parallel_size, make_mesh
from jaxgpt.train import step as train_step
from jaxgpt.train.optim import OptimConfig, decay_mask, lr_schedule
from jaxgpt.train.state import StateLayout, StepConfig
from jaxgpt.train.step import _split_micro, compiler_options, make_eval_step, make_train_step

MODEL = ModelConfig(
    vocab_size=256, n_layer=2, n_head_q=4, n_head_kv=2, n_embd=32, ffn_hidden=128, seq_len=16
)  # the rest: ModelConfig's defaults
# eps=1e-3: Adam's first update is lr * g / (|g| + eps), which with eps >> 1e-8 stays proportional to the gradient
# for small g, so comparing updates compares gradients (with eps=1e-8 it is lr * sign(g) and hides them).
OPTIM = OptimConfig(
    lr=1e-2, min_lr_ratio=0.1, warmup_steps=0, b1=0.9, b2=0.95, eps=1e-3, weight_decay=0.1, clip_norm=1.0
)
G_T = 8 * 16  # tokens of a default _batch
N_PARAMS = count_params(MODEL)
STEP = StepConfig(
    MODEL,
    OPTIM,
    num_steps=100,
    grad_accum=1,
    compute_dtype="float32",
    remat="none",
    z_loss=0.0,
    loss_chunks=4,
    attention="auto",
)


def _mesh(data=1, fsdp=1, tensor=1):
    return make_mesh(data, fsdp, tensor, devices=jax.devices()[: data * fsdp * tensor])


def _batch(mesh, G=8, T=16, seed=0, V=256):
    tokens = np.random.default_rng(seed).integers(0, V, (G, T + 1)).astype(np.int32)
    put = lambda x: jax.device_put(x, batch_sharding(mesh))  # noqa: E731
    return {"inputs": put(tokens[:, :-1]), "targets": put(tokens[:, 1:]), "mask": put(np.ones((G, T), np.float32))}


@functools.cache
def _setup(cfg: StepConfig, mesh):
    """(state layout, seed-0 state as numpy, jitted step), compiled once per (config, mesh) for the whole module."""
    layout = StateLayout.build(cfg, mesh)
    return layout, jax.tree.map(np.asarray, layout.init(0)), make_train_step(layout)


def _put(state_np, cfg: StepConfig, mesh):
    abstract = StateLayout.build(cfg, mesh).abstract
    return jax.tree.map(lambda x, a: jax.device_put(x, a.sharding), state_np, abstract)


def _one_step(cfg: StepConfig, mesh, batch=None, state_np=None):
    """(param updates of one step, metrics) as numpy, from the seed-0 state or a given numpy state."""
    _, fresh_np, step = _setup(cfg, mesh)
    state_np = fresh_np if state_np is None else state_np
    batch = _batch(mesh) if batch is None else batch
    new_state, metrics = step(_put(state_np, cfg, mesh), {k: batch[k] for k in ("inputs", "targets")})
    updates = jax.tree.map(lambda new, old: np.asarray(new) - old, new_state.params, state_np.params)
    return updates, {k: float(v) for k, v in metrics.items()}


def _assert_updates_close(a, b, params, depth=G_T):
    """Per leaf, max |a - b| <= atol_for(max |b|, depth) + one ulp of the leaf's largest parameter. A gradient sums
    `depth` tokens' contributions, which a sharded reduction or another micro-batching adds in another order; entries
    that are sums with cancellation differ more in relative terms, but never relative to the leaf's scale. The ulp: an
    update is measured as new - old float32 params, which resolve nothing finer (a norm weight at 1.0 moves in steps of
    6e-8)."""
    leaves_a = jax.tree_util.tree_flatten_with_path(a)[0]
    for (path, x), y, p in zip(leaves_a, jax.tree.leaves(b), jax.tree.leaves(params), strict=True):
        assert x.shape == y.shape == p.shape
        ulp = np.spacing(np.abs(p).max())
        assert np.max(np.abs(x - y)) <= atol_for(np.max(np.abs(y)), depth) + ulp, jax.tree_util.keystr(path)


def _assert_metrics_close(a: dict, b: dict) -> None:
    """The loss averages G_T tokens' logsumexps of V exps; the grad norm sums the squares of every gradient entry."""
    assert_close(a["loss"], b["loss"], depth=G_T + MODEL.vocab_size)
    assert_close(a["grad_norm"], b["grad_norm"], depth=N_PARAMS)
    assert a["lr"] == b["lr"]


def test_sharded_step_equals_single_device():
    """data=2 x fsdp=2 x tensor=2 gives the single-device loss, grad norm and param updates (fp32)."""
    single, sharded = _mesh(), _mesh(2, 2, 2)
    _, state_np, _ = _setup(STEP, single)
    updates_1, metrics_1 = _one_step(STEP, single, _batch(single))
    updates_8, metrics_8 = _one_step(STEP, sharded, _batch(sharded), state_np=state_np)
    assert metrics_1["loss"] == pytest.approx(np.log(256), rel=0.01)  # near-uniform predictions at init
    _assert_metrics_close(metrics_8, metrics_1)
    _assert_updates_close(updates_8, updates_1, state_np.params)


def test_state_is_created_sharded_and_matches_abstract():
    mesh = _mesh(2, 2, 2)
    layout = StateLayout.build(STEP, mesh)
    state, abstract = layout.init(0), layout.abstract
    assert jax.tree.structure(state) == jax.tree.structure(abstract)
    for x, a in zip(jax.tree.leaves(state), jax.tree.leaves(abstract)):
        assert (x.shape, x.dtype) == (a.shape, a.dtype)
        assert x.sharding.is_equivalent_to(a.sharding, x.ndim)
    wte = state.params["wte"]["weight"]
    assert wte.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")  # vocab over tensor, D over fsdp
    assert wte.addressable_shards[0].data.shape == (128, 16)
    mu = state.opt_state[1][0].mu["h"][0]["mlp"]["W"]["kernel"]  # Adam moments sharded like their params
    assert mu.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    # the same values as a single-device init (partitionable threefry): the seed, not the mesh, decides
    _, single_np, _ = _setup(STEP, _mesh())
    np.testing.assert_array_equal(np.asarray(wte), single_np.params["wte"]["weight"])
    model = layout.model(state.params)
    assert model.h[0].attn.q_attn.kernel.shape == (32, 32)


def test_the_model_takes_its_attention_from_the_mesh_platform(monkeypatch):
    """A CPU mesh gets the CPU attention (query blocks) also in a process whose default backend is a GPU."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    layout = StateLayout.build(STEP, _mesh())
    kernel = layout.model(layout.abstract.params).h[0].attn.kernel
    assert (kernel.implementation, kernel.query_block) == ("xla", 128)


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_equals_no_remat(remat):
    mesh = _mesh()
    updates_plain, metrics_plain = _one_step(STEP, mesh)
    updates_remat, metrics_remat = _one_step(dataclasses.replace(STEP, remat=remat), mesh)
    _assert_metrics_close(metrics_remat, metrics_plain)
    _assert_updates_close(updates_remat, updates_plain, _setup(STEP, mesh)[1].params)


def test_grad_accumulation_equals_one_big_batch():
    """4 micro batches of 2 on 2 fsdp shards == one batch of 8: same loss, grad norm and update."""
    mesh = _mesh(fsdp=2)
    batch = _batch(mesh, G=16)
    updates_1, metrics_1 = _one_step(STEP, mesh, batch)
    updates_4, metrics_4 = _one_step(dataclasses.replace(STEP, grad_accum=4), mesh, batch)
    _assert_metrics_close(metrics_4, metrics_1)
    _assert_updates_close(updates_4, updates_1, _setup(STEP, mesh)[1].params, depth=16 * 16)


def test_micro_batch_split_needs_no_communication():
    """[G, T] -> [A, G/A, T] keeps every row on the device that holds it: the compiled split has no collectives."""
    mesh = _mesh(2, 2, 2)
    x = jnp.arange(16 * 4, dtype=jnp.int32).reshape(16, 4)
    split = jax.jit(
        lambda x: _split_micro(x, 2),
        in_shardings=batch_sharding(mesh),
        out_shardings=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, ("data", "fsdp"), None)),
    )
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        hlo = split.lower(x).compile().as_text()
    for collective in ("all-to-all", "all-gather", "collective-permute", "all-reduce"):
        assert collective not in hlo
    np.testing.assert_array_equal(split(x)[1, 0], x[1])  # micro batch a holds rows a, a + A, ...


def test_z_loss_changes_grads_not_reported_loss():
    mesh = _mesh()
    params_0, metrics_0 = _one_step(STEP, mesh)
    params_z, metrics_z = _one_step(dataclasses.replace(STEP, z_loss=1.0), mesh)
    assert_close(metrics_z["loss"], metrics_0["loss"], depth=G_T + MODEL.vocab_size)  # the plain cross-entropy
    assert metrics_z["grad_norm"] != pytest.approx(metrics_0["grad_norm"], rel=1e-3)


def test_dropout_is_keyed_by_step():
    cfg = dataclasses.replace(STEP, model=dataclasses.replace(MODEL, dropout=0.5))
    mesh = _mesh()
    _, state_np, _ = _setup(cfg, mesh)
    _, m_a = _one_step(cfg, mesh)
    _, m_b = _one_step(cfg, mesh)
    assert m_a["loss"] == m_b["loss"]  # same step, same key
    _, m_c = _one_step(cfg, mesh, state_np=state_np.replace(step=np.asarray(5, np.int32)))
    assert m_c["loss"] != m_a["loss"]  # another step, another mask


def test_eval_step_masks_and_matches_train_loss():
    mesh = _mesh(2, 2, 2)
    layout, state_np, _ = _setup(STEP, mesh)
    params = _put(state_np, STEP, mesh).params
    batch = _batch(mesh)
    eval_step = make_eval_step(layout)
    full = eval_step(params, batch)
    assert float(full["num_tokens"]) == 8 * 16
    mask = np.ones((8, 16), np.float32)
    mask[:, 10:] = 0.0
    half = eval_step(params, {**batch, "mask": jax.device_put(mask, batch_sharding(mesh))})
    assert float(half["num_tokens"]) == 8 * 10
    assert float(half["loss_sum"]) < float(full["loss_sum"])
    _, metrics = _one_step(STEP, mesh, batch)
    assert_close(float(full["loss_sum"]) / G_T, metrics["loss"], depth=G_T + MODEL.vocab_size)


def test_tiny_model_overfits_one_batch():
    mesh = _mesh(2, 2, 2)
    _, state_np, step = _setup(STEP, mesh)
    state = _put(state_np, STEP, mesh)
    batch = _batch(mesh)
    batch = {k: batch[k] for k in ("inputs", "targets")}
    losses = []
    for _ in range(40):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.3 * losses[0], losses
    assert int(state.step) == 40


def test_lr_schedule_warmup_cosine_and_cap():
    cfg = dataclasses.replace(OPTIM, lr=1.0, min_lr_ratio=0.1, warmup_steps=10)
    schedule = lr_schedule(cfg, 200)
    assert float(schedule(0)) == pytest.approx(0.1)  # (0 + 1) / 10
    assert float(schedule(9)) == pytest.approx(1.0)
    assert float(schedule(10)) == pytest.approx(1.0)
    assert float(schedule(199)) == pytest.approx(0.1)  # min at the last step
    assert 0.1 < float(schedule(100)) < 1.0
    short = lr_schedule(cfg, 50)  # warmup capped at 10% of the run: 5 steps
    assert float(short(0)) == pytest.approx(0.2) and float(short(4)) == pytest.approx(1.0)


def test_decay_mask_spares_embeddings_norms_biases():
    mesh = _mesh()
    untied = dataclasses.replace(STEP, model=dataclasses.replace(MODEL, tie_embeddings=False, use_bias=True))
    abstract = StateLayout.build(untied, mesh).abstract
    flat = {jax.tree_util.keystr(p): m for p, m in jax.tree_util.tree_flatten_with_path(decay_mask(abstract.params))[0]}
    decayed = {k for k, m in flat.items() if m}
    assert decayed and all("kernel" in k or "lm_head'" in k for k in decayed)
    assert any("'lm_head'" in k for k in decayed)  # an untied lm_head is a linear layer, as Modalities groups it
    assert not any("wte" in k or "norm" in k or "bias" in k for k in decayed)


def test_make_mesh_sizes_and_errors():
    mesh = make_mesh(2, -1, 2)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert data_parallel_size(mesh) == 4
    with pytest.raises(ConfigError, match="mesh.data"):
        make_mesh(3, 1, 1)
    with pytest.raises(ConfigError, match="mesh.data and mesh.fsdp are both -1"):
        make_mesh(-1, -1, 1)
    with pytest.raises(ConfigError, match="mesh.tensor=0"):
        make_mesh(1, -1, 0)
    with pytest.raises(ConfigError, match="8 devices"):
        make_mesh(1, 3, -1)


def test_step_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="train.compute_dtype='float16'"):
        dataclasses.replace(STEP, compute_dtype="float16")
    with pytest.raises(ConfigError, match="train.remat='some'"):
        dataclasses.replace(STEP, remat="some")
    with pytest.raises(ConfigError, match="train.grad_accum=0"):
        dataclasses.replace(STEP, grad_accum=0)
    with pytest.raises(ConfigError, match="train.loss_chunks=3 must be a positive int that divides data.seq_len=16"):
        dataclasses.replace(STEP, loss_chunks=3)
    with pytest.raises(ConfigError, match="train.attention='flash'"):
        dataclasses.replace(STEP, attention="flash")
    with pytest.raises(ConfigError, match="optim.b2=1.0"):
        dataclasses.replace(OPTIM, b2=1.0)


def test_a_mesh_axis_that_does_not_divide_a_weight_is_a_clear_error():
    # c_proj has 4 heads x 8 = 32 rows: 3 tensor shards cannot split them
    with pytest.raises(
        ConfigError, match=r"params\.h\.0\.attn\.c_proj\.kernel has size \d+ in dim 0, which mesh.tensor=3"
    ):
        StateLayout.build(STEP, _mesh(tensor=3))


def test_a_head_count_the_tensor_axis_does_not_divide_is_a_clear_error():
    # 2 kv heads x 8 = 16 kv columns: 4 tensor shards split the weights evenly, but not the heads
    with pytest.raises(ConfigError, match=r"model\.n_head_kv=2 is not divisible by mesh\.tensor=4"):
        StateLayout.build(STEP, _mesh(tensor=4))


def test_the_loss_chunk_loop_holds_no_collective():
    """fsdp=8, 4 loss chunks: the chunk loop of jaxgpt/model/loss.py keeps d W and the loss sums per device, so nothing
    crosses devices inside it and the V x D gradient is reduced once per micro batch, as without chunks."""
    cfg = dataclasses.replace(STEP, loss_chunks=4)
    mesh = _mesh(fsdp=8)
    layout = StateLayout.build(cfg, mesh)
    batch = _batch(mesh)
    hlo = make_train_step(layout).lower(layout.init(0), {k: batch[k] for k in ("inputs", "targets")})
    text = hlo.compile().as_text()
    chunk_loops = [
        re.search(r"body=%([\w.\-]+)", line).group(1)
        for line in text.splitlines()
        if " while(" in line and '"known_trip_count":{"n":"4"}' in line
    ]
    assert chunk_loops, "no while loop with trip count 4: the chunk scan is gone or unrolled, update this test"
    computations = {
        m.group(1): m.group(0) for m in re.finditer(r"^%?([\w.\-]+) [^\n]*\{\n(?:.*\n)*?\}", text, re.MULTILINE)
    }
    for body in chunk_loops:
        found = re.findall(
            r" (all-reduce|reduce-scatter|all-gather|all-to-all|collective-permute)(?:-start)?\(", computations[body]
        )
        assert not found, f"{found} inside the loss chunk loop {body}"


def test_cpu_step_gives_ynnpack_single_dots_only():
    """On CPU the step compiles with compiler_options("cpu"): each YNNPACK call is one matmul, and the reductions and
    exps around it (the loss's exp-sum over the vocab) stay in XLA's own loops, which ran them 2x faster."""
    assert compiler_options("cpu") == train_step._CPU_COMPILER_OPTIONS
    assert compiler_options("gpu") is None
    mesh = _mesh()
    layout = StateLayout.build(STEP, mesh)
    batch = _batch(mesh)
    text = make_train_step(layout).lower(layout.init(0), {k: batch[k] for k in ("inputs", "targets")})
    text = text.compile().as_text()
    computations = {
        m.group(1): m.group(0) for m in re.finditer(r"^%?([\w.\-]+) [^\n]*\{\n(?:.*\n)*?\}", text, re.MULTILINE)
    }
    ynn = [re.search(r"calls=%([\w.\-]+)", line).group(1) for line in text.splitlines() if "__ynn_fusion" in line]
    assert ynn, "no YNNPACK fusion in the CPU step: XLA changed how it runs matmuls, update this test"
    for name in ynn:
        ops = re.findall(r"= \S+ ([a-z\-]+)\(", computations[name])
        assert [op for op in ops if op not in ("parameter", "bitcast")] == ["dot"], f"{name}: {ops}"


def test_compile_options_an_xla_rejects_fall_back_with_a_warning(monkeypatch):
    monkeypatch.setattr(train_step, "_CPU_COMPILER_OPTIONS", {"xla_cpu_no_such_option": True})
    compiler_options.cache_clear()
    try:
        with pytest.warns(UserWarning, match="xla_cpu_no_such_option"):
            assert compiler_options("cpu") is None
    finally:
        compiler_options.cache_clear()


# --- loss masks (instruction tuning) ---------------------------------------------------------------------------------

BEGIN, END = 1, 2  # marker ids in the test vocabulary
MASKED = dataclasses.replace(STEP, loss_mask_ids=(BEGIN, END))


def _chat_batch(mesh, G=8, T=16, seed=0, turns=True):
    """Random ids with assistant turns (begin ... end) in most rows, and rows with no marker at all."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, 256, (G, T + 1)).astype(np.int32)
    for row in tokens[: G - 2] if turns else []:
        begin = rng.integers(0, T - 4)
        row[begin], row[begin + rng.integers(2, 5)] = BEGIN, END
    put = lambda x: jax.device_put(x, batch_sharding(mesh))  # noqa: E731
    return {"inputs": put(tokens[:, :-1]), "targets": put(tokens[:, 1:]), "mask": put(np.ones((G, T), np.float32))}


def test_masked_loss_is_the_same_on_any_mesh_and_accumulation():
    """The mean over the counted targets of the whole global batch: 1 device == 2x2x2 == 4 micro batches."""
    single, sharded, fsdp = _mesh(), _mesh(2, 2, 2), _mesh(fsdp=2)
    _, state_np, _ = _setup(MASKED, single)
    batch = _chat_batch(single, G=16)
    updates_1, metrics_1 = _one_step(MASKED, single, batch)
    counted = int(loss_mask(np.asarray(batch["targets"]), BEGIN, END).sum())
    assert 0 < metrics_1["tokens_counted"] == counted < 16 * 16
    for mesh, accum in ((sharded, 1), (fsdp, 4)):
        cfg = dataclasses.replace(MASKED, grad_accum=accum)
        updates, metrics = _one_step(cfg, mesh, _chat_batch(mesh, G=16), state_np=state_np)
        assert metrics["tokens_counted"] == counted
        _assert_metrics_close(metrics, metrics_1)
        _assert_updates_close(updates, updates_1, state_np.params, depth=counted)


def test_masked_loss_is_the_eval_steps_masked_mean():
    mesh = _mesh(2, 2, 2)
    layout, state_np, _ = _setup(MASKED, mesh)
    batch = _chat_batch(mesh, seed=3)
    out = make_eval_step(layout)(_put(state_np, MASKED, mesh).params, batch)
    _, metrics = _one_step(MASKED, mesh, batch)
    assert float(out["num_tokens"]) == metrics["tokens_counted"]
    assert_close(float(out["loss_sum"]) / metrics["tokens_counted"], metrics["loss"], depth=G_T + MODEL.vocab_size)


def test_a_batch_with_no_counted_target_changes_nothing_but_the_step():
    mesh = _mesh(fsdp=2)
    layout, state_np, step = _setup(MASKED, mesh)
    batch = _chat_batch(mesh, turns=False)
    new_state, metrics = step(_put(state_np, MASKED, mesh), {k: batch[k] for k in ("inputs", "targets")})
    assert {k: float(v) for k, v in metrics.items() if k != "lr"} == {
        "loss": 0.0,
        "grad_norm": 0.0,
        "tokens_counted": 0,
    }
    assert int(new_state.step) == 1
    for new, old in zip(jax.tree.leaves((new_state.params, new_state.opt_state)), jax.tree.leaves(state_np)[1:]):
        np.testing.assert_array_equal(np.asarray(new), old)


DOCS = dataclasses.replace(STEP, model=dataclasses.replace(MODEL, doc_mask=True, doc_positions=True, eod_token_id=7))


def _docs_batch(mesh, G=8, T=16, seed=5):
    """Random windows with documents ending at id 7 every few tokens."""
    tokens = np.random.default_rng(seed).integers(8, 256, (G, T + 1)).astype(np.int32)
    tokens[np.random.default_rng(seed + 1).random((G, T + 1)) < 0.2] = 7
    put = lambda x: jax.device_put(x, batch_sharding(mesh))  # noqa: E731
    return {"inputs": put(tokens[:, :-1]), "targets": put(tokens[:, 1:]), "mask": put(np.ones((G, T), np.float32))}


def test_document_masked_step_is_the_same_on_any_mesh():
    """The segment ids come from each device's own rows: 2x2x2 gives the single device's step, which differs from the
    unmasked one (the batch has documents to mask)."""
    single, sharded = _mesh(), _mesh(2, 2, 2)
    _, state_np, _ = _setup(DOCS, single)
    updates_1, metrics_1 = _one_step(DOCS, single, _docs_batch(single))
    updates_8, metrics_8 = _one_step(DOCS, sharded, _docs_batch(sharded), state_np=state_np)
    _assert_metrics_close(metrics_8, metrics_1)
    _assert_updates_close(updates_8, updates_1, state_np.params)
    _, plain = _one_step(STEP, single, _docs_batch(single), state_np=state_np)
    assert plain["loss"] != metrics_1["loss"]
