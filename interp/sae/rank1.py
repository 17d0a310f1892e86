"""Rank-1 write dictionaries: a TopK sparse coder whose decoder atoms have the shape of a recurrent
write, u_i v_i^T (key atom u_i in R^K, value atom v_i in R^V), for one head's factored writes
``write_t = k_t d_t^T`` (`interp.sae.writes`; the site ``blocks.{i}.rec.write_kd`` with a head).

    pre_i(t) = (p_i . k_t)(q_i . d_t) + b_i  =  p_i^T write_t q_i + b_i     (bilinear encoder)
    a(t)     = TopK_k(ReLU(pre(t)))
    write_t ~ sum_i a_i(t) u_i v_i^T                                          (no decoder bias)

Why this form: WriteSAE (Young, arXiv 2605.12770; its model card lists the variants) makes each decoder
atom the rank-1 outer product of a key and a value vector, the native form of the write, so that one
atom can stand in for one write; its primary variant reads the write with a bilinear encoder v_i^T S w_i.
We take the same pair. On a rank-1 write the bilinear encoder costs K + V numbers per atom (it reads
the factors, never the K x V matrix), and it is the same function of the matrix (`Rank1Coder.encode_full`
reads a full write and agrees), so a reconstruction can be spliced in wherever the model holds the
matrix. A linear encoder of the concatenated factors [k_t, d_t] would not be a function of the write
(k d^T = (c k)(d / c)^T for every c) and would split one write into several codes.

FVU is measured on the full K x V write without forming it:
||k d^T - sum_j a_j u_j v_j^T||^2 = |k|^2 |d|^2 - 2 sum_j a_j (u_j.k)(v_j.d) + sum_jl a_j a_l (u_j.u_l)(v_j.v_l)
over the k active atoms, and the total variance sum_t |k_t|^2 |d_t|^2 - ||sum_t k_t d_t^T||^2 / N.

Written by hand in torch: eai-sparsify has no rank-1 (or any factored) decoder, and its fused encoder is
linear. Training: Adam on the FVU, atoms (u, v) renormalised to unit length after each step, keys and
values divided by their RMS (`fold` moves that into the encoder bias and the activations, so a saved
coder acts on raw writes), resumable on `interp.store` through `interp.sae.train.fit`. No AuxK loss."""
from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from interp import InterpError
from interp.kernels import kernel_spec
from interp.store import Store, atomic_write_json, model_digest, save_parquet, save_safetensors
from interp.sae.train import KIND, TrainResult, fit, rms

FILE = "rank1.safetensors"


