"""Modalities 0.5.0's packing YAML (`modalities data pack_encoded_data CONFIG`) read and run by pack.py.

The YAML holds `settings` (src_path, dst_path, index_path, jq_pattern, num_cpus, eod_token, processing_batch_size,
raw_samples_queue_size, processed_samples_queue_size) and a `tokenizer` component. jaxgpt runs the
`pretrained_hf_tokenizer` variant from a local directory holding tokenizer.json (or that file itself); what it does
not support is refused with the file, line and key, never silently run differently:
- `pretrained_sp_tokenizer` (SentencePiece): not supported (it would need the sentencepiece package and its own
  byte-identity tests); convert the model to a HF tokenizer.json;
- `special_tokens` naming a token the vocabulary lacks (Modalities refuses those too; `jaxgpt data
  add_special_tokens` puts them in the model's spare rows);
- Modalities' own interpolation resolvers (`${modalities_env:...}`); plain interpolations such as
  `${settings.sequence_length}` are resolved by OmegaConf, as Modalities does (yaml_file.py);
- a Hub model name (jaxgpt never downloads).
`truncation`, `padding: max_length`, `max_length` and `special_tokens` act as in transformers (what instruction
tuning uses: every conversation cut or padded to one length), through the `tokenizers` library (tokenize.Encoding).
Relative paths are relative to the working directory, as in Modalities. The three batch and queue sizes tune
Modalities' own pipeline: they are checked (int >= 1, as Modalities does) and have no effect on the output.

Imports no jax; yaml is imported when a config is read.
"""

from __future__ import annotations

import os
import sys

from jaxgpt.data.prepare.yaml_file import YamlFile, read_yaml
from jaxgpt.data.tokenize import Encoding
from jaxgpt.errors import PackedDataError

_REQUIRED = ("src_path", "jq_pattern", "eod_token")
_PIPELINE_SIZES = ("processing_batch_size", "raw_samples_queue_size", "processed_samples_queue_size")
# sequence_length: not read by the packer, but Modalities' instruction-tuning configs interpolate it into max_length
_KNOWN = {*_REQUIRED, *_PIPELINE_SIZES, "dst_path", "index_path", "num_cpus", "sequence_length"}
_HF_KNOWN = {"pretrained_model_name_or_path", "max_length", "truncation", "padding", "special_tokens"}
# the special_tokens keys transformers' add_special_tokens takes
_SPECIAL_NAMES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
    "additional_special_tokens",
)


def _positive_int(config: YamlFile, key: str) -> int | None:
    value = config.get(key)
    if value is not None and (type(value) is not int or value < 1):
        raise PackedDataError(f"{config.where(key)} must be an integer >= 1, got {value!r}")
    return value


def read_settings(config: YamlFile) -> dict:
    """`settings`, checked: the required keys present, paths as strings, the integers >= 1."""
    settings = config.mapping("settings")
    missing = [k for k in _REQUIRED if settings.get(k) in (None, "")]
    if missing:
        raise PackedDataError(f"{config.where('settings.' + missing[0])} is missing")
    for key in sorted(set(settings) - _KNOWN):
        print(f"{config.where('settings.' + key)} is not a Modalities packing setting; ignored", file=sys.stderr)
    for key in _PIPELINE_SIZES:
        _positive_int(config, f"settings.{key}")
    num_cpus = _positive_int(config, "settings.num_cpus")
    for key in ("src_path", "dst_path", "index_path", "jq_pattern", "eod_token"):
        if settings.get(key) is not None and not isinstance(settings[key], str):
            raise PackedDataError(f"{config.where('settings.' + key)} must be a string, got {settings[key]!r}")
    if not os.path.isfile(settings["src_path"]):
        raise PackedDataError(f"{config.where('settings.src_path')} {settings['src_path']!r} does not exist")
    return {**settings, "num_cpus": num_cpus}


