"""Every knob once, with one comment each. gpt60m.py and tiny.py override a few of these.

Override any key on the command line: `--config.train.num_steps=100 --config.mesh.fsdp=8`.
The model, the step and the pipeline never see this ConfigDict: the edge turns each section into a frozen dataclass,
whose field defaults are these values (jaxgpt/config.py). A knob added later must default to the old behaviour: then
checkpoints written before it still load and resume, as if they held the default.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    c.model = m = ml_collections.ConfigDict()
    m.vocab_size = 50304  # GPT-2's 50257 rounded up to a multiple of 64 for fast matmuls
    m.n_layer = 10  # transformer blocks
    m.n_head_q = 8  # query heads
    m.n_head_kv = 8  # key/value heads; < n_head_q is grouped-query attention (must divide n_head_q)
    m.n_embd = 512  # model width D; head dim K = n_embd // n_head_q
    m.ffn_hidden = 2048  # MLP hidden size before the SwiGLU rule ceil(int(2*F/3)/256)*256 (GELU uses it as is)
    m.mlp = "swiglu"  # "swiglu" | "gelu"
    m.pos_emb = "rope"  # "rope" (NeoX rotate-half) | "learned" | "none"
    m.rope_base = 10000.0  # rotary base frequency
    m.norm = "layer"  # "layer" (LayerNorm with bias) | "layer_no_bias" | "rms" (RMSNorm: a weight, no bias)
    m.norm_eps = 1e-5  # epsilon of every norm
    m.attn = "causal"  # "causal": softmax self-attention, grouped-query when n_head_kv < n_head_q
    m.qk_norm = False  # normalise q and k per head before attention
    m.use_bias = False  # biases on the linear layers
    m.tie_embeddings = True  # lm_head reuses wte
    m.dropout = 0.0  # dropout rate on attention output, MLP output and embeddings (0 disables)
    m.init_std = 0.02  # "scaled" init: N(0, std), output projections N(0, std / sqrt(2 * n_layer))

    c.data = d = ml_collections.ConfigDict()
    d.train_path = "data/packed/redpajama_v2_samples_512_train.pbin"  # one .pbin, or several joined by ","
    d.val_path = "data/packed/redpajama_v2_samples_512_test.pbin"  # validation .pbin(s); "" disables evaluation
    d.tokenizer_file = "data/tokenizer/tokenizer.json"  # what the .pbin files were packed with; copied to DIR/ at start
    d.seq_len = 512  # tokens per training sequence S (windows hold S + 1 tokens)
    d.seed = 0  # shuffle seed; the batch order is a pure function of (seed, global batch, window count, step)
    d.prefetch = 2  # global batches prepared ahead of the device

    c.train = t = ml_collections.ConfigDict()
    t.num_steps = ml_collections.FieldReference(None, field_type=int)  # None: one epoch of the training split
    t.micro_batch_size = 8  # sequences per data-parallel replica per micro batch
    t.grad_accum = 1  # micro batches accumulated per optimizer step (lax.scan inside the step)
    t.log_every = 10  # steps between train metric lines
    t.eval_every = 100  # steps between evaluations (also one at the end); train.eval_steps sizes each
    t.eval_batch_size = 0  # sequences per evaluation batch (all hosts); 0: micro_batch_size * data-parallel size
    t.eval_steps = 0  # batches per evaluation; 0: a full pass over the validation split (CPU quick runs cap it)
    t.seed = 0  # model init and dropout seed
    t.init_from = ""  # warm start at step 0: a jaxgpt workdir (PATH or PATH@STEP) or an HF folder; "" = off
    t.compute_dtype = "auto"  # activations/matmuls: "auto" (bf16 on GPU/TPU, float32 on CPU) | "bfloat16" | "float32"
    t.remat = "none"  # "none" | "full" | "dots" (save matmul outputs): jax.checkpoint policy per block
    t.z_loss = 0.0  # weight of the z-loss log(Z)^2 on the logits (0 disables)
    t.loss_chunks = 4  # pieces of the sequence the fused vocab projection + cross-entropy walks (must divide seq_len)
    t.attention = "auto"  # "auto" (cuDNN flash on GPU with bf16 compute, else XLA) | "xla" | "cudnn"
    # FLOP/s of one device for MFU (CPU: of the host); None: the device table (CPU: a matmul timed at start-up)
    t.peak_flops = ml_collections.FieldReference(None, field_type=float)

    c.optim = o = ml_collections.ConfigDict()
    o.lr = 3e-4  # peak learning rate after warmup
    o.min_lr_ratio = 0.1  # cosine decays to lr * min_lr_ratio at the last step
    o.warmup_steps = 100  # lr rises linearly to `lr` at step W (lr * s / W at the s-th step); at most 10% of the run
    o.b1 = 0.9  # AdamW beta1
    o.b2 = 0.95  # AdamW beta2
    o.eps = 1e-8  # AdamW epsilon
    o.weight_decay = 0.1  # decoupled, on linear kernels and an untied lm_head; not on wte, wpe, norms or biases
    o.clip_norm = 1.0  # global gradient-norm clip (0 disables)

    c.mesh = ms = ml_collections.ConfigDict()
    ms.data = 1  # pure data parallel replicas; -1: all devices left over
    ms.fsdp = -1  # shards params and optimizer state, and also splits the batch; -1: all devices left over
    ms.tensor = 1  # splits heads, MLP hidden and vocab

    c.checkpoint = ck = ml_collections.ConfigDict()
    ck.every = 500  # steps between asynchronous saves (also one at the end)
    ck.keep = 3  # most recent checkpoints kept

    c.wandb = w = ml_collections.ConfigDict()
    w.mode = "offline"  # "offline" (files under the workdir) | "online" | "disabled"
    w.project = "jaxgpt"  # W&B project
    w.name = ""  # run name; "" lets W&B choose

    return c


# The keys a resume may change: they decide what is logged or evaluated, when and where, or how the same arrays are
# laid out over the devices, never the numbers the training run computes. Every other key must match the checkpoint.
RESUMABLE = (
    "train.log_every",
    "train.eval_every",
    "train.eval_batch_size",
    "train.eval_steps",
    "data.val_path",
    "train.peak_flops",  # the MFU figure only
    "train.seed",  # initialisation, and the dropout key, which a resume takes from the checkpoint
    "data.prefetch",
    "checkpoint.every",
    "checkpoint.keep",
    "wandb.mode",
    "wandb.project",
    "wandb.name",
    # A checkpoint reshards onto another mesh. The per-replica micro batch follows the mesh; what the step computes is
    # fixed by the global batch (compared in the stream record) and train.grad_accum (compared).
    "mesh.data",
    "mesh.fsdp",
    "mesh.tensor",
    "train.micro_batch_size",
    # The same function with another memory/speed trade-off: only float rounding changes, as it does on a new mesh,
    # and a resume on other hardware may need them (cuDNN attention on GPU only; remat to fit in less memory).
    "train.remat",
    "train.attention",
    "train.loss_chunks",
    # Compared as the stream record's train_files (each file's name and size): the same files moved or copied resume.
    "data.train_path",
    # Its bytes are compared with DIR/tokenizer.json, the copy the run made at its start: a moved copy resumes.
    "data.tokenizer_file",
)
