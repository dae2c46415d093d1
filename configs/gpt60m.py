"""The getting-started model: Modalities' GPT2LLM at 59,855,872 parameters, trained on 512-token windows.

jaxgpt's defaults are this model (each knob's meaning is beside its default in jaxgpt/config.py and
jaxgpt/model/config.py), so this file changes nothing; it states the shape and its arithmetic:

    vocab 50304 (GPT-2's 50257 padded to a multiple of 64), 10 blocks of width 512, 8 heads of dim 512 / 8 = 64,
    SwiGLU hidden ceil(int(2 * 2048 / 3) / 256) * 256 = 1536, rotary, LayerNorm, no biases, tied embeddings
    params: wte 50304*512 = 25,755,648 + 10 blocks * (4*512*512 + 3*512*1536 + 2*2*512 = 3,409,920)
        + final LayerNorm 1,024 = 59,855,872 parameters
    batch: 8 seqs * 512 tokens * 8 GPUs = 32,768 tokens/step; fsdp over all devices (-1)
    compute: bfloat16 on GPUs, float32 on CPUs, which have no fast bfloat16 matmuls (train.compute_dtype="auto")
    lr: 3e-4 after 100 warmup steps, cosine to 3e-5

Load by path: `python -m jaxgpt.train --config=configs/gpt60m.py`.
"""

from jaxgpt.config import default_config


def get_config():
    return default_config()
