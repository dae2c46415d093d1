"""The project's data error, in a module of its own so that every data module can raise it without import cycles."""

from __future__ import annotations


class PackedDataError(ValueError):
    """A .idx/.pbin/.jsonl input is malformed; the message names the file and what is wrong."""
