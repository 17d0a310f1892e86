"""Where a dictionary reads: `SaeSite` (a hook name or a computed write, one head or all), the
vectors it gives from a cache, and the hooks that put edited vectors back into a run (splicing).

Sites of block i (``head=None`` concatenates all heads, ``head=h`` takes one):

    blocks.{i}.resid_pre|resid_mid|resid_post|mixer_out|mlp_out   [D]
    blocks.{i}.rec.readout                                          [H*V] or [V]
    blocks.{i}.rec.state                                            [H*K*V] or [K*V] (S_t flattened)
    blocks.{i}.rec.write                                            [H*K*V] or [K*V] (key_t value_t^T)
    blocks.{i}.rec.write_kd                                         [H*(K+V)] or [K+V] (the factors
                                                                    concatenated, `interp.sae.writes`)

Edits of ``rec.state`` and the writes run the layer's recurrence again from the first edited token:
S'_t = a_t S'_{t-1} + key_t value_t(S'_{t-1})^T (GDN's delta write is recomputed from the edited
past), the edit replaces S'_t (or the write) where the mask says, and the hooked layer reads out
from S' (`hooks` continues its recurrence from each changed state). So errors of a reconstruction
carry through the recurrence as they would in the model."""
from __future__ import annotations

import numbers
import re
from dataclasses import dataclass

import torch

from interp import InterpError
from interp.sae import writes as W

RESID = ("resid_pre", "resid_mid", "resid_post", "mixer_out", "mlp_out")
KINDS = {**{r: "resid" for r in RESID}, "rec.readout": "readout", "rec.state": "state",
         "rec.write": "write", "rec.write_kd": "write_kd"}


@dataclass(frozen=True)
class SaeSite:
    """A dictionary's input: ``name`` as above, ``head`` one head of a per-head site (None: all)."""
    name: str
    head: int | None = None

    def __post_init__(self):
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)", self.name)
        if not m or m.group(2) not in KINDS:
            raise InterpError(f"SAE site '{self.name}' is not valid; valid: blocks.<i>.<x> with x one of "
                              f"{', '.join(KINDS)}")
        if self.head is None:
            return
        if KINDS[m.group(2)] == "resid":
            raise InterpError(f"--head needs a per-head site (rec.*), not {self.name}")
        if isinstance(self.head, bool) or not isinstance(self.head, numbers.Integral) or self.head < 0:
            raise InterpError(f"head {self.head!r} of {self.name} is not valid; valid: an integer >= 0 (a head of the "
                              "layer), or None for all heads")
        object.__setattr__(self, "head", int(self.head))

    @property
    def layer(self) -> int:
        return int(self.name.split(".")[1])

    @property
    def kind(self) -> str:
        return KINDS[self.name.split(".", 2)[2]]

    def label(self) -> str:
        return self.name + ("" if self.head is None else f".head{self.head}")

    def cache_names(self, family: str | None) -> list[str]:
        """Hook names a cache must hold for `vectors` (all positions)."""
        if self.kind in ("write", "write_kd"):
            return [f"blocks.{self.layer}.rec.{n}" for n in W.needs(family)]
        return [self.name]

    def input_names(self, family: str) -> list[str]:
        """The layer's scan inputs an edit of ``rec.state`` / the writes reads (`splice_hooks`)."""
        return [f"blocks.{self.layer}.rec.{n}" for n in ("k", "v", "beta", "decay")
                if n in W.needs(family) or n == "decay"]

    # --- [B, T, ...] tensors <-> vectors ----------------------------------------------------------
    def check_head(self, n_heads: int):
        """Refuse a head the layer does not have (it has ``n_heads``)."""
        if self.head is not None and self.head >= n_heads:
            raise InterpError(f"head {self.head} of {self.name} does not exist; valid: 0..{n_heads - 1} (block "
                              f"{self.layer} has {n_heads} heads)")

    def flat(self, x):
        """[B, T, H, ...] -> [B, T, d] (the head, or all heads); residual sites stay [B, T, D]."""
        if self.kind == "resid":
            return x.float()
        self.check_head(x.shape[2])
        x = x if self.head is None else x[:, :, self.head:self.head + 1]
        return x.float().flatten(2)

    def unflat(self, x, vec):
        """``x`` [N, H, ...] (a per-head tensor at N rows) with the site's part replaced by ``vec`` [N, d]."""
        if self.kind == "resid":
            return vec.to(x.dtype)
        x = x.clone()
        if self.head is None:
            return vec.reshape(x.shape).to(x.dtype)
        x[:, self.head] = vec.reshape(x[:, self.head].shape).to(x.dtype)
        return x


