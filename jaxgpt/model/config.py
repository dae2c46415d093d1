"""ModelConfig: the architecture as a frozen dataclass. Its defaults are the getting-started gpt60m, Modalities'
GPT2LLM at 59,855,872 parameters; configs/*.py change only what differs."""

from __future__ import annotations

import dataclasses

from jaxgpt.errors import ConfigError, check_int
from jaxgpt.knobs import Section, knob
from jaxgpt.model.attention import ATTENTIONS
from jaxgpt.model.layers import MLPS, NORMS

POS_EMB = ("rope", "learned", "none")  # model.pos_emb: rotary, a learned table, or none


@dataclasses.dataclass(frozen=True)
class ModelConfig(Section):
    SECTION = "model"

    vocab_size: int = 50304  # GPT-2's 50257 rounded up to a multiple of 64 for fast matmuls
    n_layer: int = 10  # transformer blocks
    n_head_q: int = 8  # query heads
    n_head_kv: int = 8  # key/value heads; < n_head_q is grouped-query attention (must divide n_head_q)
    n_embd: int = 512  # model width D; head dim K = n_embd // n_head_q
    ffn_hidden: int = 2048  # MLP hidden size before the SwiGLU rule ceil(int(2*F/3)/256)*256 (GELU uses it as is)
    mlp: str = "swiglu"  # a key of layers.MLPS: "swiglu" | "gelu"
    pos_emb: str = "rope"  # "rope" (NeoX rotate-half) | "learned" | "none"
    rope_base: float = 10000.0  # rotary base frequency
    norm: str = "layer"  # a key of layers.NORMS: "layer" (LayerNorm with bias) | "layer_no_bias" | "rms" (RMSNorm)
    norm_eps: float = 1e-5  # epsilon of every norm
    attn: str = "causal"  # a key of attention.ATTENTIONS: "causal" (grouped-query when n_head_kv < n_head_q)
    qk_norm: bool = False  # normalise q and k per head before attention
    use_bias: bool = False  # biases on the linear layers
    tie_embeddings: bool = True  # lm_head reuses wte
    dropout: float = 0.0  # dropout rate on attention output, MLP output and embeddings (0 disables)
    init_std: float = 0.02  # "scaled" init: N(0, std), output projections N(0, std / sqrt(2 * n_layer))
    # Document masking: a token attends only to tokens of its own document, documents ending at eod_token_id
    doc_mask: bool = False
    doc_positions: bool = False  # rotary / learned positions restart at 0 at each document start
    eod_token_id: int = 50256  # the token each document ends with (GPT-2's <|endoftext|>); read when either is on
    seq_len: int = knob(512, key="data.seq_len")  # max positions: the training sequence length data.seq_len

    def __post_init__(self):
        for name in ("vocab_size", "n_layer", "n_head_q", "n_head_kv", "n_embd", "ffn_hidden", "seq_len"):
            check_int(self._key(name), getattr(self, name))
        check_int(self._key("eod_token_id"), self.eod_token_id, minimum=0)
        choices = {"mlp": tuple(MLPS), "pos_emb": POS_EMB, "norm": tuple(NORMS), "attn": tuple(ATTENTIONS)}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{self._key(name)}={getattr(self, name)!r} must be one of {allowed}")
        for name in ("qk_norm", "use_bias", "tie_embeddings", "doc_mask", "doc_positions"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{self._key(name)}={getattr(self, name)!r} must be True or False")
        rules = {
            f"model.n_head_q={self.n_head_q} must divide model.n_embd={self.n_embd}": self.n_embd % self.n_head_q == 0,
            f"model.n_head_kv={self.n_head_kv} must divide model.n_head_q={self.n_head_q}": (
                self.n_head_q % self.n_head_kv == 0
            ),
            f"rotary needs an even head dim, but model.n_embd / model.n_head_q = {self.n_embd / self.n_head_q:g}": (
                self.pos_emb != "rope" or self.head_dim % 2 == 0
            ),
            f"model.rope_base={self.rope_base!r} must be > 1": self.rope_base > 1.0,
            f"model.norm_eps={self.norm_eps!r} must be > 0": self.norm_eps > 0.0,
            f"model.dropout={self.dropout!r} must be in [0, 1)": 0.0 <= self.dropout < 1.0,
            f"model.init_std={self.init_std!r} must be > 0": self.init_std > 0.0,
            f"model.eod_token_id={self.eod_token_id} must be below model.vocab_size={self.vocab_size}": (
                not self.documents or self.eod_token_id < self.vocab_size
            ),
        }
        for message, holds in rules.items():
            if not holds:
                raise ConfigError(message)

    @classmethod
    def _key(cls, name: str) -> str:
        return cls.knob_key(cls.__dataclass_fields__[name])

    @property
    def documents(self) -> bool:
        """Whether the forward pass finds document boundaries (for the mask, the positions or both)."""
        return self.doc_mask or self.doc_positions

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head_q

    @property
    def mlp_hidden(self) -> int:
        """The MLP's hidden size F: what its class makes of ffn_hidden (SwiGLU keeps ~2/3, GELU all of it)."""
        return MLPS[self.mlp].hidden_size(self.ffn_hidden)
