"""Writes the .idx of a JSONL file (byte offset and length per line), byte-identical to Modalities' create_raw_index.

python tools/create_memmap_index.py [--index_path OUT.idx] [--file_existence_policy error|skip|override] IN.jsonl
"""

from jaxgpt.cli import run_as

if __name__ == "__main__":
    run_as("create_memmap_index", prog="tools/create_memmap_index.py")
