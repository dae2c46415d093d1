"""jaxgpt <-> Hugging Face transformers: the native class for a model's options, the config and weight mappings in both
directions, and the export folder. numpy and safetensors only: exporting needs neither torch nor transformers.

Legend: D model dim, H query heads, N key/value heads, K head dim, F MLP hidden, V vocab (padded), G = H / N.

Weights travel as flat dicts of numpy arrays. jaxgpt's keys are its parameter paths joined by "." ("h.0.attn.q_attn.
kernel", "wte.weight"); HF's are the state-dict keys of the native class. A jaxgpt kernel [in, out] is an HF weight
[out, in], except in GPT-2, whose Conv1D stores [in, out] as jaxgpt does.

| jaxgpt options                                                        | class                |
|-----------------------------------------------------------------------|----------------------|
| LayerNorm (with or without bias), rotary or none, SwiGLU, no biases   | StableLmForCausalLM  |
| RMSNorm, rotary, SwiGLU, with or without biases                       | LlamaForCausalLM     |
| LayerNorm, rotary, GELU, with or without biases                       | Starcoder2ForCausalLM|
| LayerNorm, learned or no positions, GELU, with or without biases      | GPT2LMHeadModel      |
Any of them tied or untied, MHA or GQA (GPT-2: kv heads repeated); none with qk-norm.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings

import numpy as np

from jaxgpt.errors import ExportError
from jaxgpt.io import atomic_folder

SUPPORTED = (
    "the options that export (qk_norm=False in all): norm layer/layer_no_bias + pos_emb rope/none + mlp swiglu +"
    " use_bias=False (StableLM); norm rms + pos_emb rope + mlp swiglu (Llama); norm layer/layer_no_bias + pos_emb rope"
    " + mlp gelu (Starcoder2); norm layer/layer_no_bias + pos_emb learned/none + mlp gelu (GPT-2)"
)
ARCHITECTURES = {
    "stablelm": "StableLmForCausalLM",
    "llama": "LlamaForCausalLM",
    "starcoder2": "Starcoder2ForCausalLM",
    "gpt2": "GPT2LMHeadModel",
}
DTYPES = ("float32", "bfloat16")  # export_hf.py --dtype


def model_type(m) -> str:
    """The native class (a key of ARCHITECTURES) that computes exactly what a jaxgpt ModelConfig `m` does."""
    layer = m.norm in ("layer", "layer_no_bias")
    if m.qk_norm:
        # StableLM normalises q/k per head before rotary, jaxgpt after (as Modalities does): the logits differ.
        raise ExportError(f"model.qk_norm=True has no exact Hugging Face class; {SUPPORTED}")
    if m.mlp == "swiglu" and m.norm == "rms" and m.pos_emb == "rope":
        return "llama"
    if m.mlp == "swiglu" and layer and m.pos_emb in ("rope", "none") and not m.use_bias:
        return "stablelm"
    if m.mlp == "gelu" and layer and m.pos_emb == "rope":
        return "starcoder2"
    if m.mlp == "gelu" and layer:
        return "gpt2"
    chosen = f"model.norm={m.norm!r}, model.pos_emb={m.pos_emb!r}, model.mlp={m.mlp!r}, model.use_bias={m.use_bias}"
    raise ExportError(f"{chosen} has no exact Hugging Face class; {SUPPORTED}")


# Config
# ------------------------------------------------------------------------------------------------------------------


def hf_config(m, *, bos_id: int, eos_id: int, pad_id: int, dtype: str = "float32") -> dict:
    """config.json of the native class for ModelConfig `m`. The special ids are set explicitly: the classes'
    defaults (GPT-2's 50256 bos/eos and no pad; Llama's 1/2) are wrong for most vocabularies."""
    kind = model_type(m)
    common = {
        "architectures": [ARCHITECTURES[kind]],
        "model_type": kind,
        "vocab_size": m.vocab_size,
        "tie_word_embeddings": m.tie_embeddings,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "initializer_range": m.init_std,
        "use_cache": True,
        "dtype": dtype,
        "torch_dtype": dtype,  # the name before transformers 4.56, which vLLM and older readers look for
    }
    return {**common, **(_gpt2_config(m) if kind == "gpt2" else _rotary_config(m, kind))}


def _gpt2_config(m) -> dict:
    """GPT2Config's fields for options `m`: learned or no positions, exact GELU, no dropout."""
    return {
        "n_embd": m.n_embd,
        "n_layer": m.n_layer,
        "n_head": m.n_head_q,
        "n_inner": m.mlp_hidden,
        "n_positions": m.seq_len,
        "layer_norm_epsilon": m.norm_eps,
        "activation_function": "gelu",
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
    }


