"""The data side of jaxgpt: Modalities' packed files, read and written byte-identically, and the training batches.

The data path, file by file:

    *.jsonl --index.py--> .idx --pack.py (+ tokenize.py)--> .pbin --source.py--> windows --pipeline.py--> global batches

    index.py     JSONL -> .idx: (byte offset, byte length) per line, every line checked as JSON; the line faults
    pack.py      .idx + JSONL -> .pbin: jq pattern -> tokenizer -> EOD once, in worker processes, in line order
    tokenize.py  tokenizer.json as HF tokenizers runs it, with a vetted tiktoken fast path for GPT-2
    pbin.py      the .idx/.pbin format: header, PbinWriter, validated reading, merge, inspect
    pickles.py   the index pickles: restricted (never runs code) streaming reader, byte-exact writer
    atomic.py    atomic_output, the one atomic writer (temporary file, renamed when complete)
    errors.py    PackedDataError
    source.py    PackedWindowSource: Modalities' S + 1 token windows over one or more .pbin
    pipeline.py  seeded, host-sharded global batches as jax.Arrays (Grain)
    cli.py       clean_errors for the tools in tools/

Jax-free: every module but pipeline.py (numpy and the standard library; pack.py and tokenize.py add jq, tqdm,
tokenizers and tiktoken), so the tools and `from jaxgpt import PackedWindowSource` never load jax or grain.
pipeline.py is the only module of jaxgpt/data that depends on jax or grain.

This file imports nothing.
"""
