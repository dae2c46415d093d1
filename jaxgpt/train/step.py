"""The sharded train and eval steps: pure functions of (state, batch), jitted once with explicit shardings.

Mixed precision: params and optimizer state float32, matmuls in the compute dtype, logits and loss float32.
The global batch [G, T] is split into grad_accum micro batches that lax.scan visits; each device only ever reads
its own rows (see `_split_micro`). Both steps take the run's one StateLayout (state.py) for their shardings.
"""

import functools
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxgpt.data.sft import loss_mask
from jaxgpt.model.loss import lm_loss, token_losses
from jaxgpt.sharding import batch_sharding, constrain, logical_spec
from jaxgpt.train import layer_stats as stats
from jaxgpt.train.optim import lr_schedule, make_optimizer
from jaxgpt.train.state import StateLayout, TrainState


def _hidden(layout: StateLayout, params, inputs_BxT, dropout_key, block_ms=None) -> tuple[jax.Array, jax.Array]:
    """Final hidden states [B, T, D] (compute dtype) and the float32 vocab projection [V, D]; block_ms: a list for
    each block's output mean square (GPT.layers), or None."""
    model = layout.model(params)
    rngs = None if dropout_key is None else nnx.Rngs(dropout=dropout_key)
    h_BxTxD = model.hidden(inputs_BxT, deterministic=dropout_key is None, rngs=rngs, block_ms=block_ms)
    return h_BxTxD, model.head_weight()


