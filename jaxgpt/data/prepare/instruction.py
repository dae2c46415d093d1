"""`jaxgpt data prepare_instruction_tuning_data --config_file_path F.yaml`: Modalities 0.5.0's instruction-tuning data,
the same YAML in, the same files out, byte for byte.

F.yaml holds `settings` (src_path, dst_path, messages_key, pbin_creation_config_file_path, split_config with
splitting {train, val, test} in percent and seed), `instruction_data_transformation.role_mapping`, the
`jinja2_chat_template` and the `chat_template_data` it is rendered with. For dst_path `D/NAME.jsonl`, the outputs go
to `D/<src stem>_<h>/`, h = the first 7 hex digits of F.yaml's SHA-256:
    instruction_chat_template_config.<h>.yaml   F.yaml, copied
    NAME_<split>.<h>.jsonl                       each conversation with its roles mapped and its rendered `chat`
    pbin_config_<split>.<h>.yaml                 the packing YAML, resolved, with this split's paths
    NAME_<split>.<h>.idx / .pbin                 the split indexed and packed as that YAML says
Each conversation goes to the split that `random.choices` draws for it, seeded by split_config.seed: Modalities' draw.
A split of weight 0 gets no file; one that draws no conversation gets its (empty) JSONL only, as in Modalities.

Where jaxgpt differs, it is on bad input: every such input is one line naming the file, the line and the key, and no
output is left behind (everything is written in a temporary folder renamed into place at the end). Conversations
whose packed sample has no target inside an assistant turn (the reply lies past max_length) keep Modalities' bytes,
but are counted and named on stderr.

Imports no jax.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import random
import shutil
import sys

from jaxgpt.data.chat_template import ChatTemplate
from jaxgpt.data.prepare.index import LineFault, decode_line, parse_json
from jaxgpt.data.prepare.yaml_file import YamlFile, read_yaml
from jaxgpt.errors import PackedDataError
from jaxgpt.io import atomic_folder

SPLITS = ("train", "val", "test")  # Modalities' order, whatever the YAML's
ROLE_KEYS = ("role", "from")  # the keys Modalities maps (OpenAI and ShareGPT style)
CONTENT_KEYS = ("content", "value")
MARKER_KEYS = ("b_include_to_loss_token", "e_include_to_loss_token")  # under chat_template_data.special_tokens


@dataclasses.dataclass(frozen=True)
class InstructionReport:
    folder: str  # the output folder D/<src stem>_<h>
    counts: dict[str, int]  # conversations per split
    no_target: dict[str, list[int]]  # per split, the source lines whose sample has no target in the loss


@dataclasses.dataclass(frozen=True)
class _Settings:
    src: pathlib.Path
    dst: pathlib.Path
    messages_key: str
    pbin_config: str
    weights: tuple[int, int, int]  # train, val, test
    seed: int


def _settings(config: YamlFile) -> _Settings:
    s = config.mapping("settings")
    for key in ("src_path", "dst_path", "messages_key", "pbin_creation_config_file_path"):
        if not isinstance(s.get(key), str) or not s[key]:
            raise PackedDataError(f"{config.where('settings.' + key)} must be a non-empty string, got {s.get(key)!r}")
    for key in ("src_path", "pbin_creation_config_file_path"):
        if not os.path.isfile(s[key]):
            raise PackedDataError(f"{config.where('settings.' + key)}: {s[key]!r} is not a file")
    splitting = config.mapping("settings.split_config.splitting")
    for name in sorted(set(splitting) - set(SPLITS)):
        raise PackedDataError(
            f"{config.where('settings.split_config.splitting.' + name)}: not a split (train, val, test)"
        )
    weights = tuple(splitting.get(name) for name in SPLITS)
    for name, w in zip(SPLITS, weights):
        if type(w) is not int or w < 0:
            where = config.where(f"settings.split_config.splitting.{name}")
            raise PackedDataError(f"{where} must be an integer >= 0 (a percentage), got {w!r}")
    if sum(weights) != 100:  # Modalities' rule; it also rules out all-zero weights
        where = config.where("settings.split_config.splitting")
        raise PackedDataError(f"{where}: the percentages {dict(zip(SPLITS, weights))} must add up to 100")
    seed = config.get("settings.split_config.seed")
    if type(seed) is not int:
        raise PackedDataError(f"{config.where('settings.split_config.seed')} must be an integer, got {seed!r}")
    src, dst, pbin = pathlib.Path(s["src_path"]), pathlib.Path(s["dst_path"]), s["pbin_creation_config_file_path"]
    return _Settings(src, dst, s["messages_key"], pbin, weights, seed)


def _template(config: YamlFile) -> ChatTemplate:
    text = config.get("jinja2_chat_template")
    if not isinstance(text, str):
        raise PackedDataError(f"{config.where('jinja2_chat_template')} must be a string, got {text!r}")
    line = config.line("jinja2_chat_template") or 1
    key_line = config.text.splitlines()[line - 1] if line <= len(config.text.splitlines()) else ""
    block = key_line.split("#", 1)[0].rstrip().endswith(("|", ">", "|-", ">-", "|+", ">+"))
    first = line + block  # the file line of the template's first line

    def locate(n: int) -> str:
        return f"{config.path}:{first + n - 1}: jinja2_chat_template"

    return ChatTemplate(text, config.where("jinja2_chat_template"), join_lines=True, locate=locate)


def _role_mapping(config: YamlFile) -> dict[str, str]:
    mapping = config.mapping("instruction_data_transformation.role_mapping")
    for k, v in mapping.items():
        if not isinstance(v, str):
            raise PackedDataError(f"{config.where('instruction_data_transformation.role_mapping.' + str(k))}: {v!r}")
    return mapping


def _conversation(raw: bytes, where: str, messages_key: str, roles: dict[str, str], roles_at: str) -> dict:
    """The line's entry with its roles mapped (in place, as Modalities writes them); errors name `where` (F:LINE)."""
    try:
        entry = parse_json(decode_line(raw))
    except LineFault as e:
        raise PackedDataError(f"{where}: {e}") from None
    if not isinstance(entry, dict):
        raise PackedDataError(f"{where}: expected a JSON object, got {type(entry).__name__}")
    if messages_key not in entry:
        raise PackedDataError(f"{where}: no key {messages_key!r} (settings.messages_key)")
    turns = entry[messages_key]
    if not isinstance(turns, list):
        raise PackedDataError(f"{where}: {messages_key} must be a list of turns, got {type(turns).__name__}")
    for i, turn in enumerate(turns):
        name = f"{where}: {messages_key}[{i}]"
        if not isinstance(turn, dict):
            raise PackedDataError(f"{name} must be an object with a role and a content, got {turn!r}")
        if not any(k in turn for k in ROLE_KEYS) or not any(k in turn for k in CONTENT_KEYS):
            missing = "role (`role` or `from`)" if not any(k in turn for k in ROLE_KEYS) else "content"
            raise PackedDataError(f"{name} has no {missing}")
        for key in ROLE_KEYS:
            if key in turn:
                if not isinstance(turn[key], str) or turn[key] not in roles:
                    raise PackedDataError(f"{name}.{key} {turn[key]!r} is not in {roles_at} {sorted(roles)}")
                turn[key] = roles[turn[key]]
    return entry