class Rank1Coder(nn.Module):
    """``features`` rank-1 atoms u_i v_i^T over K x V writes, ``k`` active per write (module docstring)."""

    def __init__(self, K: int, V: int, features: int, k: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        u = F.normalize(torch.randn(features, K, generator=g), dim=1)
        v = F.normalize(torch.randn(features, V, generator=g), dim=1)
        self.u, self.v = nn.Parameter(u), nn.Parameter(v)              # decoder atoms (unit rows)
        self.p, self.q = nn.Parameter(u.clone()), nn.Parameter(v.clone())  # encoder (bilinear)
        self.b_enc = nn.Parameter(torch.zeros(features))
        self.K, self.V, self.k, self.num_latents = int(K), int(V), int(k), int(features)

    def config(self) -> dict:
        return {"kind": "rank1", "K": self.K, "V": self.V, "features": self.num_latents, "k": self.k}

    # --- encoder ----------------------------------------------------------------------------------
    def _select(self, pre):
        acts, idx = F.relu(pre).topk(self.k, dim=-1, sorted=False)
        return acts, idx

    def encode(self, key, val):
        """(acts [N, k], idx [N, k]) of factored writes ``key`` [N, K], ``val`` [N, V]."""
        key, val = key.to(self.p.dtype), val.to(self.q.dtype)
        return self._select((key @ self.p.T) * (val @ self.q.T) + self.b_enc)

    def encode_full(self, W):
        """The same code from full writes ``W`` [N, K, V] (p_i^T W q_i + b_i)."""
        W = W.to(self.p.dtype)
        n = max(1, 2 ** 24 // (self.K * self.num_latents))  # rows per chunk: [n, K, features] at a time
        pre = torch.cat([W.new_zeros(0, self.num_latents)] +
                        [((W[i:i + n] @ self.q.T) * self.p.T).sum(1) for i in range(0, W.shape[0], n)])
        return self._select(pre + self.b_enc)

    # --- decoder ----------------------------------------------------------------------------------
    def decode_full(self, acts, idx):
        """sum_j acts_j u_{idx_j} v_{idx_j}^T: ``[N, K, V]``."""
        return torch.einsum("nj,njk,njv->nkv", acts, self.u[idx], self.v[idx])

    def reconstruct_full(self, W):
        """The reconstruction of full writes ``W`` [N, K, V]."""
        return self.decode_full(*self.encode_full(W))

    def sq_error(self, key, val, acts, idx):
        """||key val^T - decode_full(acts, idx)||_F^2 per row, [N], from the factors (module docstring)."""
        key, val = key.to(self.u.dtype), val.to(self.v.dtype)
        U, Vv = self.u[idx], self.v[idx]                                 # [N, k, K], [N, k, V]
        cross = (acts * torch.einsum("njk,nk->nj", U, key) * torch.einsum("njv,nv->nj", Vv, val)).sum(1)
        gram = (U @ U.transpose(1, 2)) * (Vv @ Vv.transpose(1, 2))      # [N, k, k]
        return key.pow(2).sum(1) * val.pow(2).sum(1) - 2 * cross + torch.einsum("nj,njl,nl->n", acts, gram, acts)

    @torch.no_grad()
    def normalize_(self):
        """Atoms back to unit length (the activations carry the magnitude)."""
        self.u.div_(self.u.norm(dim=1, keepdim=True).clamp_min(1e-12))
        self.v.div_(self.v.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def init_from(self, key, val):
        """Atoms (decoder and encoder) set to the directions of the first ``features`` writes given."""
        n = min(self.num_latents, key.shape[0])
        for enc, dec, x in ((self.p, self.u, key), (self.q, self.v, val)):
            d = F.normalize(x[:n].to(dec.dtype), dim=1)
            dec[:n], enc[:n] = d, d
        self.b_enc.zero_()
        return self


def total_variance(key, val):
    """sum_t ||k_t d_t^T - mean||_F^2 of the writes k_t d_t^T (rows of ``key`` [N, K], ``val`` [N, V])."""
    M = key.T @ val
    return (key.pow(2).sum(1) * val.pow(2).sum(1)).sum() - M.pow(2).sum() / key.shape[0]


@torch.no_grad()
def quality(coder, key, val, dense_threshold: float = 0.1) -> dict:
    """FVU of the full K x V writes (float64), dead / dense latents and l0, as `interp.sae.evaluate.quality`."""
    c = copy.deepcopy(coder).double()
    key, val = key.double(), val.double()
    acts, idx = c.encode(key, val)
    counts = torch.zeros(c.num_latents, dtype=torch.float64)
    counts.index_add_(0, idx[acts > 0], torch.ones(int((acts > 0).sum()), dtype=torch.float64))
    return {"fvu": float(c.sq_error(key, val, acts, idx).sum() / total_variance(key, val)),
            "dead_frac": float((counts == 0).double().mean()),
            "dense_frac": float((counts / key.shape[0] > dense_threshold).double().mean()),
            "l0": float((acts > 0).sum(1).double().mean()), "rows": int(key.shape[0])}


def fvu(coder, key, val) -> float:
    """Fraction of the writes' variance the coder leaves unexplained (float64)."""
    return quality(coder, key, val)["fvu"]


@torch.no_grad()
def fold(coder, k_scale: float, v_scale: float):
    """A copy of ``coder`` (trained on key / k_scale, val / v_scale) that acts on raw writes: the encoder's
    pre-activations and the activations grow by k_scale * v_scale (only the bias changes), atoms unchanged."""
    out = Rank1Coder(coder.K, coder.V, coder.num_latents, coder.k)
    out.load_state_dict(coder.state_dict())
    with torch.no_grad():
        out.b_enc.mul_(k_scale * v_scale)
    return out


def split_kd(x, K: int):
    """write_kd rows [N, K + V] -> (key [N, K], val [N, V])."""
    return x[:, :K], x[:, K:]


def key_dim(model, layer: int) -> int:
    """K of block ``layer``'s recurrent state (one two-token forward)."""
    from interp.sae.data import family_of, wrap
    hm = wrap(model)
    family_of(hm, layer)                   # (refuses a block the model does not have)
    _, c = hm.run_with_cache(torch.zeros(1, 2, dtype=torch.long), names=[f"blocks.{layer}.rec.k"])
    return int(c[f"blocks.{layer}.rec.k"].shape[-1])


def check_site(site):
    if site.kind != "write_kd" or site.head is None:
        raise InterpError(f"a rank-1 dictionary reads one head's factored write: blocks.<i>.rec.write_kd with "
                          f"--head, not {site.label()}")


def _step(coder, opt, key, val):
    acts, idx = coder.encode(key, val)
    loss = coder.sq_error(key, val, acts, idx).sum() / total_variance(key, val).clamp_min(1e-12)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    coder.normalize_()
    return {"fvu": float(loss.detach())}, idx


def train_rank1(model, site, source, k: int = 32, features: int = 4096, steps: int = 1000, lr: float = 1e-3,
                seed: int = 0, out=None, save_every: int = 100, model_name: str | None = None,
                overwrite: bool = False, progress: bool = True, init=None) -> TrainResult:
    """Train a `Rank1Coder` on ``source``'s rows of ``site`` (one head's ``rec.write_kd``) for ``steps``
    steps, resumable in ``out`` (a changed setting is refused, naming it). ``init``: optional (key, val)
    rows whose directions seed the atoms (`Rank1Coder.init_from`). Returns a `TrainResult` with the
    folded coder (``scale`` = (key scale, value scale))."""
    from interp.sae import checks
    from interp.sae.data import check_capture_model
    check_site(site)
    lr = 1e-3 if lr is None else lr
    checks.train_args(k, features, steps, save_every, seed, lr, out=out)
    check_capture_model(source, model)
    K = key_dim(model, site.layer)
    x0 = source.rows(0)
    key0, val0 = split_kd(x0, K)
    coder = Rank1Coder(K, val0.shape[1], features, k, seed).to(key0.device)  # trains where its rows are
    if init is not None:
        coder.init_from(*init)
    opt = torch.optim.Adam(coder.parameters(), lr=lr)
    scale = (rms(key0), rms(val0))
    spec = {"model": {"name": model_name, "digest": model_digest(model)}, "site": site.label(),
            "source": source.spec(), "coder": {"kind": "rank1", "k": k, "features": features, "lr": lr,
                                                "seed": seed, "init": init is not None, "lib": "interp.sae.rank1"},
            **kernel_spec()}

    def step_fn(batch, sc, dead):
        key, val = split_kd(batch, K)
        return _step(coder, opt, key / sc[0], val / sc[1])
    store = Store(out, KIND, spec, overwrite=overwrite, owns=checks.OWNS) if out else None
    with (checks.tidy_on_failure(out) if out else contextlib.nullcontext()), (store or contextlib.nullcontext()):
        metrics, scale = fit(coder, opt, source, steps, step_fn, scale, store, save_every, progress,
                             f"rank1 {site.label()}", x0=x0)
        checks.finite_coder(coder, lr)
        folded = fold(coder, *scale)
        path = None
        if store:
            meta = {"site": site.name, "head": site.head, "model": model_name, "scale": list(scale), "spec": spec}
            path = save(folded, Path(out) / "coder", meta)
            save_parquet(Path(out) / "metrics.parquet", metrics)
    return TrainResult(folded, metrics, scale, path)


def save(coder, path, meta: dict | None = None) -> Path:
    """``cfg.json`` ({"kind": "rank1", K, V, features, k}) + ``rank1.safetensors`` (+ ``interp.json``)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_safetensors(path / FILE, {n: t.detach().contiguous() for n, t in coder.state_dict().items()})
    atomic_write_json(path / "cfg.json", coder.config())
    if meta is not None:
        atomic_write_json(path / "interp.json", meta)
    return path


def is_rank1(path) -> bool:
    f = Path(path) / "cfg.json"
    return f.is_file() and json.loads(f.read_text()).get("kind") == "rank1"


def load(path):
    """(Rank1Coder, interp meta or {}) from a folder `save` wrote."""
    path = Path(path)
    cfg = json.loads((path / "cfg.json").read_text())
    coder = Rank1Coder(cfg["K"], cfg["V"], cfg["features"], cfg["k"])
    from safetensors.torch import load_file
    coder.load_state_dict(load_file(str(path / FILE)))
    m = path / "interp.json"
    return coder, (json.loads(m.read_text()) if m.is_file() else {})