def _split_micro(x_GxT: jax.Array, accum: int) -> jax.Array:
    """[G, T] -> [A, G/A, T] with micro batch a = rows a, a+A, a+2A, ...: a device's block of rows stays its own."""
    G, T = x_GxT.shape
    x_AxMxT = x_GxT.reshape(G // accum, accum, T).swapaxes(0, 1)  # [G, T] -> [G/A, A, T] -> [A, G/A, T]
    return constrain(x_AxMxT, None, "batch", "seq")


# XLA's CPU backend runs matmuls through YNNPACK and by default also pulls the elementwise ops and reductions next
# to a dot into the same YNNPACK call. Those fused calls ran slower than XLA's own loops, worst for the exp-sum over
# the logits in the fused loss. "Individual dots" keeps YNNPACK for the matmuls alone (BENCHMARKS.md, "Choices").
_CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


@functools.cache
def compiler_options(platform: str) -> dict | None:
    """XLA compile options for steps on devices of this platform; None keeps XLA's defaults (GPU, TPU)."""
    if platform != "cpu":
        return None
    cpu = jax.devices("cpu")[0]
    try:  # the option is experimental: an XLA without it must not stop training, only slow it down
        probe = jax.jit(lambda x: x @ x, compiler_options=_CPU_COMPILER_OPTIONS)
        probe.lower(jax.device_put(jnp.ones((8, 8)), cpu)).compile()
    except jax.errors.JaxRuntimeError as e:
        warnings.warn(
            f"XLA rejected the CPU compile options {_CPU_COMPILER_OPTIONS}, keeping its defaults: {e}", stacklevel=2
        )
        return None
    return dict(_CPU_COMPILER_OPTIONS)


def _loss_weights(cfg, targets_GxT: jax.Array) -> tuple[jax.Array | None, jax.Array | None]:
    """(weights [G, T], count): with loss masks, each counted target's weight 1 / count, the count of the whole global
    batch, so that any split into devices or micro batches sums to the same mean; (None, None) without masks."""
    if cfg.loss_mask_ids is None:
        return None, None
    mask_GxT = loss_mask(targets_GxT, *cfg.loss_mask_ids)
    count = jnp.sum(mask_GxT, dtype=jnp.float32)
    return mask_GxT / jnp.maximum(count, 1.0), count


def make_train_step(
    layout: StateLayout, layer_stats: bool = False
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """(state, {"inputs", "targets": int32[G, T]}) -> (new state, {"loss", "grad_norm", "lr"}); donates the state.
    With loss masks (cfg.loss_mask_ids) the loss is the mean over the counted targets, the metrics add
    "tokens_counted", and a batch without any counted target changes nothing but the step (loss 0, no update).
    layer_stats: the metrics add the per-layer statistics "layers/..." (layer_stats.py), for the steps of
    train.layer_stats_every; without it nothing of them is traced, so the plain step compiles as if they did not
    exist."""
    cfg, mesh = layout.cfg, layout.mesh
    tx = make_optimizer(cfg.optim, cfg.num_steps)
    schedule = lr_schedule(cfg.optim, cfg.num_steps)
    accum = cfg.grad_accum
    use_dropout = cfg.model.dropout > 0.0
    masked = cfg.loss_mask_ids is not None

    def loss_fn(params, inputs_BxT, targets_BxT, weights_BxT, key):
        block_ms = [] if layer_stats else None  # the forward pass appends each block's output mean square
        h_BxTxD, w_VxD = _hidden(layout, params, inputs_BxT, key, block_ms)
        loss, ce = lm_loss(h_BxTxD, w_VxD, targets_BxT, cfg.z_loss, cfg.loss_chunks, weights_BxT)
        return loss, (ce, jnp.stack(block_ms) if layer_stats else ())  # () adds no leaf: the plain step's carry

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            G = batch["inputs"].shape[0]
            if G % accum:
                raise ValueError(f"global batch {G} is not a multiple of train.grad_accum={accum}")
            weights_GxT, count = _loss_weights(cfg, batch["targets"])
            inputs_AxMxT = _split_micro(batch["inputs"], accum)
            targets_AxMxT = _split_micro(batch["targets"], accum)
            weights_AxMxT = None if weights_GxT is None else _split_micro(weights_GxT, accum)
            step_key = jax.random.fold_in(state.rng, state.step)

            def micro(carry, xs):
                grads_sum, ce_sum, ms_sum = carry
                index, inputs_MxT, targets_MxT, weights_MxT = xs
                key = jax.random.fold_in(step_key, index) if use_dropout else None
                loss_and_grads = jax.value_and_grad(loss_fn, has_aux=True)
                (_, (ce, ms)), grads = loss_and_grads(state.params, inputs_MxT, targets_MxT, weights_MxT, key)
                return (jax.tree.map(jnp.add, grads_sum, grads), ce_sum + ce, jax.tree.map(jnp.add, ms_sum, ms)), None

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            ms_zeros = jnp.zeros((cfg.model.n_layer,), jnp.float32) if layer_stats else ()
            xs = (jnp.arange(accum), inputs_AxMxT, targets_AxMxT, weights_AxMxT)
            (grads_sum, ce_sum, ms_sum), _ = jax.lax.scan(micro, (zeros, jnp.zeros((), jnp.float32), ms_zeros), xs)
            # equal-size micro batches: the mean of their means is the mean over the whole batch; with weights the
            # micro batches' weighted sums already add up to the batch's mean
            norm = 1 if masked else accum
            grads = jax.tree.map(lambda g: g / norm, grads_sum)
            grad_norm = optax.tree.norm(grads)
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            if masked:  # nothing to learn from: keep the params and the optimizer's moments (weight decay too)
                keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(count > 0, n, o), new, old)  # noqa: E731
                params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
            new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
            metrics = {"loss": ce_sum / norm, "grad_norm": grad_norm, "lr": schedule(state.step)}
            if masked:
                metrics["tokens_counted"] = count
            if layer_stats:  # equal-size micro batches: the mean of their mean squares is the batch's
                applied = jax.tree.map(lambda u: jnp.where(count > 0, u, 0.0), updates) if masked else updates
                metrics |= stats.layer_stats(params, grads, applied, ms_sum / accum)
        return new_state, metrics

    state_sh = layout.shardings
    batch_sh = {"inputs": batch_sharding(mesh), "targets": batch_sharding(mesh)}
    scalar = jax.sharding.NamedSharding(mesh, logical_spec())
    return jax.jit(
        step,
        in_shardings=(state_sh, batch_sh),
        out_shardings=(state_sh, scalar),  # every metric: a replicated scalar
        donate_argnums=0,
        compiler_options=compiler_options(layout.platform),
    )


def make_eval_step(layout: StateLayout) -> Callable[[nnx.State, dict], dict]:
    """(params, {"inputs", "targets": int32[G, T], "mask": float32[G, T]}) -> {"loss_sum", "num_tokens"}."""
    cfg, mesh = layout.cfg, layout.mesh

    def eval_step(params: nnx.State, batch: dict) -> dict:
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            h_GxTxD, w_VxD = _hidden(layout, params, batch["inputs"], None)
            ce_GxT, _ = token_losses(h_GxTxD, w_VxD, batch["targets"], cfg.loss_chunks)
            mask_GxT = batch["mask"].astype(jnp.float32)
            if cfg.loss_mask_ids is not None:  # the same targets as training counts
                mask_GxT = mask_GxT * loss_mask(batch["targets"], *cfg.loss_mask_ids)
            return {"loss_sum": jnp.sum(ce_GxT * mask_GxT), "num_tokens": jnp.sum(mask_GxT)}

    params_sh = layout.shardings.params
    tokens = batch_sharding(mesh)
    scalar = jax.sharding.NamedSharding(mesh, logical_spec())
    batch_sh = {"inputs": tokens, "targets": tokens, "mask": tokens}
    out_sh = {"loss_sum": scalar, "num_tokens": scalar}
    return jax.jit(
        eval_step,
        in_shardings=(params_sh, batch_sh),
        out_shardings=out_sh,
        compiler_options=compiler_options(layout.platform),
    )
