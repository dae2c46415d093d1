"""Several .pbin files (or folders of them) -> one, with each document's true offset (Modalities' merge is off by 12
bytes per preceding file; jaxgpt.data.format.pbin.merge_pbin says how)."""

from __future__ import annotations

import pathlib

from jaxgpt.data.format.pbin import merge_pbin
from jaxgpt.data.prepare.index import check_output
from jaxgpt.errors import PackedDataError


def expand_pbin_paths(paths: list[str]) -> list[str]:
    """Each directory stands for every .pbin below it, in sorted path order (Modalities' glob order is the disk's)."""
    out: list[str] = []
    for p in map(pathlib.Path, paths):
        out.extend(map(str, sorted(p.glob("**/*.pbin"))) if p.is_dir() else [str(p)])
    return out


def merge_files(dst: str, src_paths: list[str], file_existence_policy: str) -> str | None:
    """Merges the .pbin files named (directories expanded) into `dst`; what it wrote, or None when skipped."""
    srcs = expand_pbin_paths(src_paths)
    if not srcs:
        raise PackedDataError(f"no .pbin files in {' '.join(src_paths)}")
    if not check_output(dst, file_existence_policy, srcs):
        return None
    merged = merge_pbin(dst, srcs)
    return f"{merged.path}: {len(srcs)} files, {merged.num_docs} documents, {merged.num_tokens} tokens"
