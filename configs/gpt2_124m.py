"""GPT-2 small (Radford et al. 2019; Hugging Face's `gpt2`): 12 blocks of width 768, 12 heads, learned positions,
GELU, LayerNorm with bias, biases on every linear layer, tied embeddings, 1024-token context. Only what differs from
the defaults (jaxgpt/config.py, jaxgpt/model/config.py) is set here; data, batch and optimizer are the defaults.

    vocab 50304 (GPT-2's 50257 padded to a multiple of 64), head dim 768 / 12 = 64, GELU hidden 4 * 768 = 3072
    params: wte 50304*768 = 38,633,472 + wpe 1024*768 = 786,432
        + 12 blocks * (4*768*768 + 4*768 attention + 2*768*3072 + 3072 + 768 MLP + 2*2*768 LayerNorms = 7,087,872)
        + final LayerNorm 2*768 = 124,475,904 parameters
    GPT-2's own count, at vocab 50257: 47 rows * 768 = 36,096 fewer, 124,439,808
    batch: 8 seqs * 1024 tokens * 8 GPUs = 65,536 tokens/step

It exports to Hugging Face's GPT2LMHeadModel (`jaxgpt export hf`) with `gpt2`'s config but for the padded vocab, no
dropout and exact GELU (activation_function "gelu"; the original weights used the tanh approximation "gelu_new").
"""

from jaxgpt.config import default_config


def get_config():
    c = default_config()

    c.model.n_layer = 12
    c.model.n_embd = 768
    c.model.n_head_q = 12
    c.model.n_head_kv = 12  # multi-head attention, as GPT-2
    c.model.ffn_hidden = 3072  # GELU uses it as is: 4 * 768
    c.model.mlp = "gelu"
    c.model.pos_emb = "learned"
    c.model.use_bias = True

    c.data.seq_len = 1024  # GPT-2's context: the learned position table has 1024 rows
    return c
