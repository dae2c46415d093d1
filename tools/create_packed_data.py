"""Tokenizes the lines of an indexed JSONL file and packs them into a .pbin, byte-identical to Modalities' packer.

    python tools/create_packed_data.py --jq_pattern .raw_content --tokenizer_file tokenizer.json \
        [--index_path IN.idx] [--dst_path OUT.pbin] [--eod_token '<|endoftext|>'] [--num_processes N] \
        [--skip_faulty_lines] [--file_existence_policy error|skip|override] IN.jsonl
"""

from jaxgpt.cli import run_as

if __name__ == "__main__":
    run_as("create_packed_data", prog="tools/create_packed_data.py")
