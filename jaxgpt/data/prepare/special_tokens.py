"""A tokenizer.json with new special tokens (chat markers) at the free ids below the model's vocab table.

The model's embedding table is padded past the tokenizer (gpt60m: 50304 rows, GPT-2's tokenizer 50257 ids), so new
tokens get rows without resizing anything; a warm start (jaxgpt/interop/warmstart.py) draws those rows afresh.
Modalities cannot add tokens (its issue #208: no embedding resize). HF `tokenizers` assigns the ids and writes the
file; a token the tokenizer already has is left alone (HF would mark it special and keep its id).

Imports HF `tokenizers` and the standard library only (no jax).
"""

from __future__ import annotations

import os

from jaxgpt.data.prepare.index import check_output
from jaxgpt.errors import PackedDataError
from jaxgpt.io import atomic_output


def add_special_tokens(
    tokenizer_file: str, out: str, tokens: list[str], vocab_size: int, file_existence_policy: str = "error"
) -> str | None:
    """Writes `tokenizer_file` with each new token of `tokens` added as a special token to `out`; what happened to
    each token, or None when skipped by the policy. Nothing is written when the new ids reach `vocab_size`."""
    from tokenizers import AddedToken

    tok = _load(tokenizer_file)
    before = _size(tok)
    report = []
    for token in tokens:
        if not token:
            raise PackedDataError("TOKEN '' is empty: a special token needs at least one character")
        have = tok.token_to_id(token)
        if have is None:
            tok.add_special_tokens([AddedToken(token, special=True, normalized=False)])
            report.append(f"{token!r}: new id {tok.token_to_id(token)}")
        else:
            report.append(f"{token!r}: already id {have}, not added")
    _check_room(before, _size(tok), vocab_size)
    if not check_output(out, file_existence_policy, [tokenizer_file]):
        return None
    with atomic_output(out) as tmp:
        tok.save(tmp)
    return f"{out}: {'; '.join(report)}"


def _load(path: str):
    from tokenizers import Tokenizer

    if not os.path.isfile(path):
        raise PackedDataError(f"--tokenizer_file={path}: no such file")
    try:
        return Tokenizer.from_file(path)
    except Exception as e:  # noqa: BLE001 - a broken tokenizer file is one clear error
        reason = f"{type(e).__name__}: {e}"
        raise PackedDataError(f"--tokenizer_file={path}: not a loadable tokenizer.json ({reason})") from None


def _size(tok) -> int:
    """Ids the tokenizer uses: its largest id + 1 (the rows of the model's table it needs)."""
    return max(tok.get_vocab(with_added_tokens=True).values()) + 1


def _check_room(before: int, after: int, vocab_size: int) -> None:
    if after > vocab_size:
        free = max(vocab_size - before, 0)
        raise PackedDataError(
            f"--vocab_size={vocab_size}: the new tokens need {after - before} rows past the tokenizer's {before} ids,"
            f" the model's table has {free} free; nothing written"
        )
