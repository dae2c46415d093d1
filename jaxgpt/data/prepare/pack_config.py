"""Modalities 0.5.0's packing YAML (`modalities data pack_encoded_data CONFIG`) read and run by pack.py.

The YAML holds `settings` (src_path, dst_path, index_path, jq_pattern, num_cpus, eod_token, processing_batch_size,
raw_samples_queue_size, processed_samples_queue_size) and a `tokenizer` component. jaxgpt runs the
`pretrained_hf_tokenizer` variant from a local directory holding tokenizer.json (or that file itself); what it does
not support is refused with the key's name, never silently run differently:
- `pretrained_sp_tokenizer` (SentencePiece): not supported (it would need the sentencepiece package and its own
  byte-identity tests); convert the model to a HF tokenizer.json;
- `truncation: true` and `padding: max_length`, which would cut or pad every document;
- `special_tokens` naming a token the vocabulary lacks (Modalities refuses those too);
- OmegaConf interpolations (`${...}`), which Modalities resolves with its own resolvers;
- a Hub model name (jaxgpt never downloads).
Relative paths are relative to the working directory, as in Modalities. The three batch and queue sizes tune
Modalities' own pipeline: they are checked (int >= 1, as Modalities does) and have no effect on the output.

Imports no jax; yaml is imported when a config is read.
"""

from __future__ import annotations

import os
import sys

from jaxgpt.errors import PackedDataError

_REQUIRED = ("src_path", "jq_pattern", "eod_token")
_PIPELINE_SIZES = ("processing_batch_size", "raw_samples_queue_size", "processed_samples_queue_size")
_KNOWN = {*_REQUIRED, *_PIPELINE_SIZES, "dst_path", "index_path", "num_cpus"}
_HF_KNOWN = {"pretrained_model_name_or_path", "max_length", "truncation", "padding", "special_tokens"}


def load_yaml(path: str) -> dict:
    """The YAML file as a mapping; a clear error for a missing file, bad YAML or interpolations."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise PackedDataError(f"{path}: no such config file") from None
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        raise PackedDataError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if not isinstance(config, dict):
        kind = type(config).__name__
        raise PackedDataError(f"{path}: expected a mapping with `settings` and `tokenizer`, got {kind}")
    for lineno, line in enumerate(text.splitlines(), 1):
        if "${" in line.split("#", 1)[0]:
            raise PackedDataError(f"{path}:{lineno}: interpolations (${{...}}) are not supported: {line.strip()!r}")
    return config


def _section(config: dict, path: str, key: str) -> dict:
    value = config.get(key)
    if not isinstance(value, dict):
        raise PackedDataError(f"{path}: `{key}` must be a mapping, got {value!r}")
    return value


def _positive_int(settings: dict, path: str, key: str) -> int | None:
    value = settings.get(key)
    if value is not None and (type(value) is not int or value < 1):
        raise PackedDataError(f"{path}: settings.{key} must be an integer >= 1, got {value!r}")
    return value


def read_settings(config: dict, path: str) -> dict:
    """`settings`, checked: the required keys present, paths as strings, the integers >= 1."""
    settings = _section(config, path, "settings")
    missing = [k for k in _REQUIRED if settings.get(k) in (None, "")]
    if missing:
        raise PackedDataError(f"{path}: settings.{missing[0]} is missing")
    for key in sorted(set(settings) - _KNOWN):
        print(f"{path}: settings.{key} is not a Modalities packing setting; ignored", file=sys.stderr)
    for key in _PIPELINE_SIZES:
        _positive_int(settings, path, key)
    num_cpus = _positive_int(settings, path, "num_cpus")
    for key in ("src_path", "dst_path", "index_path", "jq_pattern", "eod_token"):
        if settings.get(key) is not None and not isinstance(settings[key], str):
            raise PackedDataError(f"{path}: settings.{key} must be a string, got {settings[key]!r}")
    if not os.path.isfile(settings["src_path"]):
        raise PackedDataError(f"{path}: settings.src_path {settings['src_path']!r} does not exist")
    return {**settings, "num_cpus": num_cpus}


def tokenizer_file(config: dict, path: str) -> tuple[str, list[str]]:
    """(tokenizer.json path, the special tokens it must already hold) of the `tokenizer` component."""
    component = _section(config, path, "tokenizer")
    variant = component.get("variant_key")
    if variant == "pretrained_sp_tokenizer":
        raise PackedDataError(
            f"{path}: tokenizer variant pretrained_sp_tokenizer (SentencePiece) is not supported; convert the model to"
            " a HF tokenizer.json and use pretrained_hf_tokenizer"
        )
    if component.get("component_key") != "tokenizer" or variant != "pretrained_hf_tokenizer":
        raise PackedDataError(
            f"{path}: tokenizer must be component_key tokenizer, variant_key pretrained_hf_tokenizer; got"
            f" {component.get('component_key')!r}, {variant!r}"
        )
    hf = _section(component, path + ": tokenizer", "config")
    for key in sorted(set(hf) - _HF_KNOWN):
        raise PackedDataError(f"{path}: tokenizer.config.{key} is not a pretrained_hf_tokenizer setting")
    if hf.get("truncation"):
        raise PackedDataError(
            f"{path}: tokenizer.config.truncation {hf['truncation']!r} is not supported (documents are packed whole)"
        )
    if hf.get("padding") not in (None, False, True, "longest", "do_not_pad"):  # no-ops for one text at a time
        raise PackedDataError(f"{path}: tokenizer.config.padding {hf['padding']!r} is not supported")
    name = hf.get("pretrained_model_name_or_path")
    if not isinstance(name, str):
        raise PackedDataError(f"{path}: tokenizer.config.pretrained_model_name_or_path is missing")
    file = os.path.join(name, "tokenizer.json") if os.path.isdir(name) else name
    if not os.path.isfile(file):
        raise PackedDataError(
            f"{path}: tokenizer.config.pretrained_model_name_or_path {name!r} is not a local directory holding"
            " tokenizer.json (jaxgpt does not download from the Hub)"
        )
    special = hf.get("special_tokens") or {}
    tokens = [t for v in special.values() for t in ([v] if isinstance(v, str) else v)]
    return file, tokens


def pack_from_config(config_path: str | os.PathLike, file_existence_policy: str = "error", progress: bool = True):
    """Runs pack.pack_jsonl as the YAML says; returns its PackReport, or None when skipped by the policy."""
    from jaxgpt.data.prepare.pack import pack_jsonl
    from jaxgpt.data.tokenize import load_tokenizer

    path = os.fspath(config_path)
    config = load_yaml(path)
    settings = read_settings(config, path)
    file, special = tokenizer_file(config, path)
    if special:
        tokenizer = load_tokenizer(file)
        unknown = [t for t in special if tokenizer.token_id(t) is None]
        if unknown:
            raise PackedDataError(
                f"{path}: tokenizer.config.special_tokens {unknown[0]!r} is not in {file}; adding tokens is not"
                " supported (nor by Modalities)"
            )
    return pack_jsonl(
        settings["src_path"],
        settings.get("dst_path"),
        tokenizer_file=file,
        jq_pattern=settings["jq_pattern"],
        eod_token=settings["eod_token"],
        index_path=settings.get("index_path"),
        num_processes=settings["num_cpus"],
        file_existence_policy=file_existence_policy,
        progress=progress,
    )
