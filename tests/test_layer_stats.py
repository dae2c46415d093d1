"""Per-layer statistics (train.layer_stats_every): off, the train step is the plain one; on, the measuring step
trains exactly as the plain one, and what it logs equals the norms computed by hand from the run's checkpoints and
batches; the heat maps hold the logged values."""

import dataclasses
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import REPO, read_metrics, tiny_config
from flax import nnx

from jaxgpt import checkpoint, plots, sharding, train
from jaxgpt.config import TrainConfig
from jaxgpt.data.loader import pipeline
from jaxgpt.errors import ConfigError
from jaxgpt.interop.params import flat_params
from jaxgpt.model import ModelConfig
from jaxgpt.model.layers import rope_at
from jaxgpt.train import layer_stats, loop, step
from jaxgpt.train.goodput import Goodput
from jaxgpt.train.optim import OptimConfig
from jaxgpt.train.setup import setup
from jaxgpt.train.state import StateLayout, StepConfig

EVERY = 3  # layer statistics at steps 3 and 6 of the 6-step tiny run
# Norms of float32 values summed in another order (a sharded reduction, the checkpoint's leaves one by one); gradients
# of 512 tokens through a fused, chunked loss on 8 devices against plain logits on one: a few float32 ulps of each sum.
RTOL = 1e-5


@pytest.fixture(scope="module")
def stats_run(tmp_path_factory):
    """The tiny run with statistics every 3 steps, logging every 4, and a checkpoint at every step."""
    workdir = str(tmp_path_factory.mktemp("stats"))
    cfg = tiny_config(
        **{
            "train.layer_stats_every": EVERY,
            "train.log_every": 4,
            "checkpoint.every": 1,
            "checkpoint.keep": 9,
        }
    )
    train.run(cfg, workdir)
    layers = {e["step"]: e for e in read_metrics(workdir) if e["event"] == "layers"}
    return workdir, cfg, layers


