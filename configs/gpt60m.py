"""The getting-started model: Modalities' GPT2LLM at 59,855,872 parameters, trained on 512-token windows.

Load by path: `python -m jaxgpt.train --config=configs/gpt60m.py`.
"""

import pathlib
import runpy

# By path, not `from configs import base`: config_flags loads this file without the repo on sys.path.
_base_config = runpy.run_path(str(pathlib.Path(__file__).with_name("base.py")))["get_config"]


def get_config():
    c = _base_config()

    c.model.vocab_size = 50304  # GPT-2's 50257 padded to a multiple of 64
    c.model.n_layer = 10
    c.model.n_embd = 512
    c.model.n_head_q = 8  # head dim 512 / 8 = 64
    c.model.n_head_kv = 8  # full multi-head attention
    c.model.ffn_hidden = 2048  # 4 * 512; SwiGLU hidden ceil(int(2 * 2048 / 3) / 256) * 256 = 1536
    c.model.mlp = "swiglu"
    c.model.pos_emb = "rope"
    c.model.norm = "layer"
    c.model.norm_eps = 1e-5
    c.model.use_bias = False
    c.model.tie_embeddings = True
    # params: wte 50304*512 = 25,755,648 + 10 blocks * (4*512*512 + 3*512*1536 + 2*2*512 = 3,409,920)
    #   + final LayerNorm 1,024 = 59,855,872

    c.data.seq_len = 512

    c.train.micro_batch_size = 8  # 8 seqs * 512 tokens * 8 GPUs = 32,768 tokens/step
    c.train.grad_accum = 1
    c.train.compute_dtype = "auto"  # bfloat16 on GPUs; float32 on CPUs, which have no fast bfloat16 matmuls
    c.train.remat = "none"

    c.optim.lr = 3e-4
    c.optim.min_lr_ratio = 0.1  # cosine to 3e-5
    c.optim.warmup_steps = 100
    c.optim.b1 = 0.9
    c.optim.b2 = 0.95
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.1  # on linear kernels only; not on wte, norms
    c.optim.clip_norm = 1.0

    c.mesh.data = 1
    c.mesh.fsdp = -1  # all devices: 8 GPUs shard params and optimizer state 8 ways
    c.mesh.tensor = 1
    return c
