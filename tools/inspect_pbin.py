"""Shows a .pbin: header, token width, documents, tokens, format variant, validation verdict and one decoded document.

    python tools/inspect_pbin.py FILE.pbin [--tokenizer_file tokenizer.json] [--doc N]

Exit status 1 when the file is invalid, or when the document holds ids that the tokenizer does not have.
"""

from jaxgpt.cli import run_as

if __name__ == "__main__":
    run_as("inspect_pbin", prog="tools/inspect_pbin.py")
