"""ZooConfig: everything needed to rebuild a zoo model; saved as JSON next to the weights."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from interp import InterpError
from interp.zoo.layouts import resolve_layout


@dataclass
class ZooConfig:
    vocab_size: int
    d_model: int = 128
    n_layers: int = 12
    layout: str | list = "transformer"   # preset name or explicit list (see layouts.py)
    n_heads: int = 4                      # attention / GDN / GLA heads
    head_dim: int = 32                    # per-head q/k (and v) dimension
    mlp_hidden: int = 0                   # SwiGLU hidden size; 0 -> round(8/3 * d_model)
    conv_size: int = 4                    # short causal conv of recurrent mixers
    gdn_neg_eig: bool = False             # GDN with beta in (0, 2): negative eigenvalues allowed
    mamba_head_dim: int = 32              # Mamba2 P
    mamba_state: int = 32                 # Mamba2 N
    mamba_expand: int = 2
    gla_low_rank: int = 16                # GLA decay projection rank
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    layers: list = field(default_factory=list)  # resolved layout, filled by validate()

    def __post_init__(self):
        self.validate()

    def validate(self) -> "ZooConfig":
        def need(cond, msg):
            if not cond:
                raise InterpError(f"invalid model config: {msg}")
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "head_dim", "conv_size",
                     "mamba_head_dim", "mamba_state", "mamba_expand", "gla_low_rank"):
            v = getattr(self, name)
            need(isinstance(v, int) and v >= 1, f"{name} must be a positive integer, got {v!r}")
        need(self.mlp_hidden >= 0, f"mlp_hidden must be >= 0, got {self.mlp_hidden}")
        need(self.head_dim % 2 == 0, f"head_dim must be even for RoPE, got {self.head_dim}")
        need((self.mamba_expand * self.d_model) % self.mamba_head_dim == 0,
             f"mamba_expand*d_model={self.mamba_expand * self.d_model} must be divisible by "
             f"mamba_head_dim={self.mamba_head_dim}")
        self.layers = resolve_layout(self.layout, self.n_layers)
        if any("+" in k for k in self.layers):
            need(self.n_heads % 2 == 0, f"parallel layers split heads in two; n_heads={self.n_heads} is odd")
            need((self.mamba_expand * self.d_model // self.mamba_head_dim) % 2 == 0,
                 "parallel mamba2 layers need an even number of mamba heads")
        return self

    @property
    def ffn_hidden(self) -> int:
        return self.mlp_hidden or int(round(8 / 3 * self.d_model))

    @property
    def attention_layers(self) -> list[int]:
        return [i for i, k in enumerate(self.layers) if k.startswith("attn")]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "ZooConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InterpError(f"invalid model config: unknown field(s) {unknown}; valid fields: {sorted(known)}")
        if "vocab_size" not in d:
            raise InterpError("invalid model config: missing 'vocab_size'")
        d = dict(d)
        layers = d.pop("layers", None)
        cfg = cls(**d)
        if layers and list(layers) != cfg.layers:
            raise InterpError(f"invalid model config: stored layers {layers} disagree with layout "
                              f"{cfg.layout!r} -> {cfg.layers}")
        return cfg
