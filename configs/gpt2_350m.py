"""GPT-2 medium (Hugging Face's `gpt2-medium`): 24 blocks of width 1024, 16 heads, otherwise GPT-2 small
(configs/gpt2_124m.py): learned positions, GELU, LayerNorm with bias, linear biases, tied embeddings, 1024-token
context. Only what differs from the defaults is set here; data, batch and optimizer are the defaults.

    vocab 50304 (GPT-2's 50257 padded to a multiple of 64), head dim 1024 / 16 = 64, GELU hidden 4 * 1024 = 4096
    params: wte 50304*1024 = 51,511,296 + wpe 1024*1024 = 1,048,576
        + 24 blocks * (4*1024*1024 + 4*1024 attention + 2*1024*4096 + 4096 + 1024 MLP + 2*2*1024 norms = 12,596,224)
        + final LayerNorm 2*1024 = 354,871,296 parameters
    GPT-2 medium's own count, at vocab 50257: 47 rows * 1024 = 48,128 fewer, 354,823,168
    batch: 8 seqs * 1024 tokens * 8 GPUs = 65,536 tokens/step

It exports to Hugging Face's GPT2LMHeadModel with `gpt2-medium`'s config but for the padded vocab, no dropout and
exact GELU (configs/gpt2_124m.py says why).
"""

from jaxgpt.config import default_config


def get_config():
    c = default_config()

    c.model.n_layer = 24
    c.model.n_embd = 1024
    c.model.n_head_q = 16
    c.model.n_head_kv = 16  # multi-head attention, as GPT-2
    c.model.ffn_hidden = 4096  # GELU uses it as is: 4 * 1024
    c.model.mlp = "gelu"
    c.model.pos_emb = "learned"
    c.model.use_bias = True

    c.data.seq_len = 1024  # GPT-2's context: the learned position table has 1024 rows
    return c
