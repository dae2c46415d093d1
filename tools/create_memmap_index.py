"""Writes the .idx of a JSONL file (byte offset and length per line), byte-identical to Modalities' create_raw_index.

python tools/create_memmap_index.py [--index_path OUT.idx] [--file_existence_policy error|skip|override] IN.jsonl
"""

import argparse

from jaxgpt.data.cli import clean_errors
from jaxgpt.data.index import FILE_EXISTENCE_POLICIES, create_index


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src_path", help="the JSONL file to index")
    p.add_argument("--index_path", default=None, help="output .idx (default: next to the input, same stem)")
    p.add_argument("--file_existence_policy", choices=FILE_EXISTENCE_POLICIES, default="error")
    args = p.parse_args()
    with clean_errors():
        out = create_index(args.src_path, args.index_path, args.file_existence_policy)
    if out is not None:
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
