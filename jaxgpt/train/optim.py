"""AdamW with global-norm clipping, a decay mask, and linear warmup then cosine decay."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax

from jaxgpt.errors import ConfigError, check_int
from jaxgpt.knobs import Section


@dataclasses.dataclass(frozen=True)
class OptimConfig(Section):
    SECTION = "optim"

    lr: float = 3e-4  # peak learning rate after warmup
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at the last step
    warmup_steps: int = 100  # lr rises linearly to `lr` at step W (lr * s / W at the s-th step); at most 10% of the run
    b1: float = 0.9  # AdamW beta1
    b2: float = 0.95  # AdamW beta2
    eps: float = 1e-8  # AdamW epsilon
    weight_decay: float = 0.1  # decoupled, on linear kernels and an untied lm_head; not on wte, wpe, norms or biases
    clip_norm: float = 1.0  # global gradient-norm clip (0 disables)

    def __post_init__(self):
        check_int("optim.warmup_steps", self.warmup_steps, minimum=0)
        rules = {
            "lr": ("> 0", self.lr > 0),
            "min_lr_ratio": ("in [0, 1]", 0 <= self.min_lr_ratio <= 1),
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
    getting-started run) must not spend itself warming up. train.py prints the value used."""
    return min(cfg.warmup_steps, num_steps // 10)


def lr_schedule(cfg: OptimConfig, num_steps: int) -> optax.Schedule:
    """Step s (0-based): lr * (s + 1) / W for s < W, then cosine from lr to lr * min_lr_ratio at step num_steps - 1.

    num_steps >= 1, as StepConfig checks."""
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