def by_layer(flat: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """Flat params ("h.0.attn.q_attn.kernel", "wte.weight") by layer: "h.<i>" for a block's, else the first name."""
    layers = {}
    for name, value in flat.items():
        parts = name.split(".")
        layers.setdefault(".".join(parts[:2]) if parts[0] == "h" else parts[0], []).append(value)
    return layers


def norms(flat: dict[str, np.ndarray]) -> dict[str, float]:
    """Each layer's L2 norm, summed in float64."""
    squares = {layer: sum(np.sum(np.square(v, dtype=np.float64)) for v in vs) for layer, vs in by_layer(flat).items()}
    return {layer: float(np.sqrt(s)) for layer, s in squares.items()}


def pd(d: dict[str, float]) -> list[float]:
    """Values in name order, so that two dicts compare as arrays."""
    return [d[name] for name in sorted(d)]


def logged(event: dict, stat: str) -> dict[str, float]:
    prefix = f"layers/{stat}/"
    return {k[len(prefix) :]: v for k, v in event.items() if k.startswith(prefix)}


def checkpoint_params(workdir: str, at: int) -> dict[str, np.ndarray]:
    model, _ = checkpoint.load(workdir, step=at)
    return flat_params(nnx.state(model, nnx.Param))


def test_statistics_come_on_their_own_cadence_with_every_block_and_top_level_weight(stats_run):
    workdir, _, layers = stats_run
    events = [(e["event"], e["step"]) for e in read_metrics(workdir)]
    assert events == [("layers", 3), ("eval", 3), ("train", 4), ("layers", 6), ("train", 6), ("eval", 6)]
    names = {"h.0", "h.1", "wte", "lm_head_norm"}  # tiny: 2 blocks, tied embeddings, rotary positions
    for event in layers.values():
        for stat in ("param_norm", "grad_norm", "update_norm", "update_ratio"):
            assert set(logged(event, stat)) == names, stat
        assert set(logged(event, "act_rms")) == {"h.0", "h.1"}


@pytest.mark.parametrize("k", [3, 6])
def test_parameter_and_update_norms_are_those_of_two_consecutive_checkpoints(stats_run, k):
    """Step k's statistics describe update k: the params it gave (checkpoint k) and what it changed (checkpoint k
    minus checkpoint k - 1; the step takes the norm of the update it added, equal up to float32 rounding)."""
    workdir, _, layers = stats_run
    before, after = checkpoint_params(workdir, k - 1), checkpoint_params(workdir, k)
    param_norm = norms(after)
    update_norm = norms({name: after[name] - before[name] for name in before})
    np.testing.assert_allclose(pd(logged(layers[k], "param_norm")), pd(param_norm), rtol=RTOL)
    # p + u rounds each entry by at most half an ulp of the new value (the subtraction back is exact): the norm of
    # those half ulps bounds how far ||checkpoint k - checkpoint k-1|| is from the norm of the update u itself
    rounding = norms({name: np.spacing(value) / 2 for name, value in after.items()})
    slack = np.array(pd(rounding)) + RTOL * np.array(pd(update_norm))
    np.testing.assert_array_less(np.abs(np.array(pd(logged(layers[k], "update_norm"))) - pd(update_norm)), slack)
    ratio = {name: update_norm[name] / param_norm[name] for name in param_norm}
    ratio_slack = slack / pd(param_norm) + RTOL * np.array(pd(ratio))
    np.testing.assert_array_less(np.abs(np.array(pd(logged(layers[k], "update_ratio"))) - pd(ratio)), ratio_slack)
    assert all(v > 0 for v in update_norm.values())  # every layer moved: the comparison is not of zeros


def test_gradient_norms_and_activation_rms_are_those_of_the_step_by_hand(stats_run):
    """Step 3 again, by hand on one device: jax.grad of the mean cross-entropy of its batch at checkpoint 2, and the
    RMS of each block's output; the layers' gradient norms add up (in squares) to the step's grad_norm."""
    workdir, cfg, layers = stats_run
    k = 3
    r = setup(cfg, workdir, stop_after=None)
    one = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    batches = pipeline.train_batches(
        r.train_src,
        global_batch_size=r.plan.global_batch,
        seed=r.config.data.seed,
        sharding=sharding.batch_sharding(one),
        start_step=k - 1,
        prefetch=0,
    )
    batch = next(batches)
    batches.close()
    model, _ = checkpoint.load(workdir, step=k - 1)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p):
        logits_BxTxV = nnx.merge(graphdef, p, rest)(batch["inputs"])
        return optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, batch["targets"]).mean()

    grads = jax.grad(loss)(params)
    np.testing.assert_allclose(pd(logged(layers[k], "grad_norm")), pd(norms(flat_params(grads))), rtol=1e-4)

    x_BxTxD = model.embed(batch["inputs"])
    rope = rope_at(jnp.arange(x_BxTxD.shape[1]), model.cfg.head_dim, model.cfg.rope_base)
    rms = {}
    for i, block in enumerate(model.h):
        x_BxTxD, _ = block(x_BxTxD, rope)
        rms[f"h.{i}"] = float(jnp.sqrt(jnp.mean(jnp.square(x_BxTxD))))
    np.testing.assert_allclose(pd(logged(layers[k], "act_rms")), pd(rms), rtol=1e-4)

    (train_6,) = [e for e in read_metrics(workdir) if e["event"] == "train" and e["step"] == 6]
    total = np.sqrt(sum(v**2 for v in logged(layers[6], "grad_norm").values()))
    np.testing.assert_allclose(total, train_6["grad_norm"], rtol=RTOL)


MODEL = ModelConfig(vocab_size=256, n_layer=2, n_head_q=4, n_head_kv=2, n_embd=32, ffn_hidden=128, seq_len=16)
OPTIM = OptimConfig(lr=1e-2, warmup_steps=0)
STEP = StepConfig(MODEL, OPTIM, num_steps=100, compute_dtype="float32")


