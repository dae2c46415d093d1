"""Concatenates .pbin files into one with correct document offsets (Modalities' merge gets them wrong by 12 per file).

    python tools/merge_packed_data.py [--file_existence_policy error|skip|override] OUT.pbin IN1.pbin [IN2.pbin|DIR ...]

A directory stands for every .pbin below it, in sorted path order. Inputs may use the old offset-12 index layout.
The same merge as `jaxgpt data merge_packed_data IN... OUT` (Modalities' order of arguments).
"""

import argparse

from jaxgpt.cli import clean_errors
from jaxgpt.data.commands import POLICIES

if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="tools/merge_packed_data.py", description=__doc__.splitlines()[0])
    p.add_argument("dst_path", help="output .pbin")
    p.add_argument("src_paths", nargs="+", help=".pbin files or directories holding them")
    p.add_argument("--file_existence_policy", choices=POLICIES, default="error")
    args = p.parse_args()
    with clean_errors():
        from jaxgpt.data.prepare.merge import merge_files

        wrote = merge_files(args.dst_path, args.src_paths, args.file_existence_policy)
    if wrote is not None:
        print(f"wrote {wrote}")