def _output_names(settings: _Settings, h: str) -> dict[str, pathlib.Path]:
    """Split -> its JSONL path, relative to the output folder's parent, as Modalities names them."""
    dst = settings.dst
    folder = dst.parent / f"{settings.src.stem}_{h}"
    suffix = f".{h}" + ".".join(dst.suffixes)
    return {
        split: (folder / dst.name).with_name(f"{dst.stem}_{split}").with_suffix(suffix)
        for split, w in zip(SPLITS, settings.weights)
        if w
    }


def _file_hash(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _markers(config: YamlFile, pbin_config: YamlFile) -> tuple[int, int] | None:
    """The ids of the loss markers chat_template_data.special_tokens names, or None when it names none."""
    from jaxgpt.data.prepare.pack_config import read_tokenizer
    from jaxgpt.data.tokenize import load_tokenizer

    tokens = config.get("chat_template_data.special_tokens") or {}
    if not isinstance(tokens, dict) or not all(isinstance(tokens.get(k), str) for k in MARKER_KEYS):
        print(
            f"{config.path}: no loss markers {MARKER_KEYS} in chat_template_data.special_tokens: samples without a"
            " target in the loss are not looked for",
            file=sys.stderr,
        )
        return None
    file, encoding = read_tokenizer(pbin_config)
    tokenizer = load_tokenizer(file, encoding=encoding)
    ids = []
    for key in MARKER_KEYS:
        where = config.where(f"chat_template_data.special_tokens.{key}")
        token_id = tokenizer.token_id(tokens[key])
        if token_id is None:
            raise PackedDataError(f"{where} {tokens[key]!r} is not a single token of {file}")
        if tokens[key] not in encoding.specials:
            print(
                f"{where} {tokens[key]!r} is not among {pbin_config.path}'s tokenizer.config.special_tokens: the"
                " tokenizer may merge it with its neighbours",
                file=sys.stderr,
            )
        ids.append(token_id)
    if ids[0] == ids[1]:
        raise PackedDataError(
            f"{config.where('chat_template_data.special_tokens')}: the two loss markers are one token"
        )
    return ids[0], ids[1]


def _split_and_render(settings, template, roles, roles_at, data, names, tmp) -> dict[str, list[int]]:
    """Writes each split's chat JSONL into `tmp`; returns, per split, the source lines it holds in order."""
    rng = random.Random(settings.seed)  # the draws of random.seed(seed); random.choices(...)
    outs = {split: open(os.path.join(tmp, path.name), "w", encoding="utf-8") for split, path in names.items()}
    lines: dict[str, list[int]] = {split: [] for split in names}
    try:
        with open(settings.src, "rb") as f:
            for line_no, raw in enumerate(f, 1):
                where = f"{settings.src}:{line_no}"
                entry = _conversation(raw, where, settings.messages_key, roles, roles_at)
                split = rng.choices(SPLITS, weights=settings.weights)[0]
                messages = entry[settings.messages_key]
                entry["chat"] = template.render(where, messages=messages, chat_template_data=data)
                outs[split].write(json.dumps(entry, ensure_ascii=False) + "\n")
                lines[split].append(line_no)
    finally:
        for out in outs.values():
            out.close()
    return lines


def _pack_split(pbin_config: YamlFile, jsonl: pathlib.Path, tmp: str, progress: bool) -> str:
    """Indexes and packs one split's JSONL (in `tmp`) as Modalities does; writes its pbin_config YAML with the final
    paths; returns the temporary .pbin's path."""
    import copy

    import yaml

    from jaxgpt.data.prepare.index import create_index
    from jaxgpt.data.prepare.pack_config import pack_from_yaml

    split = jsonl.stem.rsplit(".", 1)[0].rsplit("_", 1)[1]
    h = jsonl.suffixes[0]
    idx, pbin = jsonl.with_suffix(".idx"), jsonl.with_suffix(".idx").with_suffix(".pbin")
    local = {p: os.path.join(tmp, p.name) for p in (jsonl, idx, pbin)}
    create_index(local[jsonl], local[idx], "override")
    data = copy.deepcopy(pbin_config.data)
    data["settings"].update(src_path=str(jsonl), index_path=str(idx), dst_path=str(pbin))
    text = yaml.dump(data, allow_unicode=True)
    config_path = os.path.join(tmp, f"pbin_config_{split}{h}.yaml")
    with open(config_path, "w", encoding="utf-8") as f:
        f.write(text)
    data["settings"].update(src_path=local[jsonl], index_path=local[idx], dst_path=local[pbin])
    pack_from_yaml(YamlFile(config_path, text, data), "override", progress)
    return local[pbin]


def _without_target(pbin: str, markers: tuple[int, int], lines: list[int]) -> list[int]:
    """The source lines whose packed sample has no target inside an assistant turn."""
    from jaxgpt.data.format.pbin import read_pbin
    from jaxgpt.data.sft import loss_mask

    packed = read_pbin(pbin)
    empty = [i for i in range(packed.num_docs) if not loss_mask(packed.document(i)[None, 1:], *markers).any()]
    return [lines[i] for i in empty]


def _recipe(config: YamlFile) -> tuple[ChatTemplate, dict[str, str], dict]:
    data = config.get("chat_template_data")
    if not isinstance(data, dict):
        raise PackedDataError(f"{config.where('chat_template_data')} must be a mapping, got {data!r}")
    return _template(config), _role_mapping(config), data


def read_recipe(path: str | os.PathLike) -> tuple[ChatTemplate, dict[str, str], dict]:
    """(template, role_mapping, chat_template_data) of an instruction-tuning YAML: what chat needs of it."""
    return _recipe(read_yaml(path))


def prepare_instruction_data(config_file_path: str | os.PathLike, progress: bool = True) -> InstructionReport:
    """Modalities' prepare_instruction_tuning_data (module docstring); the output folder replaces an older one."""
    path = os.fspath(config_file_path)
    config = read_yaml(path)
    settings = _settings(config)
    template, roles, data = _recipe(config)
    pbin_config = read_yaml(settings.pbin_config)
    markers = _markers(config, pbin_config)
    h = _file_hash(path)[:7]
    names = _output_names(settings, h)
    folder = settings.dst.parent / f"{settings.src.stem}_{h}"
    roles_at = config.where("instruction_data_transformation.role_mapping")
    no_target = {}
    with atomic_folder(folder, replace=True) as tmp:
        shutil.copyfile(path, os.path.join(tmp, f"instruction_chat_template_config.{h}.yaml"))
        lines = _split_and_render(settings, template, roles, roles_at, data, names, tmp)
        for split, jsonl in names.items():
            if lines[split]:
                pbin = _pack_split(pbin_config, jsonl, tmp, progress)
                if markers is not None:
                    no_target[split] = _without_target(pbin, markers, lines[split])
    _warn_no_target(settings.src, no_target)
    return InstructionReport(str(folder), {k: len(v) for k, v in lines.items()}, no_target)


def _warn_no_target(src: pathlib.Path, no_target: dict[str, list[int]]) -> None:
    for split, lines in no_target.items():
        if lines:
            shown = ", ".join(map(str, lines[:20])) + (", ..." if len(lines) > 20 else "")
            print(
                f"{src}: {len(lines)} conversation(s) of split {split} have no target in the loss (no assistant token"
                f" within max_length, they train nothing): lines {shown}",
                file=sys.stderr,
            )