def _batch(mesh):
    tokens = np.random.default_rng(0).integers(0, 256, (8, 17)).astype(np.int32)
    put = lambda x: jax.device_put(x, sharding.batch_sharding(mesh))  # noqa: E731
    return {"inputs": put(tokens[:, :-1]), "targets": put(tokens[:, 1:])}


def test_off_the_train_step_is_the_plain_one(monkeypatch):
    """train.layer_stats_every=0 builds only the step it built before the knob existed (make_train_step(layout)),
    whose HLO holds nothing of the statistics; the measuring step is another program."""
    mesh = sharding.make_mesh(1, -1, 1)
    layout = StateLayout.build(STEP, mesh)
    batch = _batch(mesh)
    hlo = lambda **kw: step.make_train_step(layout, **kw).lower(layout.abstract, batch).as_text()  # noqa: E731
    assert hlo() == hlo(layer_stats=False) != hlo(layer_stats=True)

    made = []
    make = step.make_train_step
    monkeypatch.setattr(step, "make_train_step", lambda *a, **kw: made.append((a, kw)) or make(*a, **kw))
    step_for = loop.train_steps(layout, 0, Goodput(None, 0, 0))
    assert made == [((layout,), {})]
    assert len({step_for(done) for done in range(1, 10)}) == 1
    made.clear()
    step_for = loop.train_steps(layout, 3, Goodput(None, 0, 0))
    assert made == [((layout,), {}), ((layout,), {"layer_stats": True})]
    assert [step_for(d) is step_for(3) for d in range(1, 7)] == [False, False, True, False, False, True]


@pytest.mark.parametrize("accum, mask_ids", [(1, None), (2, None), (2, (5, 7))], ids=["plain", "accum", "masked"])
def test_the_measuring_step_trains_exactly_as_the_plain_step(accum, mask_ids):
    mesh = sharding.make_mesh(1, -1, 1)
    layout = StateLayout.build(dataclasses.replace(STEP, grad_accum=accum, loss_mask_ids=mask_ids), mesh)
    batch = _batch(mesh)
    plain_state, plain = step.make_train_step(layout)(layout.init(0), batch)
    state, measured = step.make_train_step(layout, layer_stats=True)(layout.init(0), batch)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(plain_state)):
        np.testing.assert_array_equal(a, b)
    assert {k: v for k, v in measured.items() if not k.startswith(layer_stats.PREFIX)} == plain
    assert len(measured) == len(plain) + 4 * 4 + 2  # 4 stats of wte, h.0, h.1, lm_head_norm; 2 blocks' RMS


def test_the_heat_maps_hold_the_logged_values(stats_run, tmp_path):
    workdir, _, layers = stats_run
    run = plots.read_run(workdir, "stats")
    fig = plots.layers_figure(run)
    for ax, stat in zip(fig.axes, plots.LAYER_STATS):
        steps, names, values_LxS = plots.layer_grid(run, stat)
        assert steps == [3, 6]
        assert names == (["h.0", "h.1"] if stat == "act_rms" else ["wte", "h.0", "h.1", "lm_head_norm"])
        expected = [[layers[s][f"layers/{stat}/{name}"] for s in steps] for name in names]
        np.testing.assert_array_equal(values_LxS, expected)
        (cells,) = ax.collections
        np.testing.assert_array_equal(np.asarray(cells.get_array()).reshape(values_LxS.shape), expected)
    out = subprocess.run(
        [sys.executable, "tools/plot_metrics.py", workdir, "--layers", "--out", str(tmp_path / "l.png")],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 0 and out.stdout.strip() == f"wrote {tmp_path / 'l.png'}", out.stderr
    with open(tmp_path / "l.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_a_negative_cadence_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^train.layer_stats_every=-1 must be an int >= 0 \(0: off\)$"):
        TrainConfig(layer_stats_every=-1)
