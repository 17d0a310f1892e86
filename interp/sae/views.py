"""Latent views: one interface over the three kinds of dictionary for ground truth and interchange,
``Latents(read, edit, encode, decode, num_latents)``.

    read    the site whose vectors the latents are computed from
    edit    the site the decoder writes to (where an interchange changes the run)
    encode  read vectors [N, d_read] -> dense latents [N, F] (zeros where inactive)
    decode  dense latents [N, F] -> edit-site vectors [N, d_edit]

- TopK SAE (`sae_view`): read = edit = the coder's site; encode / decode are the coder's.
- Transcoder (`transcoder_view`): read = its input site, edit = its target; decode is the prediction.
- Rank-1 write dictionary (`rank1_view`): read = one head's ``rec.write_kd`` (the factors, the bilinear
  encoder (p_i.k)(q_i.d) + b_i), edit = the same head's full ``rec.write`` (sum_i z_i u_i v_i^T flattened),
  spliced through the recurrence (`interp.sae.sites`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from interp.sae import coder as C
from interp.sae.sites import SaeSite


@dataclass
class Latents:
    read: SaeSite
    edit: SaeSite
    encode: Callable
    decode: Callable
    num_latents: int


def sae_view(coder, site: SaeSite) -> Latents:
    return Latents(site, site, lambda x: C.dense_latents(coder, x), lambda z: C.decode_dense(coder, z).float(),
                   coder.num_latents)


def transcoder_view(coder, site: SaeSite, target: SaeSite, d_out: int) -> Latents:
    """``d_out``: the target's width (the coder's output may be padded wider)."""
    return Latents(site, target, lambda x: C.dense_latents(coder, C.pad(x, coder.d_in)),
                   lambda z: C.decode_dense(coder, z).float()[:, :d_out], coder.num_latents)


def rank1_dense(coder, x):
    """Dense latents [N, F] of ``write_kd`` rows [N, K + V] of a `interp.sae.rank1.Rank1Coder`."""
    acts, idx = coder.encode(x[:, :coder.K], x[:, coder.K:])
    z = acts.new_zeros(x.shape[0], coder.num_latents)
    return z.scatter_(1, idx, acts).float()


def rank1_decode(coder, z):
    """sum_i z_i u_i v_i^T of dense latents [N, F], flattened to [N, K * V]."""
    z = z.to(coder.u.dtype)
    return torch.einsum("nf,fk,fv->nkv", z, coder.u, coder.v).flatten(1).float()


def rank1_view(coder, site: SaeSite) -> Latents:
    from interp.sae.rank1 import check_site
    check_site(site)
    full = SaeSite(f"blocks.{site.layer}.rec.write", site.head)
    return Latents(site, full, lambda x: rank1_dense(coder, x), lambda z: rank1_decode(coder, z), coder.num_latents)


def as_view(coder, site: SaeSite) -> Latents:
    """``coder`` if it is already a view, else the TopK SAE's view on ``site``."""
    return coder if isinstance(coder, Latents) else sae_view(coder, site)