def read_tokenizer(config: YamlFile) -> tuple[str, Encoding]:
    """(tokenizer.json path, how texts are encoded) of the `tokenizer` component."""
    component = config.mapping("tokenizer")
    variant = component.get("variant_key")
    if variant == "pretrained_sp_tokenizer":
        raise PackedDataError(
            f"{config.where('tokenizer.variant_key')}: pretrained_sp_tokenizer (SentencePiece) is not supported;"
            " convert the model to a HF tokenizer.json and use pretrained_hf_tokenizer"
        )
    if component.get("component_key") != "tokenizer" or variant != "pretrained_hf_tokenizer":
        raise PackedDataError(
            f"{config.where('tokenizer')} must be component_key tokenizer, variant_key pretrained_hf_tokenizer; got"
            f" {component.get('component_key')!r}, {variant!r}"
        )
    hf = config.mapping("tokenizer.config")
    for key in sorted(set(hf) - _HF_KNOWN):
        raise PackedDataError(f"{config.where('tokenizer.config.' + key)} is not a pretrained_hf_tokenizer setting")
    name = hf.get("pretrained_model_name_or_path")
    if not isinstance(name, str):
        raise PackedDataError(f"{config.where('tokenizer.config.pretrained_model_name_or_path')} is missing")
    file = os.path.join(name, "tokenizer.json") if os.path.isdir(name) else name
    if not os.path.isfile(file):
        raise PackedDataError(
            f"{config.where('tokenizer.config.pretrained_model_name_or_path')} {name!r} is not a local directory"
            " holding tokenizer.json (jaxgpt does not download from the Hub)"
        )
    return file, _encoding(config, hf, file)


def _encoding(config: YamlFile, hf: dict, file: str) -> Encoding:
    """transformers' reading of truncation, padding, max_length and special_tokens for one text at a time."""
    key = "tokenizer.config."
    truncation, padding = hf.get("truncation", False), hf.get("padding", False)
    if truncation not in (False, True, None, "longest_first", "only_first", "do_not_truncate"):
        raise PackedDataError(f"{config.where(key + 'truncation')} {truncation!r} is not supported")
    if padding not in (False, True, None, "longest", "do_not_pad", "max_length"):
        raise PackedDataError(f"{config.where(key + 'padding')} {padding!r} is not supported")
    truncation = truncation in (True, "longest_first", "only_first")  # the same for one text
    pad = padding == "max_length"  # "longest" and True pad one text to its own length: nothing
    max_length = hf.get("max_length")
    if (truncation or pad) and max_length is None:
        max_length = _model_max_length(file)
    if (truncation or pad) and (type(max_length) is not int or max_length < 1):
        raise PackedDataError(f"{config.where(key + 'max_length')} must be an integer >= 1, got {max_length!r}")
    special = hf.get("special_tokens") or {}
    if not isinstance(special, dict):
        raise PackedDataError(f"{config.where(key + 'special_tokens')} must be a mapping, got {special!r}")
    tokens = []
    for name, value in special.items():
        values = [value] if isinstance(value, str) else value
        if name not in _SPECIAL_NAMES or not isinstance(values, list) or not all(isinstance(t, str) for t in values):
            raise PackedDataError(f"{config.where(key + 'special_tokens.' + str(name))} {value!r} is not supported")
        tokens += [t for t in values if t not in tokens]
    pad_token = special.get("pad_token") if pad else None
    if pad and pad_token is None:
        raise PackedDataError(f"{config.where(key + 'padding')} max_length needs special_tokens.pad_token")
    return Encoding(tuple(tokens), max_length if truncation or pad else None, truncation, pad_token)


def _model_max_length(file: str) -> int | None:
    """tokenizer_config.json's model_max_length next to the tokenizer.json: what HF truncates to by default."""
    import json

    try:
        with open(os.path.join(os.path.dirname(file), "tokenizer_config.json"), encoding="utf-8") as f:
            return json.load(f).get("model_max_length")
    except (OSError, ValueError):
        return None


def pack_from_config(config_path: str | os.PathLike, file_existence_policy: str = "error", progress: bool = True):
    """Runs pack.pack_jsonl as the YAML says; returns its PackReport, or None when skipped by the policy."""
    return pack_from_yaml(read_yaml(config_path), file_existence_policy, progress)


def pack_from_yaml(config: YamlFile, file_existence_policy: str = "error", progress: bool = True):
    """pack_from_config of a file already read (and maybe changed: instruction tuning sets its paths)."""
    from jaxgpt.data.prepare.pack import pack_jsonl

    settings = read_settings(config)
    file, encoding = read_tokenizer(config)
    return pack_jsonl(
        settings["src_path"],
        settings.get("dst_path"),
        tokenizer_file=file,
        encoding=encoding,
        jq_pattern=settings["jq_pattern"],
        eod_token=settings["eod_token"],
        index_path=settings.get("index_path"),
        num_processes=settings["num_cpus"],
        file_existence_policy=file_existence_policy,
        progress=progress,
    )
