"""Run Modalities' own GPT2LLM (PyTorch) at jaxgpt's shapes: the reference for tests and benchmarks.

Runs under the Modalities venv's python, not jaxgpt's:
    .bench_cache/modalities-venv/bin/python tools/modalities_gpt2.py SPEC.json
SPEC.json holds {"model": <jaxgpt ModelConfig fields>, "mode": "logits" | "bench", ...}:
  logits: {"weights": W.npz (jaxgpt flat param paths joined by "."), "tokens": X.npy int [B, T], "out": Y.npy}
          loads the jaxgpt weights (plain mapping: "transformer." + path, kernel -> weight transposed) and writes
          float32 logits [B, T, V].
  bench:  {"batch": B, "steps": n, "warmup": w, "threads": t, "optim": {lr, b1, b2, eps, weight_decay, clip_norm},
           "device": "cpu" | "cuda", "autocast": null | "bfloat16"}
          times forward + cross-entropy + backward + clip + AdamW steps on random tokens and prints one JSON line
          {"params": ..., "step_s": ..., "tokens_per_s": ..., "peak_memory_bytes": ...}. On CUDA, parameters and
          AdamW state stay float32 and the forward runs under torch.autocast(bfloat16) when asked: the precision
          Modalities' FSDP mixed-precision setting BF_16 computes in. Steps are queued back to back and the clock
          stops after the last one finishes (no per-step host sync), as in a training loop that logs now and then.
  generate: {"weights": W.npz, "tokens": X.npy int [B, P], "new_tokens": n, "threads": t}
          decodes n greedy tokens the way Modalities' generate_text does (TextInferenceComponent.generate_tokens):
          a full forward over the whole growing sequence for every token, no cache, float32, no_grad; times it
          without the per-token text decoding and prints {"seconds": ..., "tokens_per_s": ..., "ids": [[...]]}.
"""

import json
import sys
import time

import numpy as np
import torch
from modalities.models.components.layer_norms import LayerNormConfig, PytorchRMSLayerNormConfig
from modalities.models.gpt2.gpt2_model import (
    GPT2LLM,
    AttentionConfig,
    AttentionImplementation,
    LayerNorms,
    LayerNormWrapperConfig,
    PositionTypes,
)
from modalities.models.model import ActivationType


def _norm(kind: str, dim: int, eps: float) -> LayerNormWrapperConfig:
    if kind == "layer":
        return LayerNormWrapperConfig(
            norm_type=LayerNorms.layer_norm, config=LayerNormConfig(normalized_shape=dim, eps=eps, bias=True)
        )
    return LayerNormWrapperConfig(
        norm_type=LayerNorms.pytorch_rms_norm, config=PytorchRMSLayerNormConfig(normalized_shape=dim, eps=eps)
    )


def build(m: dict) -> GPT2LLM:
    """GPT2LLM with the architecture of a jaxgpt ModelConfig (as a dict)."""
    head_dim = m["n_embd"] // m["n_head_q"]
    transforms = []
    if m["pos_emb"] == "rope":
        rotary = {"n_embd": m["n_embd"], "n_head": m["n_head_q"], "seq_length_dim": -2}
        rotary["base_freq"] = int(m["rope_base"])
        transforms.append({"type_hint": "RotaryTransform", "config": rotary})
    else:
        transforms.append({"type_hint": "IdentityTransform", "config": {}})
    attention_config = AttentionConfig(
        qkv_transforms=transforms, qk_norm_config=_norm(m["norm"], head_dim, m["norm_eps"]) if m["qk_norm"] else None
    )
    return GPT2LLM(
        sample_key="input_ids",
        prediction_key="logits",
        poe_type=PositionTypes.ABSOLUTE if m["pos_emb"] == "learned" else PositionTypes.NOPE,
        sequence_length=m["seq_len"],
        vocab_size=m["vocab_size"],
        n_layer=m["n_layer"],
        n_head_q=m["n_head_q"],
        n_head_kv=m["n_head_kv"],
        n_embd=m["n_embd"],
        ffn_hidden=m["ffn_hidden"],
        dropout=m["dropout"],
        bias=m["use_bias"],
        activation_type=ActivationType.SWIGLU if m["mlp"] == "swiglu" else ActivationType.GELU,
        attention_implementation=AttentionImplementation.PYTORCH_FLASH,
        attention_config=attention_config,
        attention_norm_config=_norm(m["norm"], m["n_embd"], m["norm_eps"]),
        ffn_norm_config=_norm(m["norm"], m["n_embd"], m["norm_eps"]),
        lm_head_norm_config=_norm(m["norm"], m["n_embd"], m["norm_eps"]),
        use_weight_tying=m["tie_embeddings"],
    )


