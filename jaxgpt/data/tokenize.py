"""Tokenizers for packing: a tokenizer.json loaded as HF `tokenizers` runs it, with a faster tiktoken path for GPT-2.

The fast path builds a `tiktoken.Encoding` from a byte-level BPE tokenizer.json (GPT-2 style): the vocabulary's
byte-level unicode strings map back to bytes and become the mergeable ranks, the pre-tokenizer is GPT-2's regex, and
added tokens are split out first and mapped to their ids, as HF does. The two BPEs are not the same algorithm: tiktoken
merges any two adjacent parts whose concatenation is in the vocabulary (lowest rank first), HF only the pairs its
`merges` list holds, so the structural checks of `fast_path_blocker` cannot show that the ids agree (a 3-merge
vocabulary that passes them all gives different ids, see tests/test_pack_tokenize.py). The fast path is therefore taken
only for the vetted vocabularies of `VETTED_VOCABULARIES` (GPT-2's: every code point and 250k random concatenations of
its tokens encoded identically), only when the structural checks pass as well, and only when a probe text encodes
identically under both; every other tokenizer runs on HF `tokenizers`.

Imports no jax: the packing tools use it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os

import numpy as np

from jaxgpt.data.format.pbin import token_width
from jaxgpt.errors import PackedDataError

# The regex HF's ByteLevel pre-tokenizer uses when use_regex is true (GPT-2's).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# `vocabulary_hash` of the vocabularies whose fast-path ids were compared with HF's beyond the structural checks.
# GPT-2's (data/tokenizer/tokenizer.json, also as `tokenizers` re-saves it): every Unicode code point, alone and in
# context, and 250k random concatenations of its tokens' text encoded to the same ids, 0 differences; the test suite
# repeats a part of that check on every run.
EOD_TOKEN = (
    "<|endoftext|>"  # GPT-2's end of document: packing appends it, generation stops at it, doc masks split at it
)

VETTED_VOCABULARIES = {
    "c86787df8cc8ddf8561ea90f12784471aba51509b6f6c2c5f7bb86c71e2d807c": "GPT-2",
}
NOT_VETTED = "not a vetted vocabulary (fast path only for GPT-2's; tiktoken can merge pairs HF's merges list lacks)"

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


def vocabulary_hash(spec: dict) -> str:
    """SHA-256 of a tokenizer.json's vocab and merges, the same however the file was written (whitespace, key order,
    merges as "a b" strings or [a, b] pairs)."""
    model = spec.get("model") or {}
    # Joining a pair with a space is unambiguous here: byte-level tokens write the space byte as "Ġ".
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    canonical = {"vocab": model.get("vocab") or {}, "merges": merges}
    text = json.dumps(canonical, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def fast_path_blocker(spec: dict) -> str | None:
    """Why this tokenizer.json may not run on tiktoken; None for a vetted vocabulary that passes every check."""
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
    # tiktoken merges the adjacent pair whose concatenation has the lowest id; HF the listed pair with the lowest merge
    # rank. These checks are necessary for the two to agree, not sufficient: tiktoken also merges pairs that the merges
    # list lacks when their concatenation is a token, hence the allow-list below.
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
    if vocabulary_hash(spec) not in VETTED_VOCABULARIES:
        return NOT_VETTED
    return None


@dataclasses.dataclass(frozen=True)
class Encoding:
    """How texts are encoded beyond the tokenizer.json: the options of a Modalities `pretrained_hf_tokenizer`, which
    HF transformers applies through the `tokenizers` library's own special tokens, truncation and padding."""

    specials: tuple[str, ...] = ()  # tokens made special (split out of the text first), as add_special_tokens does
    max_length: int | None = None  # the length truncation cuts to and padding fills to
    truncation: bool = False  # cut every text to max_length ids (from the right)
    pad_token: str | None = None  # pad every text to max_length ids with this token (padding: max_length)

    @property
    def plain(self) -> bool:
        return not (self.specials or self.truncation or self.pad_token)


PLAIN = Encoding()  # the tokenizer.json as it is


