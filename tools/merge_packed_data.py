"""Concatenates .pbin files into one with correct document offsets (Modalities' merge gets them wrong by 12 per file).

    python tools/merge_packed_data.py [--file_existence_policy error|skip|override] OUT.pbin IN1.pbin [IN2.pbin|DIR ...]

A directory stands for every .pbin below it, in sorted path order. Inputs may use the old offset-12 index layout.
"""

import argparse

from jaxgpt.data.cli import clean_errors, expand_pbin_paths
from jaxgpt.data.index import FILE_EXISTENCE_POLICIES, check_output
from jaxgpt.data.pbin import merge_pbin


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dst_path", help="output .pbin")
    p.add_argument("src_paths", nargs="+", help=".pbin files or directories holding them")
    p.add_argument("--file_existence_policy", choices=FILE_EXISTENCE_POLICIES, default="error")
    args = p.parse_args()
    srcs = expand_pbin_paths(args.src_paths)
    with clean_errors():
        if not srcs:
            raise SystemExit(f"error: no .pbin files in {' '.join(args.src_paths)}")
        if not check_output(args.dst_path, args.file_existence_policy, srcs):
            return
        merged = merge_pbin(args.dst_path, srcs)
    print(f"wrote {merged.path}: {len(srcs)} files, {merged.num_docs} documents, {merged.num_tokens} tokens")


if __name__ == "__main__":
    main()
