"""Tokenizes the lines of an indexed JSONL file and packs them into a .pbin, byte-identical to Modalities' packer.

    python tools/create_packed_data.py --jq_pattern .raw_content --tokenizer_file tokenizer.json \
        [--index_path IN.idx] [--dst_path OUT.pbin] [--eod_token '<|endoftext|>'] [--num_processes N] \
        [--skip_faulty_lines] [--file_existence_policy error|skip|override] IN.jsonl
"""

import argparse

from jaxgpt.data.cli import clean_errors
from jaxgpt.data.index import FILE_EXISTENCE_POLICIES
from jaxgpt.data.pack import pack_jsonl


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src_path", help="the JSONL file")
    p.add_argument("--jq_pattern", required=True, help="jq expression selecting each line's text, e.g. .raw_content")
    p.add_argument("--tokenizer_file", required=True, help="a HF tokenizer.json")
    p.add_argument("--index_path", default=None, help="the JSONL's .idx (default: next to it, same stem)")
    p.add_argument("--dst_path", default=None, help="output .pbin (default: next to the input, same stem)")
    p.add_argument("--eod_token", default="<|endoftext|>", help="appended to each document unless it ends with it")
    p.add_argument("--num_processes", type=int, default=None, help="tokenizer processes (default: CPU count)")
    p.add_argument("--skip_faulty_lines", action="store_true", help="skip lines that cannot be packed, and list them")
    p.add_argument("--file_existence_policy", choices=FILE_EXISTENCE_POLICIES, default="error")
    p.add_argument(
        "--tokenizer_backend",
        choices=("auto", "hf", "tiktoken"),
        default="auto",
        help="auto: tiktoken for GPT-2's vocabulary (its ids matched HF's on every Unicode code point and 250k random"
        " token concatenations), HF tokenizers for every other; tiktoken: refuse any other vocabulary; hf: always HF",
    )
    p.add_argument("--no_progress", action="store_true", help="no progress bar on stderr")
    args = p.parse_args()
    with clean_errors():
        report = pack_jsonl(
            args.src_path,
            args.dst_path,
            tokenizer_file=args.tokenizer_file,
            jq_pattern=args.jq_pattern,
            eod_token=args.eod_token,
            index_path=args.index_path,
            num_processes=args.num_processes,
            skip_faulty_lines=args.skip_faulty_lines,
            file_existence_policy=args.file_existence_policy,
            tokenizer_backend=args.tokenizer_backend,
            progress=not args.no_progress,
        )
    if report is not None:
        print(
            f"wrote {report.dst}: {report.num_docs} documents, {report.num_tokens} tokens of {report.width} bytes"
            f" ({report.backend} tokenizer{f': {report.blocker}' if report.blocker else ''},"
            f" {report.num_tokens / report.seconds / 1e6:.2f}M tokens/s,"
            f" {len(report.skipped)} lines skipped)"
        )


if __name__ == "__main__":
    main()
