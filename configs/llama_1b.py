"""Llama-3.2-1B's shape on GPT-2's vocabulary: 16 blocks of width 2048, 32 query and 8 key/value heads (grouped-query),
SwiGLU hidden 8192, RMSNorm, rotary with base 500,000, no biases, tied embeddings. Only what differs from the
defaults is set here; data, batch and optimizer are the defaults.

    vocab 50304 (GPT-2's 50257 padded to a multiple of 64; Llama 3's own is 128,256), head dim 2048 / 32 = 64
    SwiGLU hidden ceil(int(2 * 12288 / 3) / 256) * 256 = 8192
    params: wte 50304*2048 = 103,022,592
        + 16 blocks * (2*2048*2048 + 2*2048*512 attention + 3*2048*8192 MLP + 2*2048 RMSNorms = 60,821,504)
        + final RMSNorm 2048 = 1,076,168,704 parameters
    with Llama 3's vocab of 128,256 the same shape is Llama-3.2-1B's 1,235,814,400
    batch: 8 seqs * 2048 tokens * 8 GPUs = 131,072 tokens/step

It exports to Hugging Face's LlamaForCausalLM (`jaxgpt export hf`).
"""

from jaxgpt.config import default_config


def get_config():
    c = default_config()

    c.model.n_layer = 16
    c.model.n_embd = 2048
    c.model.n_head_q = 32  # with the default 8 key/value heads: grouped-query, 4 query heads per kv head
    c.model.ffn_hidden = 12288  # SwiGLU hidden 8192 by the rule above
    c.model.norm = "rms"
    c.model.rope_base = 500000.0

    # Llama 3.2 pretrained at 8192 tokens; 2048 keeps a step's activations at a quarter of 8192's
    c.data.seq_len = 2048
    return c
