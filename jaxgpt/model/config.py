"""ModelConfig: the architecture as a frozen dataclass; every field defaults to its knob in configs/base.py."""

from __future__ import annotations

import dataclasses

import ml_collections

from jaxgpt import config
from jaxgpt.model.attention import ATTENTIONS
from jaxgpt.model.layers import MLPS, NORMS

POS_EMB = ("rope", "learned", "none")  # model.pos_emb: rotary, a learned table, or none


@dataclasses.dataclass(frozen=True)
@config.knob_defaults("model", seq_len="data.seq_len")
class ModelConfig:
    vocab_size: int
    n_layer: int
    n_head_q: int
    n_head_kv: int
    n_embd: int
    ffn_hidden: int
    mlp: str  # a key of layers.MLPS
    pos_emb: str  # "rope" | "learned" | "none"
    rope_base: float
    norm: str  # a key of layers.NORMS
    norm_eps: float
    attn: str  # a key of attention.ATTENTIONS
    qk_norm: bool
    use_bias: bool
    tie_embeddings: bool
    dropout: float
    init_std: float
    seq_len: int  # max positions (data.seq_len)

    def __post_init__(self):
        for name in ("vocab_size", "n_layer", "n_head_q", "n_head_kv", "n_embd", "ffn_hidden", "seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{_key(name)}={value!r} must be a positive int")
        choices = {"mlp": tuple(MLPS), "pos_emb": POS_EMB, "norm": tuple(NORMS), "attn": tuple(ATTENTIONS)}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{_key(name)}={getattr(self, name)!r} must be one of {allowed}")
        for name in ("qk_norm", "use_bias", "tie_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{_key(name)}={getattr(self, name)!r} must be True or False")
        if self.n_embd % self.n_head_q:
            raise ValueError(f"model.n_head_q={self.n_head_q} must divide model.n_embd={self.n_embd}")
        if self.n_head_q % self.n_head_kv:
            raise ValueError(f"model.n_head_kv={self.n_head_kv} must divide model.n_head_q={self.n_head_q}")
        if self.pos_emb == "rope" and self.head_dim % 2:
            raise ValueError(f"rotary needs an even head dim, but model.n_embd / model.n_head_q = {self.head_dim}")
        if not self.rope_base > 1.0:
            raise ValueError(f"model.rope_base={self.rope_base!r} must be > 1")
        if not self.norm_eps > 0.0:
            raise ValueError(f"model.norm_eps={self.norm_eps!r} must be > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout={self.dropout!r} must be in [0, 1)")
        if not self.init_std > 0.0:
            raise ValueError(f"model.init_std={self.init_std!r} must be > 0")

    @classmethod
    def from_config(cls, cfg: ml_collections.ConfigDict) -> ModelConfig:
        """From the root config: the keys of cfg.model (a missing one takes its default), plus cfg.data.seq_len."""
        return config.from_section(cls, cfg, "model", seq_len=cfg.data.seq_len)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head_q

    @property
    def mlp_hidden(self) -> int:
        """The MLP's hidden size F: what its class makes of ffn_hidden (SwiGLU keeps ~2/3, GELU all of it)."""
        return MLPS[self.mlp].hidden_size(self.ffn_hidden)


def _key(name: str) -> str:
    return "data.seq_len" if name == "seq_len" else f"model.{name}"
