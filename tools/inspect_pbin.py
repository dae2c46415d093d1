"""Shows a .pbin: header, token width, documents, tokens, format variant, validation verdict and one decoded document.

    python tools/inspect_pbin.py FILE.pbin [--tokenizer_file tokenizer.json] [--doc N]

Exit status 1 when the file is invalid, or when the document holds ids that the tokenizer does not have.
"""

import argparse
import sys

from jaxgpt.data.cli import clean_errors
from jaxgpt.data.pbin import PackedDataError, inspect


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("path", help="the .pbin file")
    p.add_argument("--tokenizer_file", default=None, help="decode the document with this tokenizer.json")
    p.add_argument("--doc", type=int, default=0, help="which document to show (0-based; negative counts from the end)")
    args = p.parse_args()
    with clean_errors():
        facts, pf = inspect(args.path)
        for key, value in facts.items():
            print(f"{key:>12}: {value}")
        if pf is None:
            raise SystemExit(1)
        if pf.num_docs == 0:
            return
        doc = args.doc + pf.num_docs if args.doc < 0 else args.doc
        tokens = pf.document(doc)
        print(f"\n--- document {doc}: {len(tokens)} tokens, first ids {tokens[:12].tolist()}")
        if args.tokenizer_file:
            from jaxgpt.data.tokenize import load_tokenizer

            tokenizer = load_tokenizer(args.tokenizer_file)
            # An id beyond the vocabulary means the wrong tokenizer: tiktoken raises on it and HF decodes it to "".
            unknown = tokenizer.unknown_ids(tokens)
            if len(unknown):
                raise PackedDataError(
                    f"{args.path}: document {doc} holds token id {unknown[0]}, which {args.tokenizer_file} does not"
                    f" have (its ids end at {tokenizer.max_id}); is it the tokenizer this file was packed with?"
                )
            sys.stdout.write(tokenizer.decode(tokens) + "\n")


if __name__ == "__main__":
    main()