def vectors(site: SaeSite, cache, family: str | None = None):
    """The site's vectors at every token, ``[B, T, d]`` float32, from a cache of `SaeSite.cache_names`."""
    if site.kind in ("write", "write_kd"):
        key, val = W.factored(family, cache, site.layer)
        x = W.outer(key, val) if site.kind == "write" else torch.cat([key, val], -1)
        return site.flat(x)
    return site.flat(cache[site.name])


def _write_vec(site, key, val):
    """[N, H, ...] factors -> the write site's vectors [N, d]."""
    x = W.outer(key, val) if site.kind == "write" else torch.cat([key, val], -1)
    return x[:, site.head:site.head + 1].flatten(1) if site.head is not None else x.flatten(1)


def _write_from_vec(site, key, val, vec):
    """The edited writes [N, H, K, V] from edited site vectors (other heads keep their own)."""
    w = W.outer(key, val)
    K = key.shape[-1]
    if site.kind == "write":
        return site.unflat(w, vec)
    kd = site.unflat(torch.cat([key, val], -1), vec)
    return W.outer(kd[..., :K], kd[..., K:])


def _step(site, family, edit, inp, t, rows, prev):
    """One token of the re-run recurrence: S'_t from S'_{t-1} (``prev`` [B, H, K, V]), edited at ``rows``."""
    g = {n: (x[:, t] if x is not None else None) for n, x in inp.items()}
    val = W.write_value(family, prev, g["k"], g["v"], g.get("beta"), g.get("decay"))
    key = g["k"].float()
    S = W.decayed(family, prev, g["decay"])
    if rows.numel() == 0:
        return S + W.outer(key, val)
    tt = torch.full_like(rows, t)
    if site.kind == "state":
        new = S + W.outer(key, val)
        new[rows] = site.unflat(new[rows], edit(site.flat(new[rows][:, None])[:, 0], rows, tt))
        return new
    w = W.outer(key, val)
    w[rows] = _write_from_vec(site, key[rows], val[rows], edit(_write_vec(site, key[rows], val[rows]), rows, tt))
    return S + w


def _recurrent(site, family, edit, mask, inp, S):
    """The states of the layer re-run with ``edit`` applied where ``mask`` [B, T] is set; S [B, T, H, K, V]
    the unedited states (kept exactly before the first edit and in the heads the site does not read)."""
    ts = mask.any(0).nonzero().flatten().tolist()
    if not ts:
        return None
    out = S.clone()
    prev = S[:, ts[0] - 1].float() if ts[0] > 0 else torch.zeros_like(S[:, 0], dtype=torch.float32)
    for t in range(ts[0], S.shape[1]):
        prev = _step(site, family, edit, inp, t, mask[:, t].nonzero().flatten(), prev)
        out[:, t] = prev
    if site.head is not None:
        keep = torch.ones(S.shape[2], dtype=torch.bool)
        keep[site.head] = False
        out[:, :, keep] = S[:, :, keep]
    return out


def splice_hooks(site: SaeSite, edit, mask, family: str | None = None, inputs=None) -> list:
    """Hooks [(name, fn)] that replace the site's vectors where ``mask`` [B, T] is set by
    ``edit(X [N, d], rows [N], positions [N]) -> X'`` (rows / positions: where each vector is).
    ``rec.state`` and the writes need ``inputs``: a cache of `SaeSite.input_names` from a run of
    the same tokens (a layer's scan inputs do not depend on its own state)."""
    mask = mask.bool()
    if site.kind in ("resid", "readout"):
        def fn(x, name):
            b, t = mask.to(x.device).nonzero(as_tuple=True)
            if b.numel() == 0:
                return None
            x = x.clone()
            x[b, t] = site.unflat(x[b, t], edit(site.flat(x[b, t][:, None])[:, 0], b, t))
            return x
        return [(site.name if site.kind == "resid" else f"blocks.{site.layer}.rec.readout", fn)]
    if family not in W.FAMILIES:
        raise InterpError(f"splicing {site.name} needs a GDN, GLA or Mamba2 layer, not '{family}'")
    p = f"blocks.{site.layer}.rec."
    inp = {n: inputs.get(p + n) for n in ("k", "v", "beta", "decay")}

    def rec(S, name):
        return _recurrent(site, family, edit, mask.to(S.device), inp, S)
    return [(p + "state", rec)]
