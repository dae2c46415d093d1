"""A tiny GPT for tests and CPU smoke runs: real GPT-2 tokens (the default vocab, 50304), 2 blocks of width 64, float32
so CPU tests are exact. Only what differs from the defaults (jaxgpt/config.py) is set here."""

from jaxgpt.config import default_config


def get_config():
    c = default_config()

    c.model.n_layer = 2
    c.model.n_embd = 64
    c.model.n_head_q = 4  # head dim 64 / 4 = 16
    c.model.n_head_kv = 2  # grouped-query: 2 q heads per kv head
    c.model.ffn_hidden = 256  # SwiGLU hidden ceil(int(2 * 256 / 3) / 256) * 256 = 256
    # params: wte 50304*64 = 3,219,456 + 2 blocks * (2*64*64 + 2*64*32 + 3*64*256 + 2*2*64 = 61,696)
    #   + final LayerNorm 128 = 3,342,976 parameters

    c.data.seq_len = 64

    c.train.micro_batch_size = 2  # 2 seqs * 64 tokens * 8 fake CPU devices = 1,024 tokens/step
    c.train.compute_dtype = "float32"
    c.train.log_every = 1
    c.train.eval_every = 20

    c.optim.lr = 1e-3
    c.optim.warmup_steps = 10

    c.checkpoint.every = 20
    return c
