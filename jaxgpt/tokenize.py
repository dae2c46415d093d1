"""Tokenizers for packing: a tokenizer.json loaded as HF `tokenizers` would run it, with a faster path that gives the same ids.

The fast path builds a `tiktoken.Encoding` from a byte-level BPE tokenizer.json (GPT-2 style): the vocabulary's
byte-level unicode strings map back to bytes and become the mergeable ranks, the pre-tokenizer is GPT-2's regex, and
added tokens are split out first and mapped to their ids, as HF does. It is used only when `fast_path_blocker` finds
nothing in the file that would make the two disagree (normalizer, prefix space, post-processor templates, BPE options,
merge ranks that are not the token ids, added-token flags ...), and a probe text must encode identically under both
before it is trusted; every other tokenizer runs on HF `tokenizers`. tests/test_pack_tokenize.py compares the two on the
bundled corpora, the golden files and unicode edge cases (every code point was checked once, see there).

Imports no jax: the packing tools use it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import numpy as np

from jaxgpt.pbin import PackedDataError, token_width

# The regex HF's ByteLevel pre-tokenizer uses when use_regex is true (GPT-2's).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# Encoded by both backends whenever the fast path is chosen; a difference means the fast path is not trusted.
PROBE_TEXT = (
    "Hello world! It's 2024: don't, won't, they'll, we've, I'm, she'd, you're.\r\n\tTabs\t\tand   spaces   \n\n\n"
    "Ünïcödé façade naïve — “quotes” ‘single’ … €100 £5 ¥3 ١٢٣ ४५६ 一二三 中文字符 日本語のテキスト 한국어 텍스트 "
    "emoji 😀👍🏽👨‍👩‍👧 e\u0301 a\u0308\u0323 \u200b\u200d\ufeff \u00a0\u2009\u3000 x\u2028y\u2029z \x0b\x0c\x1c\x85 "
    "numbers 3.14159 1,000,000 0x1F 1e-9 <|endoftext|>inside<|endoftext|> <|endoftext|> '''' 's 'S 'LL "
    + " " * 40
    + "end"
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable unicode character table that byte-level BPE vocabularies are written in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


def fast_path_blocker(spec: dict) -> str | None:
    """Why this tokenizer.json cannot run on tiktoken with identical ids, or None when it can."""
    model = spec.get("model") or {}
    if model.get("type", "BPE") != "BPE" or "merges" not in model:
        return f"model is {model.get('type')!r}, not BPE"
    for key, ok in [("dropout", None), ("continuing_subword_prefix", ""), ("end_of_word_suffix", "")]:
        if model.get(key) not in (ok, None):
            return f"model.{key} is {model.get(key)!r}"
    for key in ["byte_fallback", "ignore_merges"]:
        if model.get(key):
            return f"model.{key} is set"
    if spec.get("normalizer") is not None:
        return "it has a normalizer"
    if spec.get("truncation") is not None or spec.get("padding") is not None:
        return "it truncates or pads"
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") == "Sequence" and len(pre.get("pretokenizers", [])) == 1:
        pre = pre["pretokenizers"][0]
    if pre.get("type") != "ByteLevel" or pre.get("add_prefix_space") or not pre.get("use_regex", True):
        return f"pre_tokenizer is {pre!r}, not ByteLevel(add_prefix_space=False, use_regex=True)"
    post = spec.get("post_processor")
    if post is not None and post.get("type") != "ByteLevel":
        return f"post_processor {post.get('type')!r} may add tokens"
    added = spec.get("added_tokens") or []
    contents = [t["content"] for t in added]
    for t in added:
        if t.get("single_word") or t.get("lstrip") or t.get("rstrip") or not t["content"]:
            return f"added token {t['content']!r} has single_word/lstrip/rstrip set or is empty"
    if any(a != b and a in b for a in contents for b in contents):
        return "one added token is contained in another (the two backends split such overlaps differently)"
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    vocab = model["vocab"]
    added_ids = {t["id"] for t in added}
    base = {tok: i for tok, i in vocab.items() if i not in added_ids}
    if any(ch not in byte_of for tok in base for ch in tok):
        return "the vocabulary is not written in the byte-level alphabet"
    singles = {tok for tok in base if len(tok) == 1}
    if len(singles) != 256:
        return f"the vocabulary has {len(singles)} single-byte tokens, not 256"
    # tiktoken merges the adjacent pair whose concatenation has the lowest id; HF the pair with the lowest merge rank.
    # They agree when the merge results are exactly the multi-byte tokens and their ids rise with the merge rank.
    merged = [m.split(" ") if isinstance(m, str) else m for m in model["merges"]]
    if any(len(m) != 2 for m in merged):
        return "a merge is not a pair"
    merge_ids = [base.get(a + b) for a, b in merged]
    if None in merge_ids:
        return "a merge result is not in the vocabulary"
    if any(x >= y for x, y in zip(merge_ids, merge_ids[1:])):
        return "merge ranks do not follow token ids"
    if set(merge_ids) | {base[s] for s in singles} != set(base.values()):
        return "the vocabulary holds tokens that no merge produces"
    return None


@dataclasses.dataclass
class Tokenizer:
    """A tokenizer.json ready for packing: which backend, the base vocabulary size and the .pbin token width."""

    path: str
    backend: str  # "tiktoken" (fast path, ids proven equal) or "hf" (HF tokenizers)
    vocab_size: int  # base vocabulary, added tokens excluded (what Modalities sizes the token width by)
    width: int  # bytes per token in the .pbin
    max_id: int  # largest id the tokenizer can emit

    @functools.cached_property
    def _impl(self):
        return _build_tiktoken(self.path) if self.backend == "tiktoken" else _build_hf(self.path)

    def __getstate__(self):
        # Worker processes started by spawn rebuild the backend from the file instead of pickling it.
        state = dict(self.__dict__)
        state.pop("_impl", None)
        return state

    def token_id(self, token: str) -> int | None:
        """Id of `token` as HF's token_to_id finds it (added tokens, then the vocabulary), or None."""
        return _build_hf(self.path).token_to_id(token) if self.backend == "hf" else _lookup_json(self.path, token)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """Ids of each text as HF would give them (default special-token handling), as uint32 arrays."""
        if self.backend == "tiktoken":
            enc = self._impl
            allowed = enc.special_tokens_set
            return [enc.encode_to_numpy(t, allowed_special=allowed) for t in texts]
        return [np.asarray(e.ids, dtype=np.uint32) for e in self._impl.encode_batch(texts, add_special_tokens=True)]

    def decode(self, ids) -> str:
        """Text of the ids, special tokens kept (byte-level BPE decodes back to the exact text)."""
        ids = [int(i) for i in ids]
        if self.backend == "tiktoken":
            return self._impl.decode(ids)
        return self._impl.decode(ids, skip_special_tokens=False)


