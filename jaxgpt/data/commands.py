"""`jaxgpt data NAME ...`: Modalities 0.5.0's data commands under their own names, positional arguments and flags.

A Modalities preprocessing script runs with `modalities` replaced by `jaxgpt`; the outputs are byte-identical for clean
input (the modules named below say where and why jaxgpt differs). Nothing here imports jax: each command imports only
its own module when it runs.
"""

from __future__ import annotations

import argparse

from jaxgpt.errors import check_int

POLICIES = ("error", "skip", "override")


def add_policy_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--file_existence_policy", choices=POLICIES, default="error", help="when the output exists")


def _chunk_flags(p: argparse.ArgumentParser, kind: str) -> None:
    p.add_argument("--input_file_list_path", required=True, help=f"file naming the {kind} files, one per line")
    p.add_argument("--input_data_root_path", required=True, help="directory the listed names are relative to")
    p.add_argument("--output_chunk_file_path", required=True, help=f"the chunk to write ({kind})")
    p.add_argument("--chunk_id", type=int, required=True, help="which chunk, 0..num_chunks-1")
    p.add_argument("--num_chunks", type=int, required=True, help="chunks in total (>= 1)")
    add_policy_flag(p)
    p.add_argument("--global_seed", type=int, default=None, help="seeds the chunks' shuffles (default: drawn, printed)")


def add_data_commands(commands) -> None:
    """`data` and its commands, under the root parser's subcommands."""
    data = commands.add_parser(
        "data", help="Modalities' data commands", description="Modalities 0.5.0's data commands."
    )
    cmds = data.add_subparsers(dest="data_command", required=True, metavar="NAME")

    def add(name: str, help_: str):
        p = cmds.add_parser(name, help=help_, description=help_)
        p.set_defaults(run=COMMANDS[name], also=())
        return p

    p = add("create_raw_index", "JSONL -> .idx (byte offset, length per line)")
    p.add_argument("src_path", help="the JSONL file")
    p.add_argument("--index_path", default=None, help="output .idx (default: next to src_path, same stem)")
    add_policy_flag(p)

    p = add("pack_encoded_data", "indexed JSONL -> .pbin, from a Modalities packing YAML")
    p.add_argument("config_path", help="YAML with settings and a pretrained_hf_tokenizer component")
    add_policy_flag(p)

    p = add("prepare_instruction_tuning_data", "chat JSONL -> chat template -> splits -> .idx/.pbin, from a YAML")
    p.add_argument("--config_file_path", required=True, help="Modalities' instruction-tuning YAML")

    p = add("merge_packed_data", "several .pbin (or folders of them) -> one, correct offsets")
    p.add_argument("src_paths", nargs="+", help=".pbin files or directories holding them (sorted)")
    p.add_argument("target_path", help="the merged .pbin")
    add_policy_flag(p)

    p = add("shuffle_tokenized_data", "shuffle the documents of a .pbin")
    p.add_argument("--input_data_path", required=True, help="the .pbin")
    p.add_argument("--output_data_path", required=True, help="the shuffled .pbin")
    p.add_argument(
        "--batch_size",
        type=int,
        default=100,
        help="accepted for Modalities' scripts (>= 1); no effect: jaxgpt copies one document at a time",
    )
    add_policy_flag(p)
    p.add_argument("--seed", type=int, default=None, help="shuffle seed (default: drawn and printed)")

    p = add("shuffle_jsonl_data", "shuffle the lines of a JSONL file")
    p.add_argument("--input_data_path", required=True, help="the .jsonl")
    p.add_argument("--output_data_path", required=True, help="the shuffled .jsonl")
    add_policy_flag(p)
    p.add_argument("--seed", type=int, default=None, help="shuffle seed (default: drawn and printed)")

    _chunk_flags(add("create_shuffled_dataset_chunk", "one shuffled chunk of many .pbin"), ".pbin")
    _chunk_flags(add("create_shuffled_jsonl_chunk", "one shuffled chunk of many JSONL"), ".jsonl")

    p = add("add_special_tokens", "a tokenizer.json with new special tokens at the free ids (jaxgpt only)")
    p.add_argument("tokens", nargs="+", metavar="TOKEN", help="the tokens to add, e.g. '<|im_start|>'")
    p.add_argument("--tokenizer_file", required=True, help="the tokenizer.json to extend")
    p.add_argument("--out", required=True, help="the extended tokenizer.json")
    p.add_argument("--vocab_size", type=int, default=50304, help="the model's table (model.vocab_size): ids stay below")
    add_policy_flag(p)


