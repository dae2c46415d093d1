"""Export to Modalities 0.5.0: a torch.save state dict its GPT2LLM loads strictly, the `gpt2` model config that
builds that GPT2LLM, and a config with which `modalities generate_text` runs on it.

jaxgpt's parameter names are GPT2LLM's module names (jaxgpt/model/gpt.py), so the state dict is "transformer." + the
jaxgpt key, with each kernel [in, out] transposed to a weight [out, in]; this is the layout of an FSDP1 full state
dict, which Modalities' `torch` checkpoint loading reads. Tied embeddings carry both keys (one tensor), and rotary adds
each layer's inv_freq buffer, as GPT2LLM's state dict has them. torch is imported inside `write_folder` only.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from jaxgpt.errors import ExportError
from jaxgpt.interop import hf
from jaxgpt.io import atomic_folder

# GPT2LLMConfig's validator: these must be multiples of 128
_MULTIPLE_OF_128 = ("n_embd", "ffn_hidden", "vocab_size")


def state_dict(params: dict[str, np.ndarray], m) -> dict[str, np.ndarray]:
    """jaxgpt flat params -> GPT2LLM's state dict (numpy, float32), buffers included."""
    out = {}
    for key, value in params.items():
        name = "transformer." + key
        if name.endswith(".kernel"):
            name, value = name[: -len("kernel")] + "weight", value.T
        out[name] = np.ascontiguousarray(value, np.float32)
    if m.tie_embeddings:
        out["transformer.lm_head.weight"] = out["transformer.wte.weight"]
    if m.pos_emb == "rope":  # what jaxgpt's rope_at uses, at GPT2LLM's buffer shape [K / 2]
        inv_freq = 1.0 / m.rope_base ** (np.arange(0, m.head_dim, 2, dtype=np.float32) / m.head_dim)
        for i in range(m.n_layer):
            out[f"transformer.h.{i}.attn.qkv_transforms.0.inv_freq"] = inv_freq.astype(np.float32)
    return out


def _norm(kind: str, dim: int, eps: float) -> dict:
    if kind == "rms":
        return {"norm_type": "pytorch_rms_norm", "config": {"normalized_shape": dim, "eps": eps}}
    return {"norm_type": "layer_norm", "config": {"normalized_shape": dim, "eps": eps, "bias": kind == "layer"}}


def model_config(m) -> dict:
    """The `gpt2` component's config (GPT2LLMConfig) for jaxgpt options `m`."""
    bad = [f"model.{k}={getattr(m, k)}" for k in _MULTIPLE_OF_128 if getattr(m, k) % 128]
    if bad:
        raise ExportError(f"Modalities' GPT2LLM needs multiples of 128, so {', '.join(bad)} cannot export")
    if m.pos_emb == "rope" and m.rope_base != int(m.rope_base):
        raise ExportError(f"model.rope_base={m.rope_base}: Modalities' RotaryTransform takes an integer base_freq")
    if m.pos_emb == "rope":
        rotary = {"n_embd": m.n_embd, "n_head": m.n_head_q, "seq_length_dim": -2, "base_freq": int(m.rope_base)}
        transform = {"type_hint": "RotaryTransform", "config": rotary}
    else:
        transform = {"type_hint": "IdentityTransform", "config": {}}
    attention = {"qkv_transforms": [transform]}
    if m.qk_norm:
        attention["qk_norm_config"] = _norm(m.norm, m.head_dim, m.norm_eps)
    return {
        "sample_key": "input_ids",
        "prediction_key": "logits",
        "poe_type": "ABSOLUTE" if m.pos_emb == "learned" else "NOPE",
        "sequence_length": m.seq_len,
        "vocab_size": m.vocab_size,
        "n_layer": m.n_layer,
        "n_head_q": m.n_head_q,
        "n_head_kv": m.n_head_kv,
        "n_embd": m.n_embd,
        "ffn_hidden": m.ffn_hidden,
        "dropout": m.dropout,
        "bias": m.use_bias,
        "attention_config": attention,
        "attention_implementation": "pytorch_flash",
        "activation_type": m.mlp,
        "attention_norm_config": _norm(m.norm, m.n_embd, m.norm_eps),
        "ffn_norm_config": _norm(m.norm, m.n_embd, m.norm_eps),
        "lm_head_norm_config": _norm(m.norm, m.n_embd, m.norm_eps),
        "use_weight_tying": m.tie_embeddings,
    }