@functools.lru_cache(maxsize=4)
def _read_spec(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _lookup_json(path: str, token: str) -> int | None:
    spec = _read_spec(path)
    for t in spec.get("added_tokens") or []:
        if t["content"] == token:
            return t["id"]
    return spec["model"]["vocab"].get(token)


@functools.lru_cache(maxsize=4)
def _build_hf(path: str):
    import tokenizers

    return tokenizers.Tokenizer.from_file(path)


@functools.lru_cache(maxsize=4)
def _build_tiktoken(path: str):
    import tiktoken

    spec = _read_spec(path)
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    added = {t["content"]: t["id"] for t in spec.get("added_tokens") or []}
    added_ids = set(added.values())
    ranks = {bytes(byte_of[ch] for ch in tok): i for tok, i in spec["model"]["vocab"].items() if i not in added_ids}
    return tiktoken.Encoding(os.path.basename(path), pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=added)


def load_tokenizer(path: str | os.PathLike, backend: str = "auto") -> Tokenizer:
    """Loads a tokenizer.json; backend "auto" takes the fast path when it provably gives HF's ids, "hf" never does."""
    path = os.fspath(path)
    if backend not in ("auto", "hf", "tiktoken"):
        raise PackedDataError(f"tokenizer backend must be auto, hf or tiktoken, got {backend!r}")
    if not os.path.isfile(path):
        raise PackedDataError(f"{path}: tokenizer file not found")
    try:
        spec = _read_spec(path)
        hf = _build_hf(path)
    except Exception as e:  # noqa: BLE001 - a broken tokenizer file is one clear error
        raise PackedDataError(f"{path}: not a loadable tokenizer.json ({type(e).__name__}: {e})") from None
    vocab_size = hf.get_vocab_size(with_added_tokens=False)
    max_id = max(hf.get_vocab().values())
    chosen = "hf"
    if backend != "hf":
        blocker = fast_path_blocker(spec)
        if blocker is None:
            fast = Tokenizer(path, "tiktoken", vocab_size, token_width(vocab_size), max_id)
            slow = Tokenizer(path, "hf", vocab_size, token_width(vocab_size), max_id)
            if np.array_equal(fast.encode_batch([PROBE_TEXT])[0], slow.encode_batch([PROBE_TEXT])[0]):
                return fast
            blocker = "the probe text encodes differently"
        if backend == "tiktoken":
            raise PackedDataError(f"{path}: the tiktoken fast path cannot reproduce this tokenizer: {blocker}")
    return Tokenizer(path, chosen, vocab_size, token_width(vocab_size), max_id)
