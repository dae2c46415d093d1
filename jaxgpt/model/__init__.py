"""The model, file by file: config.py (ModelConfig) -> layers.py (linear, embeddings, norms, rotary, MLPs) ->
attention.py (the kernel, chosen once; CPU query blocks; the kv cache's attention; attention layers) -> gpt.py (Block,
GPT with one forward path for training and generation, KVCache) -> loss.py (the vocab projection fused with the
cross-entropy) -> flops.py (parameter count, FLOPs per token, device peaks).

To add a norm, an MLP or an attention variant: one class in layers.py or attention.py and one entry in NORMS, MLPS
or ATTENTIONS; `model.norm`, `model.mlp` or `model.attn` then selects it.
"""

from jaxgpt.model.config import ModelConfig
from jaxgpt.model.flops import count_params, flops_per_token, measure_matmul_peak, peak_flops, total_peak_flops
from jaxgpt.model.gpt import GPT, KVCache

__all__ = [
    "GPT",
    "KVCache",
    "ModelConfig",
    "count_params",
    "flops_per_token",
    "measure_matmul_peak",
    "peak_flops",
    "total_peak_flops",
]