def load_jaxgpt_weights(model: GPT2LLM, weights: dict[str, np.ndarray], tied: bool) -> None:
    """jaxgpt path "h.0.attn.q_attn.kernel" -> "transformer.h.0.attn.q_attn.weight" (transposed); else same name."""
    state = {}
    for path, value in weights.items():
        name = "transformer." + path
        if name.endswith(".kernel"):
            name, value = name[: -len("kernel")] + "weight", value.T
        state[name] = torch.from_numpy(np.ascontiguousarray(value))
    if tied:
        state["transformer.lm_head.weight"] = state["transformer.wte.weight"]
    expected = set(model.state_dict()) - {name for name, _ in model.named_buffers()}  # rotary inv_freq is computed
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise SystemExit(f"weight names differ: missing {missing}, extra {extra}")
    model.load_state_dict(state, strict=False)


def logits(spec: dict) -> None:
    model = build(spec["model"]).eval()
    weights = dict(np.load(spec["weights"]))
    load_jaxgpt_weights(model, weights, spec["model"]["tie_embeddings"])
    tokens = torch.from_numpy(np.load(spec["tokens"]).astype(np.int64))
    with torch.no_grad():
        out = model(tokens).float().numpy()
    np.save(spec["out"], out)


def bench(spec: dict) -> None:
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    m, o = spec["model"], spec["optim"]
    device = torch.device(spec.get("device", "cpu"))
    autocast_dtype = {None: None, "bfloat16": torch.bfloat16}[spec.get("autocast")]
    model = build(m).to(device)
    decay = [p for n, p in model.named_parameters() if n.endswith(".weight") and (".attn." in n or ".mlp." in n)]
    no_decay = [p for n, p in model.named_parameters() if not any(p is q for q in decay)]
    groups = [{"params": decay, "weight_decay": o["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    fused = {"fused": True} if device.type == "cuda" else {}  # torch's fastest AdamW on GPU
    optimizer = torch.optim.AdamW(groups, lr=o["lr"], betas=(o["b1"], o["b2"]), eps=o["eps"], **fused)
    loss_fn = torch.nn.CrossEntropyLoss()
    B, T, V = spec["batch"], m["seq_len"], m["vocab_size"]
    tokens = torch.randint(0, V, (B, T + 1), device=device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = model(tokens[:, :-1])
            loss = loss_fn(out.reshape(-1, V).float(), tokens[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o["clip_norm"])
        optimizer.step()
        return loss.detach()

    for _ in range(spec["warmup"]):
        step().item()
    start = time.perf_counter()
    for _ in range(spec["steps"]):
        loss = step()
    loss.item()  # waits for the last step
    step_s = (time.perf_counter() - start) / spec["steps"]
    params = sum(p.numel() for p in model.parameters())
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    print(json.dumps({"params": params, "step_s": step_s, "tokens_per_s": B * T / step_s, "peak_memory_bytes": peak}))


def generate(spec: dict) -> None:
    torch.set_num_threads(spec["threads"])
    model = build(spec["model"]).eval()
    load_jaxgpt_weights(model, dict(np.load(spec["weights"])), spec["model"]["tie_embeddings"])
    tokens = torch.from_numpy(np.load(spec["tokens"]).astype(np.int64))
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(spec["new_tokens"]):
            logits = model({"input_ids": tokens})["logits"][:, -1, :]
            tokens = torch.cat([tokens, torch.argmax(logits, dim=-1, keepdim=True)], dim=1)
    seconds = time.perf_counter() - start
    new = tokens[:, -spec["new_tokens"] :].tolist()
    print(json.dumps({"seconds": seconds, "tokens_per_s": tokens.shape[0] * spec["new_tokens"] / seconds, "ids": new}))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    {"logits": logits, "bench": bench, "generate": generate}[spec["mode"]](spec)
