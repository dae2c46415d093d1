"""The data side of jaxgpt: Modalities' packed files, written byte-identically, and the training batches read from them.

    *.jsonl --prepare/index.py--> .idx --prepare/pack.py (+ tokenize.py)--> .pbin --loader/source.py--> windows
        --loader/pipeline.py--> global batches

    format/     the .idx/.pbin format: pbin.py (header, PbinWriter, validated reading, merge, inspect), pickles.py
                (the index pickles: a restricted streaming reader that never runs code, a byte-exact writer)
    prepare/    the offline tools: index.py (JSONL -> .idx, line faults), pack.py (.idx + JSONL -> .pbin in worker
                processes), pack_config.py (Modalities' packing YAML), merge.py, shuffle.py, chunks.py, ranges.py
    loader/     the training-time reader: source.py (PackedWindowSource, Modalities' S + 1 token windows),
                pipeline.py (seeded, host-sharded global batches as jax.Arrays, through Grain)
    tokenize.py the tokenizer.json as HF tokenizers runs it (with a vetted tiktoken fast path for GPT-2), shared by
                packing and generation
    commands.py `jaxgpt data NAME`: Modalities' data commands under their own names and flags

Jax-free: every module but loader/pipeline.py, so that the tools and `from jaxgpt import PackedWindowSource` never load
jax or grain.
"""