def _rotary_config(m, kind: str) -> dict:
    """The fields of the rotary classes (Llama, StableLM, Starcoder2) for options `m`."""
    layers = {
        "hidden_size": m.n_embd,
        "num_hidden_layers": m.n_layer,
        "num_attention_heads": m.n_head_q,
        "num_key_value_heads": m.n_head_kv,
        "intermediate_size": m.mlp_hidden,
        "max_position_embeddings": m.seq_len,
        "rope_theta": m.rope_base,
        "attention_dropout": 0.0,
    }
    if kind == "llama":
        return {
            **layers,
            "rms_norm_eps": m.norm_eps,
            "hidden_act": "silu",
            "attention_bias": m.use_bias,
            "mlp_bias": m.use_bias,
            "head_dim": m.head_dim,
            "pretraining_tp": 1,
            "rope_scaling": None,
        }
    if kind == "stablelm":
        return {
            **layers,
            "layer_norm_eps": m.norm_eps,
            "hidden_act": "silu",
            "use_qkv_bias": False,
            "qk_layernorm": False,
            "use_parallel_residual": False,
            "hidden_dropout": 0.0,
            "rope_scaling": None,
            "partial_rotary_factor": 1.0 if m.pos_emb == "rope" else 0.0,
        }
    return {
        **layers,
        "norm_epsilon": m.norm_eps,
        "hidden_act": "gelu",
        "use_bias": m.use_bias,
        "sliding_window": None,
        "residual_dropout": 0.0,
        "embedding_dropout": 0.0,
        "rope_scaling": None,
    }


