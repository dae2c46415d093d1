"""What the model costs: its parameter count, training FLOPs per token, and the peak FLOP/s of the devices it runs on
(for MFU)."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from jaxgpt.model.attention import ATTENTIONS
from jaxgpt.model.config import ModelConfig
from jaxgpt.model.layers import MLPS, NORMS


def count_params(cfg: ModelConfig) -> int:
    """Closed-form parameter count (tied wte/lm_head counted once), from each layer class's own count."""
    D, V = cfg.n_embd, cfg.vocab_size
    norm = NORMS[cfg.norm].num_params(D)
    block = ATTENTIONS[cfg.attn].num_params(cfg) + MLPS[cfg.mlp].num_params(cfg) + 2 * norm
    embeddings = V * D + (cfg.seq_len * D if cfg.pos_emb == "learned" else 0) + (0 if cfg.tie_embeddings else V * D)
    return embeddings + cfg.n_layer * block + norm


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 * N_matmul + 6 * n_layer * seq_len * n_embd.

    6N is forward (2N) plus backward (4N) over the N parameters that multiply every token: all parameters except the
    embedding lookups (wte, wpe are gathers), but with the lm_head's V x D counted (it is wte itself when tied).
    Norms and biases are included (negligible). The second term is causal self-attention: QK^T and AV take
    2 * 2 * T * D forward FLOPs per token per layer without the mask (PaLM, Chowdhery et al. 2022, appendix B:
    6N + 12 L H Q T); the causal mask halves it, so 6 * L * T * D. Same convention as nanoGPT's MFU estimate
    with the causal halving of Chinchilla-style accounting.
    """
    D = cfg.n_embd
    n_matmul = count_params(cfg) - (0 if cfg.tie_embeddings else cfg.vocab_size * D)
    n_matmul -= cfg.seq_len * D if cfg.pos_emb == "learned" else 0
    return 6.0 * n_matmul + 6.0 * cfg.n_layer * seq_len * D


# Dense bf16 peak FLOP/s per chip from vendor datasheets (no sparsity). Matched by substring of device_kind; the
# first match wins, so variants come before the names they contain ("H100 PCIe" before "H100", "L40" before "L4").
_PEAK_FLOPS = (
    ("GH200", 989e12),
    ("H200 NVL", 835e12),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("A10G", 125e12),
    ("L4", 121e12),
    ("TPU v6", 918e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 197e12),  # v5e / v5 lite
    ("TPU v4", 275e12),
)


def peak_flops(device) -> float | None:
    """Dense bf16 peak FLOP/s of one device, by device_kind; None for CPUs and unknown kinds."""
    kind = getattr(device, "device_kind", "")
    if getattr(device, "platform", "") == "cpu":
        return None
    for name, flops in _PEAK_FLOPS:
        if name.lower() in kind.lower():
            return flops
    return None


def total_peak_flops(peak_per_device: float, devices: list) -> float:
    """The peak that MFU divides by: per-device peak x devices, except on CPU, where the (fake) devices are slices of
    one host whose matmul peak was timed with all its cores, so it counts once."""
    return peak_per_device * (1 if devices[0].platform == "cpu" else len(devices))


def measure_matmul_peak(dtype=jnp.float32, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a jitted n x n x n matmul on the default device (best of `repeats`): the CPU stand-in for a peak."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    matmul = jax.jit(lambda a, b: a @ b)
    matmul(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best
