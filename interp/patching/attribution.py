"""Attribution patching: a first-order screen of every cell's denoising effect from one forward and
one backward pass."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

import hooks
from interp import InterpError
from interp.patching.result import PatchResult, _is_zoo_vocab
from interp.patching.run import _answer_metrics, _model_device
from interp.patching.sites import RESID_SITES, SITES, _check_choice, layer_kind, plan_cells


def attribution(model, pairs, sites=("resid_pre",), layers=None, heads=False, model_name="model",
                device=None) -> PatchResult:
    """First-order estimate of the *denoising* effect of every cell, from one forward and one
    backward pass (Nanda's attribution patching): effect(a) ~ (a_clean - a_corrupted) . dLD/da at
    the corrupted run, normalised like ``logit_diff``. Same frame as `sweep` (``logit_diff`` holds
    the estimate; ``prob`` and ``kl`` are NaN). ``rec.state`` is not on the forward path of the
    kernels (states are recomputed beside it), so it has no gradient here: use `sweep` for it."""
    hm = model if isinstance(model, hooks.HookedModel) else hooks.wrap(model)
    for s in sites:
        _check_choice("site", s, SITES)
        if s in ("rec.state", "attn.pattern"):
            raise InterpError(f"attribution does not support site '{s}' (not on the gradient path of "
                              "the fused ops); use patching.sweep for it")
    device = device or _model_device(hm)
    pairs = pairs.to(device)
    N, T = pairs.clean.shape
    names = []
    for s in sites:
        for i in (range(hm.n_layers) if layers is None else [int(x) for x in layers]):
            if not 0 <= i < hm.n_layers:
                raise InterpError(f"layer {i} out of range 0..{hm.n_layers - 1}")
            L = hm.layers[i]
            if (s.startswith("attn.") and L.attn is None) or (s.startswith("rec.") and L.rec is None):
                if layers is not None:
                    plan_cells(hm, s, i, None, False, T)  # raises the clear error
                continue
            names.append((s, i, f"blocks.{i}.{s}"))
    ans, ca, xa = pairs.answer_pos, pairs.clean_answer, pairs.corrupted_answer
    with torch.no_grad(), hm.logits_at(ans):
        _, clean_cache = hm.run_with_cache(pairs.clean, names=[n for *_, n in names])
        ld_clean = _answer_metrics(hm(pairs.clean), (ca, xa))[0].mean()
    grads, acts = {}, {}

    def grab(x, name):
        y = x + 0          # a fresh node on the graph: its grad is dLD/d(activation)
        y.retain_grad()
        acts[name] = y
        return y

    def leaf_embed(x, name):  # makes the graph start at the embeddings even with frozen weights
        return x.detach().requires_grad_(True)
    with torch.enable_grad(), hm.logits_at(ans), _reference_scans(hm):
        lg = hm.run_with_hooks(pairs.corrupted, hooks=[("embed", leaf_embed)] + [(n, grab) for *_, n in names])
        ld = _answer_metrics(lg, (ca, xa))[0]
        ld.sum().backward()
    for *_, n in names:
        grads[n] = acts[n].grad.detach()
    ld_corr = float(ld.mean().detach())
    denom = float(ld_clean) - ld_corr
    rows = []
    for s, i, n in names:
        d = (clean_cache[n].float() - acts[n].detach().float()) * grads[n].float()  # [N, ...]
        if s == "attn.pattern":
            continue
        per = d.sum(0)                                   # [T, (H, ...)]
        if s in RESID_SITES or not heads:
            v = per.reshape(T, -1).sum(-1) / N
            rows += [dict(site=s, layer=i, position=p, head=-1, ld=float(v[p])) for p in range(T)]
        else:
            v = per.reshape(T, per.shape[1], -1).sum(-1) / N
            rows += [dict(site=s, layer=i, position=p, head=h, ld=float(v[p, h]))
                     for h in range(per.shape[1]) for p in range(T)]
    df = pd.DataFrame(rows)
    from interp.tasks import VOCAB
    tok0 = pairs.clean[0].tolist()
    res = PatchResult(dict(
        model=model_name, task=pairs.meta.get("task", ""), direction="attribution", site=df.site,
        layer=df.layer, layer_kind=[layer_kind(hm.layers[i]) for i in df.layer], position=df.position,
        token=[VOCAB.decode([tok0[p]])[0] if _is_zoo_vocab(hm) else "" for p in df.position],
        head=df["head"], logit_diff=df.ld / denom, prob=np.nan, kl=np.nan, raw_logit_diff=df.ld, n=N))
    res.attrs["baselines"] = {"clean_logit_diff": float(ld_clean), "corrupted_logit_diff": ld_corr, "n": N}
    return res


class _reference_scans:
    """Zoo models on CUDA: run the backward through the pure-torch reference scans. fla 0.6.0
    refuses its gated chunk backward on Hopper with Triton < 3.7.1 (fla issue #640); the reference
    computes the same recurrence."""

    def __init__(self, hm):
        m = hm.model
        self.m = m if hasattr(m, "set_scan_backend") and _model_device(hm).type == "cuda" else None

    def __enter__(self):
        if self.m is not None:
            self.saved = [(mod, mod.scan_fn) for mod in self.m.modules() if hasattr(mod, "scan_fn")]
            self.m.set_scan_backend("reference")

    def __exit__(self, *a):
        if self.m is not None:
            for mod, fn in self.saved:
                mod.scan_fn = fn
        return False