def _create_raw_index(a: argparse.Namespace) -> str | None:
    from jaxgpt.data.prepare.index import create_index

    return create_index(a.src_path, a.index_path, a.file_existence_policy)


def _pack_encoded_data(a: argparse.Namespace) -> str | None:
    from jaxgpt.data.prepare.pack_config import pack_from_config

    report = pack_from_config(a.config_path, a.file_existence_policy)
    if report is None:
        return None
    return f"{report.dst}: {report.num_docs} documents, {report.num_tokens} tokens of {report.width} bytes"


def _prepare_instruction_tuning_data(a: argparse.Namespace) -> str | None:
    from jaxgpt.data.prepare.instruction import prepare_instruction_data

    report = prepare_instruction_data(a.config_file_path)
    counts = ", ".join(f"{split} {n}" for split, n in report.counts.items())
    return f"{report.folder}: conversations {counts}"


def _merge_packed_data(a: argparse.Namespace) -> str | None:
    from jaxgpt.data.prepare.merge import merge_files

    return merge_files(a.target_path, a.src_paths, a.file_existence_policy)


def _shuffle_tokenized_data(a: argparse.Namespace) -> str | None:
    from jaxgpt.data.prepare.shuffle import shuffle_pbin

    check_int("--batch_size", a.batch_size)
    policy = a.file_existence_policy
    seed = shuffle_pbin(a.input_data_path, a.output_data_path, seed=a.seed, file_existence_policy=policy)
    return None if seed is None else f"{a.output_data_path} (seed {seed})"


def _shuffle_jsonl_data(a: argparse.Namespace) -> str | None:
    from jaxgpt.data.prepare.shuffle import shuffle_jsonl

    policy = a.file_existence_policy
    seed = shuffle_jsonl(a.input_data_path, a.output_data_path, seed=a.seed, file_existence_policy=policy)
    return None if seed is None else f"{a.output_data_path} (seed {seed})"


def _chunk(a: argparse.Namespace) -> str | None:
    from jaxgpt.data.prepare import chunks

    make = chunks.create_pbin_chunk if a.data_command == "create_shuffled_dataset_chunk" else chunks.create_jsonl_chunk
    return make(
        a.input_file_list_path,
        a.input_data_root_path,
        a.output_chunk_file_path,
        chunk_id=a.chunk_id,
        num_chunks=a.num_chunks,
        file_existence_policy=a.file_existence_policy,
        global_seed=a.global_seed,
    )


def _add_special_tokens(a: argparse.Namespace) -> str | None:
    from jaxgpt.data.prepare.special_tokens import add_special_tokens

    check_int("--vocab_size", a.vocab_size)
    return add_special_tokens(a.tokenizer_file, a.out, a.tokens, a.vocab_size, a.file_existence_policy)


COMMANDS = {
    "create_raw_index": _create_raw_index,
    "pack_encoded_data": _pack_encoded_data,
    "prepare_instruction_tuning_data": _prepare_instruction_tuning_data,
    "merge_packed_data": _merge_packed_data,
    "shuffle_tokenized_data": _shuffle_tokenized_data,
    "shuffle_jsonl_data": _shuffle_jsonl_data,
    "create_shuffled_dataset_chunk": _chunk,
    "create_shuffled_jsonl_chunk": _chunk,
    "add_special_tokens": _add_special_tokens,
}
