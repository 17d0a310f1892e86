"""Intervention sites: a hook name plus a head and (for a recurrent state) a side, and the view of its
activation as the vectors a subspace acts on.

A site's activation at one token is reshaped into ``n`` vectors of one width, and the same R acts on
each (docs/interventions.md):

* residual-stream names (``embed``, ``resid_pre``, ``resid_mid``, ``resid_post``, ``mixer_out``,
  ``mlp_out``) [D]: one vector, width D;
* per-head names (``attn.q/k/v/head_out``, ``rec.q/k/v/readout``) [H, Dh]: ``head=None`` one vector
  of all heads concatenated (width H*Dh), ``head=h`` head h alone (width Dh);
* ``rec.state`` [H, K, V] (Mamba1's [D, N] is read as [D, N, 1]): ``side='key'`` acts on the key side
  (the V columns are the vectors: width H*K, or K for one head), ``side='value'`` on the value side
  (the K rows are the vectors: width H*V, or V for one head). The rank-1 write-key form (no R) is a
  subspace choice of `intervene`, not a side.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from hooks import names as HN
from interp import InterpError

RESID = ("embed",) + HN.RESID
HEADED = tuple(f"attn.{s}" for s in ("q", "k", "v", "head_out")) + tuple(f"rec.{s}" for s in ("q", "k", "v", "readout"))
STATE = "rec.state"
SIDES = ("key", "value")
_NAME = re.compile(r"^blocks\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class Site:
    """Where an interchange acts: ``name`` a full hook name (``blocks.0.rec.state``, ``embed``),
    ``head`` None (all heads) or a head index, ``side`` for ``rec.state`` only (default 'key')."""
    name: str
    head: int | None = None
    side: str | None = None

    def __post_init__(self):
        kind = self.kind  # validates the name's form
        if self.head is not None and (not isinstance(self.head, int) or isinstance(self.head, bool) or self.head < 0):
            raise InterpError(f"head {self.head!r} is not valid; valid: a non-negative integer or None (all heads)")
        if kind == "resid" and self.head is not None:
            raise InterpError(f"site '{self.name}' has no heads; per-head sites: "
                              f"{', '.join(HEADED + (STATE,))}")
        if kind == "state":
            if self.side is None:
                object.__setattr__(self, "side", "key")
            if self.side not in SIDES:
                raise InterpError(f"side '{self.side}' is not valid for '{self.name}'; valid: {', '.join(SIDES)}")
        elif self.side is not None:
            raise InterpError(f"side '{self.side}' applies only to rec.state sites, not to '{self.name}'")

    @property
    def short(self) -> str:
        m = _NAME.match(self.name)
        return m.group(2) if m else self.name

    @property
    def layer(self) -> int:
        m = _NAME.match(self.name)
        return int(m.group(1)) if m else -1

    @property
    def kind(self) -> str:
        s = self.short
        if self.name == "embed" or (s in HN.RESID and self.layer >= 0):
            return "resid"
        if s in HEADED:
            return "head"
        if s == STATE:
            return "state"
        layer = max(self.layer, 0)
        known = ["embed"] + [f"blocks.{layer}.{n}" for n in HN.RESID + tuple(f"attn.{a}" for a in HN.ATTN)
                             + tuple(f"rec.{r}" for r in HN.REC)]
        HN.check([self.name], known)          # not a hook name at all: close matches and the valid names
        raise InterpError(f"site '{self.name}' cannot be intervened on with a subspace; valid: embed, "
                          f"blocks.<i>.<name> with <name> one of {', '.join(HN.RESID + HEADED + (STATE,))}")

    def label(self) -> str:
        """A short text for tables and file names: name[.h<head>][@side]."""
        return self.name + (f".h{self.head}" if self.head is not None else "") + (f"@{self.side}" if self.side else "")

    def check(self, hm, shape=None):
        """The name exists in the model (`hooks.names.check`: unknown names get close matches) and,
        given an activation ``shape`` [B, T, ...], the head index is in range."""
        HN.check([self.name], hm.hook_names)
        if shape is not None and self.head is not None and self.head >= shape[2]:
            raise InterpError(f"head {self.head} out of range: '{self.name}' has {shape[2]} heads (0..{shape[2] - 1})")

    def _state5(self, x):
        return x[..., None] if x.dim() == 4 else x      # Mamba1 [B, T, D, N] -> [..., D, N, 1]

    def width(self, shape) -> int:
        """The width of the vectors R acts on, from an activation shape [B, T, ...]."""
        shape = tuple(shape)
        if self.kind == "resid":
            return shape[-1]
        if self.kind == "head":
            return shape[-1] if self.head is not None else shape[2] * shape[3]
        H, K, V = (shape[2:] + (1,))[:3]
        per = K if self.side == "key" else V
        return per if self.head is not None else H * per

    def vectors(self, x: torch.Tensor) -> torch.Tensor:
        """Site values at chosen tokens x [N, ...] (no T) -> the vectors [N, n, width]."""
        if self.kind == "resid":
            return x[:, None]
        if self.kind == "head":
            return x[:, self.head][:, None] if self.head is not None else x.flatten(1)[:, None]
        S = x[..., None] if x.dim() == 3 else x                     # [N, H, K, V]
        if self.head is not None:
            S = S[:, self.head:self.head + 1]
        if self.side == "value":                                    # rows k: [N, K, H*V]
            return S.permute(0, 2, 1, 3).flatten(2)
        return S.permute(0, 3, 1, 2).flatten(2)                     # columns v: [N, V, H*K]

    def unvectors(self, v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Inverse of `vectors`: the site values ``like`` [N, ...] with the vectors ``v`` written back."""
        if self.kind == "resid":
            return v[:, 0]
        if self.kind == "head":
            if self.head is None:
                return v[:, 0].reshape(like.shape)
            out = like.clone()
            out[:, self.head] = v[:, 0]
            return out
        S = like[..., None] if like.dim() == 3 else like
        H = 1 if self.head is not None else S.shape[1]
        K, V = S.shape[2], S.shape[3]
        if self.side == "value":
            new = v.reshape(-1, K, H, V).permute(0, 2, 1, 3)
        else:
            new = v.reshape(-1, V, H, K).permute(0, 2, 3, 1)
        if self.head is not None:
            out = S.clone()
            out[:, self.head] = new[:, 0]
            new = out
        return new[..., 0] if like.dim() == 3 else new
