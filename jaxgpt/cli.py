"""The `jaxgpt` console script: `jaxgpt data NAME ...` runs Modalities 0.5.0's data commands under their own names.

The names, positional arguments and flags are those of `modalities data NAME --help`, so a Modalities preprocessing
script runs with `modalities` replaced by `jaxgpt`; the outputs are byte-identical for clean input (the modules named
below say where and why jaxgpt differs). Every command writes atomically and ends bad input with one line,
`error: <file:line: reason>`, status 1. Nothing here imports jax: each command imports only its own module.
"""

from __future__ import annotations

import argparse

from jaxgpt.data.cli import clean_errors

POLICIES = ("error", "skip", "override")
_OUT_OF_SCOPE = (
    "Modalities' prepare_instruction_tuning_data is out of scope (chat templates and instruction-tuning splits are not"
    " part of jaxgpt)."
)


def _policy(p: argparse.ArgumentParser) -> None:
    p.add_argument("--file_existence_policy", choices=POLICIES, default="error", help="when the output exists")


def _chunk_flags(p: argparse.ArgumentParser, kind: str) -> None:
    p.add_argument("--input_file_list_path", required=True, help=f"file naming the {kind} files, one per line")
    p.add_argument("--input_data_root_path", required=True, help="directory the listed names are relative to")
    p.add_argument("--output_chunk_file_path", required=True, help=f"the chunk to write ({kind})")
    p.add_argument("--chunk_id", type=int, required=True, help="which chunk, 0..num_chunks-1")
    p.add_argument("--num_chunks", type=int, required=True, help="chunks in total (>= 1)")
    _policy(p)
    p.add_argument("--global_seed", type=int, default=None, help="seeds the chunks' shuffles (default: drawn, printed)")


def _parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="jaxgpt", description=__doc__.splitlines()[0])
    groups = root.add_subparsers(dest="group", required=True, metavar="{data}")
    data = groups.add_parser(
        "data", help="Modalities' data commands", description="Modalities 0.5.0's data commands. " + _OUT_OF_SCOPE
    )
    cmds = data.add_subparsers(dest="command", required=True, metavar="NAME")

    p = cmds.add_parser("create_raw_index", help="JSONL -> .idx (byte offset, length per line)")
    p.add_argument("src_path", help="the JSONL file")
    p.add_argument("--index_path", default=None, help="output .idx (default: next to src_path, same stem)")
    _policy(p)

    p = cmds.add_parser("pack_encoded_data", help="indexed JSONL -> .pbin, from a Modalities packing YAML")
    p.add_argument("config_path", help="YAML with settings and a pretrained_hf_tokenizer component")
    _policy(p)

    p = cmds.add_parser("merge_packed_data", help="several .pbin (or folders of them) -> one, correct offsets")
    p.add_argument("src_paths", nargs="+", help=".pbin files or directories holding them (sorted)")
    p.add_argument("target_path", help="the merged .pbin")
    _policy(p)

    p = cmds.add_parser("shuffle_tokenized_data", help="shuffle the documents of a .pbin")
    p.add_argument("--input_data_path", required=True, help="the .pbin")
    p.add_argument("--output_data_path", required=True, help="the shuffled .pbin")
    p.add_argument(
        "--batch_size",
        type=int,
        default=100,
        help="accepted for Modalities' scripts (>= 1); no effect: jaxgpt copies one document at a time",
    )
    _policy(p)
    p.add_argument("--seed", type=int, default=None, help="shuffle seed (default: drawn and printed)")

    p = cmds.add_parser("shuffle_jsonl_data", help="shuffle the lines of a JSONL file")
    p.add_argument("--input_data_path", required=True, help="the .jsonl")
    p.add_argument("--output_data_path", required=True, help="the shuffled .jsonl")
    _policy(p)
    p.add_argument("--seed", type=int, default=None, help="shuffle seed (default: drawn and printed)")

    _chunk_flags(cmds.add_parser("create_shuffled_dataset_chunk", help="one shuffled chunk of many .pbin"), ".pbin")
    _chunk_flags(cmds.add_parser("create_shuffled_jsonl_chunk", help="one shuffled chunk of many JSONL"), ".jsonl")
    return root


def _create_raw_index(a: argparse.Namespace) -> str | None:
    from jaxgpt.data.index import create_index

    return create_index(a.src_path, a.index_path, a.file_existence_policy)


def _pack_encoded_data(a: argparse.Namespace) -> str | None:
    from jaxgpt.data.pack_config import pack_from_config

    report = pack_from_config(a.config_path, a.file_existence_policy)
    if report is None:
        return None
    return f"{report.dst}: {report.num_docs} documents, {report.num_tokens} tokens of {report.width} bytes"


def _merge_packed_data(a: argparse.Namespace) -> str | None:
    from jaxgpt.data.cli import expand_pbin_paths
    from jaxgpt.data.errors import PackedDataError
    from jaxgpt.data.index import check_output
    from jaxgpt.data.pbin import merge_pbin

    srcs = expand_pbin_paths(a.src_paths)
    if not srcs:
        raise PackedDataError(f"no .pbin files in {' '.join(a.src_paths)}")
    if not check_output(a.target_path, a.file_existence_policy, srcs):
        return None
    merged = merge_pbin(a.target_path, srcs)
    return f"{merged.path}: {len(srcs)} files, {merged.num_docs} documents, {merged.num_tokens} tokens"


def _shuffle_tokenized_data(a: argparse.Namespace) -> str | None:
    from jaxgpt.data.errors import PackedDataError
    from jaxgpt.data.shuffle import shuffle_pbin

    if a.batch_size < 1:
        raise PackedDataError(f"--batch_size must be at least 1, got {a.batch_size}")
    policy = a.file_existence_policy
    seed = shuffle_pbin(a.input_data_path, a.output_data_path, seed=a.seed, file_existence_policy=policy)
    return None if seed is None else f"{a.output_data_path} (seed {seed})"


def _shuffle_jsonl_data(a: argparse.Namespace) -> str | None:
    from jaxgpt.data.shuffle import shuffle_jsonl

    policy = a.file_existence_policy
    seed = shuffle_jsonl(a.input_data_path, a.output_data_path, seed=a.seed, file_existence_policy=policy)
    return None if seed is None else f"{a.output_data_path} (seed {seed})"


def _chunk(a: argparse.Namespace) -> str | None:
    from jaxgpt.data import chunks

    make = chunks.create_pbin_chunk if a.command == "create_shuffled_dataset_chunk" else chunks.create_jsonl_chunk
    return make(
        a.input_file_list_path,
        a.input_data_root_path,
        a.output_chunk_file_path,
        chunk_id=a.chunk_id,
        num_chunks=a.num_chunks,
        file_existence_policy=a.file_existence_policy,
        global_seed=a.global_seed,
    )


COMMANDS = {
    "create_raw_index": _create_raw_index,
    "pack_encoded_data": _pack_encoded_data,
    "merge_packed_data": _merge_packed_data,
    "shuffle_tokenized_data": _shuffle_tokenized_data,
    "shuffle_jsonl_data": _shuffle_jsonl_data,
    "create_shuffled_dataset_chunk": _chunk,
    "create_shuffled_jsonl_chunk": _chunk,
}


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    with clean_errors():
        wrote = COMMANDS[args.command](args)
    if wrote is not None:
        print(f"wrote {wrote}")


if __name__ == "__main__":
    main()