@dataclasses.dataclass
class Tokenizer:
    """A tokenizer.json ready for packing: which backend, the base vocabulary size and the .pbin token width."""

    path: str
    backend: str  # "tiktoken" (fast path, vetted vocabulary) or "hf" (HF tokenizers)
    vocab_size: int  # base vocabulary, added tokens excluded (what Modalities sizes the token width by)
    width: int  # bytes per token in the .pbin
    max_id: int  # largest id the tokenizer can emit
    blocker: str | None = None  # why backend "auto" did not take the fast path (None when it did or "hf" was asked)
    encoding: Encoding = PLAIN  # special tokens, truncation and padding (backend "hf" only)

    @functools.cached_property
    def _impl(self):
        return _build_tiktoken(self.path) if self.backend == "tiktoken" else _build_hf(self.path, self.encoding)

    def __getstate__(self):
        # Worker processes started by spawn rebuild the backend from the file instead of pickling it.
        state = dict(self.__dict__)
        state.pop("_impl", None)
        return state

    def token_id(self, token: str) -> int | None:
        """Id of `token` as HF's token_to_id finds it (added tokens, then the vocabulary), or None."""
        return self._impl.token_to_id(token) if self.backend == "hf" else _lookup_json(self.path, token)

    def encode_batch(self, texts: list[str], add_special_tokens: bool = True) -> list[np.ndarray]:
        """Ids of each text as HF would give them, as uint32 arrays. add_special_tokens: whether the tokenizer's
        post-processor adds its tokens (a BOS, say; GPT-2's adds none, and tiktoken's path has no post-processor)."""
        if self.backend == "tiktoken":
            enc = self._impl
            allowed = enc.special_tokens_set
            return [enc.encode_to_numpy(t, allowed_special=allowed) for t in texts]
        encoded = self._impl.encode_batch(texts, add_special_tokens=add_special_tokens)
        return [np.asarray(e.ids, dtype=np.uint32) for e in encoded]

    def unknown_ids(self, ids) -> np.ndarray:
        """The ids, in order, no token of this tokenizer has (tiktoken cannot decode them, HF decodes them as "")."""
        known = np.zeros(self.max_id + 1, dtype=bool)
        known[list(_build_hf(self.path).get_vocab().values())] = True
        ids = np.asarray(ids, dtype=np.int64)
        return ids[(ids < 0) | (ids > self.max_id) | ~known[np.clip(ids, 0, self.max_id)]]

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
def _build_hf(path: str, encoding: Encoding = PLAIN):
    import tokenizers

    tokenizer = tokenizers.Tokenizer.from_file(path)
    if encoding.specials:
        # transformers' add_special_tokens: a token of the vocabulary keeps its id and becomes special
        tokenizer.add_special_tokens(
            [tokenizers.AddedToken(t, special=True, normalized=False) for t in encoding.specials]
        )
    if encoding.truncation:
        tokenizer.enable_truncation(encoding.max_length, direction="right")
    if encoding.pad_token is not None:
        pad_id = tokenizer.token_to_id(encoding.pad_token)
        tokenizer.enable_padding(
            length=encoding.max_length, direction="right", pad_id=pad_id, pad_token=encoding.pad_token
        )
    return tokenizer


@functools.lru_cache(maxsize=4)
def _build_tiktoken(path: str):
    import tiktoken

    spec = _read_spec(path)
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    added = {t["content"]: t["id"] for t in spec.get("added_tokens") or []}
    added_ids = set(added.values())
    ranks = {bytes(byte_of[ch] for ch in tok): i for tok, i in spec["model"]["vocab"].items() if i not in added_ids}
    return tiktoken.Encoding(os.path.basename(path), pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=added)


def load_tokenizer(path: str | os.PathLike, backend: str = "auto", encoding: Encoding = PLAIN) -> Tokenizer:
    """Loads a tokenizer.json. Backend "auto" takes the tiktoken fast path for a vetted vocabulary (GPT-2's) that passes
    every check, else HF; "hf" never takes it; "tiktoken" refuses a tokenizer that "auto" would not run on tiktoken.
    An `encoding` other than the plain one runs on HF, which applies it."""
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
    if backend == "hf" or (backend == "auto" and not encoding.plain):
        return Tokenizer(path, "hf", vocab_size, token_width(vocab_size), max_id, encoding=_checked(encoding, hf, path))
    if not encoding.plain:
        raise PackedDataError(f"{path}: tokenizer backend 'tiktoken' refused: special tokens, truncation or padding")
    blocker = fast_path_blocker(spec)
    for t in spec.get("added_tokens") or []:
        # HF gives an added token missing from the vocabulary the next free id, whatever id the file writes for it;
        # tiktoken would use the file's id.
        hf_id = hf.token_to_id(t["content"])
        if blocker is None and hf_id != t["id"]:
            blocker = f"added token {t['content']!r} has id {t['id']} in the file but {hf_id} in HF tokenizers"
    if blocker is None:
        fast = Tokenizer(path, "tiktoken", vocab_size, token_width(vocab_size), max_id)
        slow = Tokenizer(path, "hf", vocab_size, token_width(vocab_size), max_id)
        if np.array_equal(fast.encode_batch([PROBE_TEXT])[0], slow.encode_batch([PROBE_TEXT])[0]):
            return fast
        blocker = "the probe text encodes differently"
    if backend == "tiktoken":
        # Never a silent fallback and never unchecked ids: the caller asked for tiktoken, so say why it is refused.
        raise PackedDataError(f"{path}: tokenizer backend 'tiktoken' refused: {blocker}; use 'auto' or 'hf'")
    return Tokenizer(path, "hf", vocab_size, token_width(vocab_size), max_id, blocker)


def _checked(encoding: Encoding, hf, path: str) -> Encoding:
    """The encoding, after checking that its tokens exist: adding one would need a row the model lacks (`jaxgpt data
    add_special_tokens` adds tokens into the table's spare rows; Modalities refuses them)."""
    for token in (*encoding.specials, *([encoding.pad_token] if encoding.pad_token else [])):
        if hf.token_to_id(token) is None:
            raise PackedDataError(
                f"{path}: special token {token!r} is not in the vocabulary (`jaxgpt data add_special_tokens` adds it)"
            )
    if (encoding.truncation or encoding.pad_token) and not (
        isinstance(encoding.max_length, int) and encoding.max_length > 0
    ):
        raise PackedDataError(f"{path}: truncation and padding need a max_length >= 1, got {encoding.max_length!r}")
    return encoding
