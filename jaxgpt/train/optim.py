"""AdamW with global-norm clipping, a decay mask, and the lr schedule: linear warmup, then cosine (the default), wsd
(warmup, stable, decay: extendable), linear or constant."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax

from jaxgpt.errors import ConfigError, check_int
from jaxgpt.knobs import Section

SCHEDULES = ("cosine", "wsd", "linear", "constant")  # optim.schedule
DECAY_SHAPES = ("linear", "1-sqrt")  # optim.decay_shape (wsd)


@dataclasses.dataclass(frozen=True)
class OptimConfig(Section):
    SECTION = "optim"

    lr: float = 3e-4  # peak learning rate after warmup
    min_lr_ratio: float = 0.1  # every decay (cosine, linear, wsd) ends at lr * min_lr_ratio at the last step
    # lr rises linearly to `lr` at step W (lr * s / W at the s-th step); at most 10% of the run (num_steps // 10),
    # except under wsd, whose warmup must not depend on train.num_steps (it must then end before the decay starts)
    warmup_steps: int = 100
    # After the warmup: "cosine" or "linear" decay to lr * min_lr_ratio at the last step | "constant" at lr | "wsd"
    # (warmup-stable-decay): at lr, then a decay to lr * min_lr_ratio over the last optim.decay_fraction of the run;
    # a wsd run resumed in its stable phase may change train.num_steps, and equals bit for bit a run started with it
    schedule: str = "cosine"
    # wsd: the decay spans the last max(1, round(decay_fraction * num_steps)) steps; in (0, 1]
    decay_fraction: float = 0.2
    # wsd: the i-th of the D decay steps is a fraction p ("linear") or sqrt(p) ("1-sqrt", Hägele et al. 2024) of the
    # way from lr down to lr * min_lr_ratio, p = i / D: below lr from the first decay step, at the floor on the last
    decay_shape: str = "linear"
    b1: float = 0.9  # AdamW beta1
    b2: float = 0.95  # AdamW beta2
    eps: float = 1e-8  # AdamW epsilon
    weight_decay: float = 0.1  # decoupled, on linear kernels and an untied lm_head; not on wte, wpe, norms or biases
    clip_norm: float = 1.0  # global gradient-norm clip (0 disables)

    def __post_init__(self):
        check_int("optim.warmup_steps", self.warmup_steps, minimum=0)
        for name, known in (("schedule", SCHEDULES), ("decay_shape", DECAY_SHAPES)):
            if getattr(self, name) not in known:
                raise ConfigError(f"optim.{name}={getattr(self, name)!r} must be one of {known}")
        rules = {
            "lr": ("> 0", self.lr > 0),
            "min_lr_ratio": ("in [0, 1]", 0 <= self.min_lr_ratio <= 1),
            "decay_fraction": ("in (0, 1]", 0 < self.decay_fraction <= 1),
            "b1": ("in [0, 1)", 0 <= self.b1 < 1),
            "b2": ("in [0, 1)", 0 <= self.b2 < 1),
            "eps": ("> 0", self.eps > 0),
            "weight_decay": (">= 0", self.weight_decay >= 0),
            "clip_norm": (">= 0 (0 disables)", self.clip_norm >= 0),
        }
        for name, (rule, holds) in rules.items():
            if not holds:
                raise ConfigError(f"optim.{name}={getattr(self, name)!r} must be {rule}")


def warmup_steps(cfg: OptimConfig, num_steps: int) -> int:
    """optim.warmup_steps, but at most 10% of the run (num_steps // 10): a short run (a smoke test, the 24-step
    getting-started run) must not spend itself warming up. Not under wsd: its steps before the decay must not depend
    on num_steps, so that the run can be extended (check_schedule then asks that the warmup fits)."""
    if cfg.schedule == "wsd":
        return cfg.warmup_steps
    return min(cfg.warmup_steps, num_steps // 10)


@dataclasses.dataclass(frozen=True)
class Phases:
    """Where a schedule's phases fall, in the steps metrics.jsonl and the banner count: step k (1-based) applies the
    lr at count k - 1, so steps 1..warmup warm up, and the decay's formula gives the lr from step decay_start on."""

    warmup: int  # steps 1..warmup rise to lr
    stable_end: int  # the last step before the decay (== warmup: no stable phase; == num_steps: no decay)
    num_steps: int  # the last step, at lr * min_lr_ratio after any decay

    @property
    def decay_start(self) -> int:
        return self.stable_end + 1


def phases(cfg: OptimConfig, num_steps: int) -> Phases:
    warm = warmup_steps(cfg, num_steps)
    if cfg.schedule == "wsd":
        return Phases(warm, num_steps - max(1, round(cfg.decay_fraction * num_steps)), num_steps)
    return Phases(warm, num_steps if cfg.schedule == "constant" else warm, num_steps)


def check_schedule(cfg: OptimConfig, num_steps: int) -> None:
    """A wsd warmup that ends before the decay starts (the other schedules cap theirs, so any num_steps fits)."""
    p = phases(cfg, num_steps)
    if p.warmup > p.stable_end:
        raise ConfigError(
            f"optim.warmup_steps={cfg.warmup_steps} does not fit train.num_steps={num_steps} under optim.schedule="
            f"'wsd': its decay takes the last {num_steps - p.stable_end} steps (optim.decay_fraction="
            f"{cfg.decay_fraction}), so the warmup must end by step {p.stable_end}; wsd never caps it, so that the run"
            " stays extendable"
        )