# Modalities resolves this to the folder of the config file it loads, so the exported folder can move. Alone it
# resolves to a Path, which the tokenizer's config refuses: always followed by "/..." here.
FOLDER = "${modalities_env:config_folder_path}"


def text_generation_config(m, *, eod_token: str, prompt: str) -> dict:
    """A `modalities generate_text` config: GPT2LLM from model_config's settings, model.bin through the `torch`
    checkpoint loading in float32 on the CPU, the exported tokenizer; greedy (temperature 0). Its paths are relative to
    its own folder (FOLDER)."""
    return {
        "settings": {
            "referencing_keys": {"sample_key": "input_ids", "prediction_key": "logits"},
            "model_path": f"{FOLDER}/model.bin",
            "device": "cpu",  # or a CUDA device index, e.g. 0
            "sequence_length": m.seq_len,
        },
        "text_inference_component": {
            "component_key": "inference_component",
            "variant_key": "text",
            "config": {
                "device": "${settings.device}",
                "sequence_length": "${settings.sequence_length}",
                "model": {"instance_key": "checkpointed_model", "pass_type": "BY_REFERENCE"},
                "tokenizer": {"instance_key": "tokenizer", "pass_type": "BY_REFERENCE"},
                "eod_token": eod_token,
                "prompt_template": prompt,
                "temperature": 0.0,
            },
        },
        "checkpointed_model": {
            "component_key": "model",
            "variant_key": "fsdp1_checkpointed",
            "config": {
                "checkpoint_loading": {
                    "component_key": "checkpoint_loading",
                    "variant_key": "torch",
                    "config": {"device": "${settings.device}", "precision": "FP32"},
                },
                "model": {"instance_key": "model", "pass_type": "BY_REFERENCE"},
                "checkpoint_path": "${settings.model_path}",
            },
        },
        "model": {"component_key": "model", "variant_key": "gpt2", "config": model_config(m)},
        "tokenizer": {
            "component_key": "tokenizer",
            "variant_key": "pretrained_hf_tokenizer",
            "config": {"pretrained_model_name_or_path": f"{FOLDER}/", "padding": False, "truncation": False},
        },
    }


def write_folder(
    out: str,
    params: dict[str, np.ndarray],
    m,
    *,
    tokenizer_file: str,
    eod_token: str = "<|endoftext|>",
    prompt: str = "Once upon a time",
) -> None:
    """OUT/model.bin, OUT/model_config.yaml, OUT/text_generation.yaml and the tokenizer files, written into a
    temporary folder renamed to `out` when complete."""
    import torch
    import yaml

    model = {"model": {"component_key": "model", "variant_key": "gpt2", "config": model_config(m)}}
    eod, real_vocab = hf.special_ids(tokenizer_file, eod_token)
    if real_vocab > m.vocab_size:
        raise ExportError(f"{tokenizer_file}: {real_vocab} tokens do not fit model.vocab_size={m.vocab_size}")
    generation = text_generation_config(m, eod_token=eod_token, prompt=prompt)
    tensors = {k: torch.from_numpy(v.copy()) for k, v in state_dict(params, m).items()}
    if m.tie_embeddings:  # one tensor under both keys, as a tied GPT2LLM's own state dict holds it
        tensors["transformer.lm_head.weight"] = tensors["transformer.wte.weight"]
    with atomic_folder(out, "--out") as tmp:
        torch.save(tensors, os.path.join(tmp, "model.bin"))
        for name, config in (("model_config.yaml", model), ("text_generation.yaml", generation)):
            with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                yaml.safe_dump(config, f, sort_keys=False)
        hf.write_tokenizer(tmp, tokenizer_file, eod_token, eod, m.seq_len)
        note = hf.document_masking_note(m, eod_token, exported="The exported GPT2LLM has")
        if note:
            warnings.warn(note, stacklevel=2)
            with open(os.path.join(tmp, "README.md"), "w") as f:
                f.write(f"# A jaxgpt export\n\n{note}\n")