def model_options(hf: dict, where: str) -> dict[str, tuple]:
    """The jaxgpt model options an HF config.json fixes: option -> the values that hold it exactly. Where the
    weights decide (a LayerNorm bias or linear biases that are all zero, GPT-2's wpe all zero or its kv heads
    repeated), several values are allowed and `from_hf` checks the weights. "mlp_hidden" is F, which
    model.ffn_hidden gives through the MLP's rule."""
    kind = hf.get("model_type")
    if kind not in ARCHITECTURES:
        raise ExportError(f"{where}: model_type={kind!r} cannot be imported; jaxgpt reads {sorted(ARCHITECTURES)}")
    if kind == "gpt2":
        return _gpt2_options(hf, where)
    D, H = _get(hf, "hidden_size", where), _get(hf, "num_attention_heads", where)
    N = hf.get("num_key_value_heads") or H
    if hf.get("head_dim") not in (None, D // H):
        raise ExportError(f"{where}: head_dim={hf['head_dim']} is not hidden_size / num_attention_heads = {D // H}")
    if hf.get("rope_scaling"):
        raise ExportError(f"{where}: rope_scaling={hf['rope_scaling']!r}: jaxgpt's rotary has no scaling")
    options = {
        "vocab_size": (_get(hf, "vocab_size", where),),
        "n_layer": (_get(hf, "num_hidden_layers", where),),
        "n_embd": (D,),
        "n_head_q": (H,),
        "n_head_kv": (N,),
        "mlp_hidden": (_get(hf, "intermediate_size", where),),
        "rope_base": (float(hf.get("rope_theta", 10000.0)),),
        "attn": ("causal",),
        "qk_norm": (False,),
        "tie_embeddings": (bool(hf.get("tie_word_embeddings", True)),),
        "pos_emb": ("rope",),
    }
    if kind == "llama":
        _expect(hf, where, hidden_act="silu", mlp_bias=hf.get("attention_bias", False), pretraining_tp=1)
        extra = {"norm": ("rms",), "mlp": ("swiglu",), "use_bias": (bool(hf.get("attention_bias", False)),)}
        return {**options, **extra, "norm_eps": (hf.get("rms_norm_eps", 1e-6),)}
    if kind == "stablelm":
        _expect(hf, where, hidden_act="silu", use_qkv_bias=False, qk_layernorm=False, use_parallel_residual=False)
        factor = hf.get("partial_rotary_factor", 0.25)
        if factor not in (0.0, 1.0):
            raise ExportError(f"{where}: partial_rotary_factor={factor}: jaxgpt rotates all of a head (1.0) or none")
        extra = {"norm": ("layer", "layer_no_bias"), "mlp": ("swiglu",), "use_bias": (False,)}
        return {**options, **extra, "pos_emb": ("rope" if factor else "none",), "norm_eps": (hf["layer_norm_eps"],)}
    _expect(hf, where, hidden_act="gelu")  # Starcoder2's default gelu_pytorch_tanh is not jaxgpt's exact GELU
    if hf.get("sliding_window") is not None:
        raise ExportError(f"{where}: sliding_window={hf['sliding_window']}: jaxgpt attends to the whole context")
    extra = {"norm": ("layer", "layer_no_bias"), "mlp": ("gelu",), "use_bias": (bool(hf.get("use_bias", True)),)}
    return {**options, **extra, "norm_eps": (hf.get("norm_epsilon", 1e-5),)}


def _gpt2_options(hf: dict, where: str) -> dict[str, tuple]:
    _expect(hf, where, activation_function="gelu", scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False)
    D, H = _get(hf, "n_embd", where), _get(hf, "n_head", where)
    return {
        "vocab_size": (_get(hf, "vocab_size", where),),
        "n_layer": (_get(hf, "n_layer", where),),
        "n_embd": (D,),
        "n_head_q": (H,),
        "n_head_kv": tuple(n for n in range(1, H + 1) if H % n == 0),
        "mlp_hidden": (hf.get("n_inner") or 4 * D,),
        "attn": ("causal",),
        "qk_norm": (False,),
        "tie_embeddings": (bool(hf.get("tie_word_embeddings", True)),),
        "pos_emb": ("learned", "none"),
        "norm": ("layer", "layer_no_bias"),
        "mlp": ("gelu",),
        "use_bias": (True, False),
        "norm_eps": (hf.get("layer_norm_epsilon", 1e-5),),
    }


def _get(hf: dict, key: str, where: str):
    if key not in hf:
        raise ExportError(f"{where}: config.json has no {key!r}")
    return hf[key]


def _expect(hf: dict, where: str, **wanted) -> None:
    for key, value in wanted.items():
        if key in hf and hf[key] != value:
            raise ExportError(f"{where}: {key}={hf[key]!r}, but jaxgpt computes the equivalent of {key}={value!r}")


# Weights
# ------------------------------------------------------------------------------------------------------------------


# a block's module paths in the native classes with model.layers.<i> (GPT-2's keep jaxgpt's, but for its norms)
_LAYER_PARTS = {
    "attention_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn.q_attn": "self_attn.q_proj",
    "attn.k_attn": "self_attn.k_proj",
    "attn.v_attn": "self_attn.v_proj",
    "attn.c_proj": "self_attn.o_proj",
    "mlp.W": "mlp.gate_proj",
    "mlp.V": "mlp.up_proj",
    "mlp.W_2": "mlp.down_proj",
}
_GPT2_PARTS = {"attention_norm": "ln_1", "ffn_norm": "ln_2", "lm_head_norm": "ln_f"}
_TOP_PARTS = {"wte": "embed_tokens", "lm_head_norm": "norm"}


def _hf_name(key: str, kind: str) -> str:
    """HF state-dict key of jaxgpt key `key`: "h.0.attn.q_attn.kernel" -> "model.layers.0.self_attn.q_proj.weight"."""
    if key == "lm_head.weight":
        return key
    path, leaf = key.rsplit(".", 1)
    leaf = "bias" if leaf == "bias" else "weight"
    if kind == "gpt2":
        parts = path.split(".")
        parts[-1] = _GPT2_PARTS.get(parts[-1], parts[-1])
        return f"transformer.{'.'.join(parts)}.{leaf}"
    if not path.startswith("h."):
        return f"model.{_TOP_PARTS[path]}.{leaf}"
    _, i, module = path.split(".", 2)
    return f"model.layers.{i}.{_LAYER_PARTS.get(module, module)}.{leaf}"


def _hf_only(m, kind: str) -> dict[str, tuple[int, ...]]:
    """HF tensors jaxgpt lacks under options `m`: they export as zeros, and import only when zero."""
    D, F, L = m.n_embd, m.mlp_hidden, m.n_layer
    norms = [f"h.{i}.{n}" for i in range(L) for n in ("attention_norm", "ffn_norm")] + ["lm_head_norm"]
    shapes = {f"{n}.bias": (D,) for n in norms} if m.norm == "layer_no_bias" else {}
    if kind == "gpt2" and not m.use_bias:
        for i in range(L):
            shapes |= {f"h.{i}.attn.c_attn.bias": (3 * D,), f"h.{i}.attn.c_proj.bias": (D,)}
            shapes |= {f"h.{i}.mlp.c_fc.bias": (F,), f"h.{i}.mlp.c_proj.bias": (D,)}
    if kind == "gpt2" and m.pos_emb == "none":
        shapes["wpe.weight"] = (m.seq_len, D)
    return shapes


def _repeat_kv(kernel_DxNK: np.ndarray, n_kv: int, groups: int) -> np.ndarray:
    """[I, N*K] -> [I, H*K]: kv head n becomes heads n*G .. n*G+G-1 (q head h reads kv head h // G)."""
    shape = kernel_DxNK.shape
    return np.repeat(kernel_DxNK.reshape(*shape[:-1], n_kv, -1), groups, axis=-2).reshape(*shape[:-1], -1)


def to_hf(params: dict[str, np.ndarray], m) -> dict[str, np.ndarray]:
    """jaxgpt flat params -> the native class's state dict (numpy); tied models carry no lm_head.weight."""
    kind, out = model_type(m), {}
    for key, value in params.items():
        if kind == "gpt2" and any(f".attn.{p}_attn." in key for p in "qkv"):
            continue
        out[_hf_name(key, kind)] = value if kind == "gpt2" or not key.endswith(".kernel") else value.T
    for key, shape in _hf_only(m, kind).items():
        out[_hf_name(key, kind)] = np.zeros(shape, np.float32)
    if kind == "gpt2":  # q, k, v fused into c_attn [D, 3D] (Conv1D: [in, out]); kv heads repeated for GQA
        G = m.n_head_q // m.n_head_kv
        for i in range(m.n_layer):
            for leaf, hf_leaf in (("kernel", "weight"), ("bias", "bias")):
                if f"h.{i}.attn.q_attn.{leaf}" not in params:
                    continue
                q, k, v = (params[f"h.{i}.attn.{p}_attn.{leaf}"] for p in "qkv")
                fused = [q, _repeat_kv(k, m.n_head_kv, G), _repeat_kv(v, m.n_head_kv, G)]
                out[f"transformer.h.{i}.attn.c_attn.{hf_leaf}"] = np.concatenate(fused, axis=-1)
    return out


def from_hf(tensors: dict[str, np.ndarray], m, where: str) -> dict[str, np.ndarray]:
    """The native class's state dict -> jaxgpt flat params for options `m` (model_options checked beforehand).
    The vocab tables keep the HF row count, which may be below m.vocab_size (warmstart.init_state fills the rest)."""
    kind = model_type(m)
    prefix = "transformer." if kind == "gpt2" else "model."
    if not any(k.startswith(prefix) for k in tensors):  # openai-community/gpt2's files lack the base model's prefix
        tensors = {(k if k == "lm_head.weight" else prefix + k): v for k, v in tensors.items()}
    for key in _hf_only(m, kind):
        name = _hf_name(key, kind)
        if name in tensors and np.any(tensors[name]):
            raise ExportError(f"{where}: {name} is not zero, which jaxgpt's {_why_absent(key, m)} cannot hold")
    if kind == "gpt2":
        tensors = {**tensors, **_split_c_attn(tensors, m, where)}
    if m.tie_embeddings:
        tensors = {k: v for k, v in tensors.items() if k != "lm_head.weight"}
    params = {}
    for key in _jaxgpt_keys(m):
        name = _hf_name(key, kind)  # GPT-2's q/k/v: the split of c_attn, under their own names
        if name not in tensors:
            raise ExportError(f"{where}: model.safetensors has no {name} (for jaxgpt's {key})")
        value = np.asarray(tensors[name], np.float32)
        params[key] = value if kind == "gpt2" or not key.endswith(".kernel") else value.T
    return params


def _why_absent(key: str, m) -> str:
    if key.startswith("wpe"):
        return "model.pos_emb='none'"
    return "model.norm='layer_no_bias'" if "norm" in key else "model.use_bias=False"


def _split_c_attn(tensors: dict, m, where: str) -> dict[str, np.ndarray]:
    """GPT-2's fused c_attn [D, 3D] -> q, k, v in jaxgpt's keys; repeated kv heads must be equal to fold back (GQA)."""
    out, D, N, G = {}, m.n_embd, m.n_head_kv, m.n_head_q // m.n_head_kv
    for i in range(m.n_layer):
        for leaf, hf_leaf in (("kernel", "weight"), ("bias", "bias")):
            name = f"transformer.h.{i}.attn.c_attn.{hf_leaf}"
            if name not in tensors or (leaf == "bias" and not m.use_bias):
                continue
            q, k, v = np.split(np.asarray(tensors[name], np.float32), 3, axis=-1)
            for p, value in (("q", q), ("k", k), ("v", v)):
                if p != "q":
                    value = value.reshape(*value.shape[:-1], N, G, D // m.n_head_q)[..., :, 0, :]
                    value = value.reshape(*value.shape[:-2], -1)  # [I, N, K] -> [I, N*K]
                    if not np.array_equal(_repeat_kv(value, N, G), (k if p == "k" else v)):
                        raise ExportError(
                            f"{where}: {name}'s {p} heads are not {G} copies of {N} heads, so they do not fit"
                            f" model.n_head_kv={N}; use n_head_kv={m.n_head_q}"
                        )
                out[_hf_name(f"h.{i}.attn.{p}_attn.{leaf}", "gpt2")] = value
    return out


def _jaxgpt_keys(m) -> list[str]:
    """The flat keys of a jaxgpt GPT's parameters under options `m`, without building it."""
    keys = ["wte.weight"] + (["wpe.weight"] if m.pos_emb == "learned" else [])
    norm = ["weight"] + (["bias"] if m.norm == "layer" else [])
    linear = ["kernel"] + (["bias"] if m.use_bias else [])
    mlp = ("W", "V", "W_2") if m.mlp == "swiglu" else ("c_fc", "c_proj")
    for i in range(m.n_layer):
        keys += [f"h.{i}.{n}.{leaf}" for n in ("attention_norm", "ffn_norm") for leaf in norm]
        keys += [f"h.{i}.attn.{p}.{leaf}" for p in ("q_attn", "k_attn", "v_attn", "c_proj") for leaf in linear]
        keys += [f"h.{i}.mlp.{p}.{leaf}" for p in mlp for leaf in linear]
    keys += [f"lm_head_norm.{leaf}" for leaf in norm]
    return keys + ([] if m.tie_embeddings else ["lm_head.weight"])


# The folder
# ------------------------------------------------------------------------------------------------------------------


def special_ids(tokenizer_file: str, eod_token: str) -> tuple[int, int]:
    """(id of eod_token, the tokenizer's vocab size: its largest id + 1) from a tokenizers tokenizer.json."""
    try:
        with open(tokenizer_file, encoding="utf-8") as f:
            tok = json.load(f)
        ids = {**tok["model"]["vocab"], **{t["content"]: t["id"] for t in tok.get("added_tokens", [])}}
    except (OSError, ValueError, KeyError, TypeError) as e:
        reason = f"{type(e).__name__}: {e}"
        raise ExportError(f"{tokenizer_file}: not a readable tokenizers tokenizer.json ({reason})") from None
    if eod_token not in ids:
        raise ExportError(f"{tokenizer_file}: has no token {eod_token!r} (--eod_token)")
    return ids[eod_token], max(ids.values()) + 1


def write_folder(
    out: str,
    params: dict[str, np.ndarray],
    m,
    *,
    tokenizer_file: str,
    eod_token: str = "<|endoftext|>",
    dtype: str = "float32",
) -> None:
    """An HF model folder: config.json, model.safetensors, the tokenizer files and generation_config.json, written
    into a temporary folder renamed to `out` when complete. bos/eos/pad are eod_token; the padded vocab rows
    (tokenizer vocab .. V - 1) are suppressed in generation_config.json, so sampling never picks them."""
    import ml_dtypes
    import safetensors.numpy

    if dtype not in DTYPES:
        raise ExportError(f"--dtype={dtype!r} must be one of {DTYPES}")
    eod, real_vocab = special_ids(tokenizer_file, eod_token)
    if real_vocab > m.vocab_size:
        raise ExportError(f"{tokenizer_file}: {real_vocab} tokens do not fit model.vocab_size={m.vocab_size}")
    config = hf_config(m, bos_id=eod, eos_id=eod, pad_id=eod, dtype=dtype)
    note = document_masking_note(m, eod_token)
    if note:
        warnings.warn(note, stacklevel=2)
        config["jaxgpt_note"] = note  # transformers keeps an unknown config key as an attribute
    np_dtype = np.float32 if dtype == "float32" else ml_dtypes.bfloat16
    tensors = {k: np.ascontiguousarray(v.astype(np_dtype)) for k, v in to_hf(params, m).items()}
    generation = {"bos_token_id": eod, "eos_token_id": eod, "pad_token_id": eod}
    if real_vocab < m.vocab_size:
        generation["suppress_tokens"] = list(range(real_vocab, m.vocab_size))
    with atomic_folder(out, "--out") as tmp:
        safetensors.numpy.save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        write_json(os.path.join(tmp, "config.json"), config)
        write_json(os.path.join(tmp, "generation_config.json"), generation)
        write_tokenizer(tmp, tokenizer_file, eod_token, eod, m.seq_len)
        if note:
            with open(os.path.join(tmp, "README.md"), "w") as f:
                f.write(f"# A jaxgpt export\n\n{note}\n")


def document_masking_note(m, eod_token: str, exported: str = "The exported classes have") -> str:
    """What an export of a model trained with document masking must tell its users ("" for other models); `exported`
    names what the folder holds."""
    if not (m.doc_mask or m.doc_positions):
        return ""
    what = " and ".join(
        w for w, on in (("attention masked at", m.doc_mask), ("positions restarted after", m.doc_positions)) if on
    )
    return (
        f"This model was trained with {what} each {eod_token} (model.doc_mask={m.doc_mask}, model.doc_positions="
        f"{m.doc_positions}). {exported} no document masking: a prompt without {eod_token} gives"
        f" jaxgpt's logits; one with it attends across it here, unlike in training and in jaxgpt's generate."
    )


def write_tokenizer(folder: str, tokenizer_file: str, eod_token: str, eod: int, seq_len: int) -> None:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json: what AutoTokenizer.from_pretrained reads,
    with bos, eos, pad and unk = eod_token. Every added token of the tokenizer.json is in added_tokens_decoder with
    its flags; the special ones besides eod_token (`jaxgpt data add_special_tokens`) are additional_special_tokens,
    which is what puts them in AutoTokenizer's all_special_tokens."""
    shutil.copyfile(tokenizer_file, os.path.join(folder, "tokenizer.json"))
    decoder = _added_tokens_decoder(tokenizer_file, eod_token, eod)
    specials = {"bos_token": eod_token, "eos_token": eod_token, "pad_token": eod_token, "unk_token": eod_token}
    extra = [t["content"] for t in decoder.values() if t["special"] and t["content"] != eod_token]
    if extra:
        specials["additional_special_tokens"] = extra
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",  # tokenizer.json alone, whatever its vocabulary
        "added_tokens_decoder": decoder,
        **specials,
        "model_max_length": seq_len,
        "clean_up_tokenization_spaces": False,
    }
    write_json(os.path.join(folder, "tokenizer_config.json"), config)
    write_json(os.path.join(folder, "special_tokens_map.json"), specials)


def _added_tokens_decoder(tokenizer_file: str, eod_token: str, eod: int) -> dict[str, dict]:
    """tokenizer_config.json's added_tokens_decoder: the tokenizer.json's added tokens, by id, with their flags; the
    eod token special (it is bos, eos, pad and unk), also where the file has it only in its vocabulary."""
    with open(tokenizer_file, encoding="utf-8") as f:
        added = json.load(f).get("added_tokens") or []  # readable: special_ids read it first
    default = {"lstrip": False, "normalized": True, "rstrip": False, "single_word": False, "special": False}
    decoder = {str(t["id"]): {"content": t["content"], **{k: t.get(k, v) for k, v in default.items()}} for t in added}
    decoder.setdefault(str(eod), {"content": eod_token, **default})["special"] = True
    return decoder


def write_json(path: str, value: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2)
        f.write("\n")


def read_folder(path: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(config.json, float32 tensors) of an HF model folder with one or several .safetensors files."""
    import ml_dtypes
    from safetensors import safe_open

    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise ExportError(f"{path}: no readable config.json ({type(e).__name__}: {e})") from None
    files = sorted(n for n in os.listdir(path) if n.endswith(".safetensors"))
    if not files:
        raise ExportError(f"{path}: holds no .safetensors weights (pytorch_model.bin is not read: it is a pickle)")
    tensors = {}
    for name in files:
        try:  # the "np" framework gives bf16 tensors as ml_dtypes.bfloat16 arrays
            with safe_open(os.path.join(path, name), framework="np") as f:
                for key in f.keys():
                    tensors[key] = f.get_tensor(key).astype(np.float32)
        except (OSError, ValueError, TypeError) as e:
            raise ExportError(f"{path}/{name}: not readable safetensors ({type(e).__name__}: {e})") from None
    del ml_dtypes  # imported for its dtype registration with numpy
    return config, tensors