def lr_schedule(cfg: OptimConfig, num_steps: int) -> optax.Schedule:
    """optim.schedule at count s (0-based; step s + 1 applies it): lr * (s + 1) / W for s < W, then the schedule's
    shape (Phases). num_steps >= 1, as StepConfig checks; the cosine is jaxgpt's first schedule, computed as it always
    was (checkpoints of cosine runs resume bit for bit)."""
    if cfg.schedule == "cosine":
        return _cosine(cfg, num_steps)
    p = phases(cfg, num_steps)
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio

    def warmup(count):
        return peak * (jnp.asarray(count, jnp.float32) + 1.0) / max(p.warmup, 1)

    if cfg.schedule == "constant":
        return optax.join_schedules([warmup, optax.constant_schedule(peak)], [p.warmup])
    if cfg.schedule == "linear":  # as the cosine: lr at count W, the floor at the last count
        decay = optax.linear_schedule(peak, floor, max(1, num_steps - 1 - p.warmup))
        return optax.join_schedules([warmup, decay], [p.warmup])
    decay = _wsd_decay(cfg.decay_shape, peak, floor, num_steps - p.stable_end)
    return optax.join_schedules([warmup, optax.constant_schedule(peak), decay], [p.warmup, p.stable_end])


def _wsd_decay(shape: str, peak: float, floor: float, length: int) -> optax.Schedule:
    """Count t (0-based) of a decay of `length` steps: progress (t + 1) / length, so that each decay step is below
    the peak and the last one is at the floor."""
    if shape == "linear":
        linear = optax.linear_schedule(peak, floor, length)
        return lambda t: linear(t + 1)

    def one_minus_sqrt(t):
        progress = jnp.clip((jnp.asarray(t, jnp.float32) + 1.0) / length, 0.0, 1.0)
        return floor + (peak - floor) * (1.0 - jnp.sqrt(progress))

    return one_minus_sqrt


def _cosine(cfg: OptimConfig, num_steps: int) -> optax.Schedule:
    """Step s (0-based): lr * (s + 1) / W for s < W, then cosine from lr to lr * min_lr_ratio at step num_steps - 1."""
    warm = warmup_steps(cfg, num_steps)
    decay = max(1, num_steps - 1 - warm)
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm_lr = peak * (step + 1.0) / max(warm, 1)
        progress = jnp.clip((step - warm) / decay, 0.0, 1.0)
        cos_lr = floor + (peak - floor) * 0.5 * (1.0 + jnp.cos(math.pi * progress))
        return jnp.where(step < warm, warm_lr, cos_lr)

    return schedule


def extension_refusal(cfg: OptimConfig, old_steps: int, new_steps: int, step: int) -> str | None:
    """Why a run at `step` (steps done) of `old_steps` cannot go on exactly as a run of `new_steps`; None when it can:
    the lr of steps 1..step must not change, which holds for wsd's warmup and stable phase alone."""
    if old_steps == new_steps:
        return None
    if cfg.schedule != "wsd":
        return (
            f"optim.schedule={cfg.schedule!r} spans the whole run, so train.num_steps sets the lr of every step; only"
            " 'wsd' extends, from its stable phase"
        )
    old, new = phases(cfg, old_steps), phases(cfg, new_steps)
    if step > old.stable_end:
        return (
            f"step {step} is past the stable phase, the decay began at step {old.decay_start}; branch from an earlier"
            " step (train.branch_from=DIR@STEP) into a new --workdir"
        )
    if step > new.stable_end:
        return f"a {new_steps}-step run decays from step {new.decay_start} on, and {step} steps are done"
    return None


def describe(cfg: OptimConfig, num_steps: int) -> str:
    """The banner's line on the schedule: its phases in steps."""
    p, floor = phases(cfg, num_steps), cfg.lr * cfg.min_lr_ratio
    capped = f" (optim.warmup_steps={cfg.warmup_steps}, capped at 10% of the {num_steps}-step run)"
    parts = [f"lr: {cfg.schedule}", f"warmup: {p.warmup} steps" + (capped if p.warmup < cfg.warmup_steps else "")]
    if p.stable_end > p.warmup:
        parts.append(
            f"{'stable' if cfg.schedule == 'wsd' else 'constant'} at {cfg.lr:g}: steps {p.warmup + 1}-{p.stable_end}"
        )
    if p.stable_end < num_steps:
        shape = f"{cfg.decay_shape} decay" if cfg.schedule == "wsd" else "decay"
        parts.append(f"{shape}: steps {p.decay_start}-{num_steps}, to {floor:g}")
    return " | ".join(parts)


def decay_mask(params):
    """True for linear kernels and an untied lm_head; no decay on wte, wpe, norms (qk-norms too) or biases.

    Modalities' "linear" group differs: it decays everything under .attn and .mlp, biases and qk-norms included.
    Here no bias or norm parameter decays, whichever module holds it."""

    def decays(path, _leaf) -> bool:
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        return "kernel" in names or "lm_head" in names

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(cfg: OptimConfig, num_steps: int) -> optax.GradientTransformation:
    """Clip the global gradient norm (if clip_norm > 0), then AdamW with the schedule and the decay mask."""
    adamw = optax.adamw(
        lr_schedule(cfg, num_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask
    )
    return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), adamw) if cfg.clip_norm > 0 else adamw
