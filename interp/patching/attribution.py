"""Attribution patching: a first-order screen of every cell's denoising effect from one forward and
one backward pass (a state patch's gradient for ``rec.state``), and its comparison with exact
patching."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

import hooks
from interp import InterpError
from interp.patching.result import PatchResult, _is_zoo_vocab
from interp.patching.run import _answer_metrics, _model_device
from interp.patching.sites import RESID_SITES, SITES, _check_choice, check_layers, layer_kind, plan_cells
from interp.tasks.padded import pair_span, to_real


def attribution(model, pairs, sites=("resid_pre",), layers=None, heads=False, model_name="model",
                device=None, keep_all=False, batch_size=256) -> PatchResult:
    """First-order estimate of the *denoising* effect of every cell (Nanda's attribution patching):
    effect(a) ~ (a_clean - a_corrupted) . dLD/da at the corrupted run, normalised like
    ``logit_diff``, from one forward and one backward pass. Same frame as `sweep` (``logit_diff``
    holds the estimate; ``prob``, ``kl`` and the intervals are NaN); pairs filtered as `sweep` does
    (``keep_all``). ``rec.state`` has no gradient on the kernels' path (states are computed beside
    it), so its estimate is the gradient of the state patch itself, d LD / d eps of
    S_t + eps (S_t,clean - S_t): one forward and backward over pairs x positions rows
    (``batch_size`` rows at a time) per layer, as costly as the exact sweep of that site.
    Padded pairs (``pairs.attention_mask``) run with their mask, as in `sweep`: each pair is read at its own
    answer position, position p is each pair's p-th real token, and a cell is over the pairs that have it
    (``n`` per cell; its logit diff normalised by those pairs' own clean / corrupted logit differences)."""
    hm = model if isinstance(model, hooks.HookedModel) else hooks.wrap(model)
    for s in sites:
        _check_choice("site", s, SITES)
    layers = check_layers(layers, hm.n_layers)
    pairs = pairs.to(device or _model_device(hm))
    mask, span = pair_span(pairs)
    N, T = pairs.clean.shape
    names = _names(hm, sites, layers, T)
    grad_names = [x for x in names if x[0] != "rec.state"]
    clean_cache, acts, ld_c, ld_x, keep = _forward_backward(hm, pairs, grad_names, [n for s, _, n in names], mask)
    if keep_all:
        keep[:] = True
    if not keep.any():
        raise InterpError(f"the model answers none of the {N} pairs correctly on both prompts; use keep_all=True "
                          "(--keep-all) to keep every pair")
    kspan = None if span is None else tuple(t[torch.as_tensor(keep, device=t.device)] for t in span)
    rows = []
    for s, i, n in names:
        if s == "rec.state":
            per = _state_effects(hm, pairs, i, clean_cache[n], keep, batch_size, mask, span)       # [K, T]
        else:
            d = ((clean_cache[n].float() - acts[n].detach().float()) * acts[n].grad.float())[keep]  # [K, ...]
            d = d.transpose(1, 2) if s == "attn.pattern" else d                  # [K, T, (H, ...)]
            per_head = s not in RESID_SITES and heads
            per = d.reshape(*d.shape[:3], -1).sum(-1) if per_head else d.reshape(*d.shape[:2], -1).sum(-1)
            per = per.double() if kspan is None else to_real(per.double(), kspan)   # [K, T, (H)]
        per = per.cpu().numpy()
        for h in (range(per.shape[2]) if per.ndim == 3 else [-1]):
            v = per if h < 0 else per[:, :, h]
            rows += [dict(site=s, layer=i, position=p, head=h, col=v[:, p]) for p in range(T)]
    return _frame(hm, pairs, rows, model_name, keep, ld_c, ld_x, keep_all, span is not None)


def _names(hm, sites, layers, T) -> list:
    """(site, layer, hook name) of every site x layer that has it (``layers`` None: every layer; a layer
    that lacks a site it was asked for is the clear error of `plan_cells`)."""
    names = []
    for s in sites:
        for i in (range(hm.n_layers) if layers is None else layers):
            L = hm.layers[i]
            if (s.startswith("attn.") and L.attn is None) or (s.startswith("rec.") and L.rec is None):
                if layers is not None:
                    plan_cells(hm, s, i, None, False, T)  # raises the clear error
                continue
            names.append((s, i, f"blocks.{i}.{s}"))
    return names


def _forward_backward(hm, pairs, grad_names, cache_names, mask=None):
    """The clean run (cache of every name) and the corrupted run with the gradient of the summed
    logit diff at every name of ``grad_names`` (``mask``: the pairs' padding mask). Returns (clean cache,
    corrupted activations with .grad, per-pair clean / corrupted logit diff, the pairs answered correctly
    on both)."""
    ans, ca, xa = pairs.answer_pos, pairs.clean_answer, pairs.corrupted_answer
    with torch.no_grad(), hm.logits_at(ans):
        clean_lg, clean_cache = hm.run_with_cache(pairs.clean, names=cache_names, attention_mask=mask)
        ld_c = _answer_metrics(clean_lg, (ca, xa))[0]
    acts = {}

    def grab(x, name):
        y = x + 0          # a fresh node on the graph: its grad is dLD/d(activation)
        y.retain_grad()
        acts[name] = y
        return y

    def leaf_embed(x, name):  # makes the graph start at the embeddings even with frozen weights
        return x.detach().requires_grad_(True)
    with torch.enable_grad(), hm.logits_at(ans), _reference_scans(hm):
        lg = hm.run_with_hooks(pairs.corrupted, hooks=[("embed", leaf_embed)] + [(n, grab) for *_, n in grad_names],
                               attention_mask=mask)
        ld = _answer_metrics(lg, (ca, xa))[0]
        if grad_names:
            ld.sum().backward()
    keep = ((clean_lg[:, 0].argmax(-1) == ca) & (lg[:, 0].detach().argmax(-1) == xa)).cpu().numpy()
    return clean_cache, acts, ld_c.detach().cpu().double(), ld.detach().cpu().double(), keep


def _state_effects(hm, pairs, layer, clean_states, keep, batch_size, mask=None, span=None, eps=1e-3):
    """Per kept pair and position t, d LD / d eps of the corrupted run with the state of ``layer``
    at t set to S_t + eps (S_t,clean - S_t), continuing the recurrence: [K, T] float64. Padded pairs
    (``mask``, ``span``): t is each pair's t-th real token, NaN where a pair has none."""
    idx = torch.as_tensor(np.flatnonzero(keep), device=pairs.clean.device)
    base, src = pairs.corrupted[idx], clean_states[idx]
    K, T = base.shape
    ans, ca, xa = pairs.answer_pos[idx], pairs.clean_answer[idx], pairs.corrupted_answer[idx]
    m = None if mask is None else mask[idx]
    off, n = (torch.zeros(K, dtype=torch.long, device=base.device), torch.full((K,), T, device=base.device)) \
        if span is None else (span[0][idx], span[1][idx])
    out = torch.zeros(K, T, dtype=torch.float64)
    per_fwd = max(1, batch_size // K)
    name = f"blocks.{layer}.rec.state"
    for t0 in range(0, T, per_fwd):
        ts = list(range(t0, min(T, t0 + per_fwd)))
        e = torch.full((len(ts) * K,), eps, device=base.device, requires_grad=True)

        def put(S, _name, ts=ts, e=e):
            S = S.clone()
            for j, t in enumerate(ts):
                i = (t < n).nonzero().flatten()          # the pairs that have position t, at their t-th real token
                r, tt = j * K + i, off[i] + t
                S[r, tt] = S[r, tt] + e[r].view(-1, *[1] * (S.dim() - 2)) * (src[i, tt].to(S.dtype) - S[r, tt].detach())
            return S
        with torch.enable_grad(), hm.logits_at(ans.repeat(len(ts))), _reference_scans(hm):
            lg = hm.run_with_hooks(base.repeat(len(ts), 1), hooks=[(name, put)],
                                   attention_mask=None if m is None else m.repeat(len(ts), 1))
            ld = _answer_metrics(lg, (ca.repeat(len(ts)), xa.repeat(len(ts))))[0]
            g = torch.autograd.grad(ld.sum(), e, allow_unused=True)[0] if ld.requires_grad else None
        if g is not None:
            out[:, ts] = g.detach().double().cpu().view(len(ts), K).T
    if span is not None:
        out[torch.arange(T)[None] >= n.cpu()[:, None]] = float("nan")
    return out


def _frame(hm, pairs, rows, model_name, keep, ld_c, ld_x, keep_all, padded) -> PatchResult:
    """The result frame from per-cell rows holding ``col``, the kept pairs' estimates [K] (padded pairs: NaN
    where a pair lacks the position): each cell's mean over the pairs that have it (``raw_logit_diff``, ``n``),
    normalised by the mean clean - corrupted logit difference (padded pairs: of the pairs that have it)."""
    from interp.patching.classes import real_tokens
    from interp.tasks import VOCAB
    df = pd.DataFrame(rows)
    kc, kx = ld_c[keep].numpy(), ld_x[keep].numpy()
    col = np.stack(df.pop("col").to_numpy()) if len(df) else np.zeros((0, len(kc)))
    K = int(keep.sum())
    if padded:
        has = np.isfinite(col)
        n = has.sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            total = np.where(has, col, 0.0).sum(1)
            raw, ld = total / n, total / (has @ (kc - kx))
    else:
        n = np.full(len(df), K)
        raw = col.sum(1) / K
        ld = raw / float(kc.mean() - kx.mean())
    first = int(np.flatnonzero(keep)[0]) if keep.any() else 0
    clean, _, _, length = real_tokens(pairs)     # positions count a padded pair's real tokens
    tok0 = clean[first].tolist()
    zoo = _is_zoo_vocab(hm)
    res = PatchResult(dict(
        model=model_name, task=pairs.meta.get("task", ""), direction="attribution", site=df.site,
        layer=df.layer, layer_kind=[layer_kind(hm.layers[i]) for i in df.layer], position=df.position,
        token=[VOCAB.decode([tok0[p]])[0] if zoo and p < length[first] else "" for p in df.position],
        head=df["head"], logit_diff=ld, prob=np.nan, kl=np.nan, raw_logit_diff=raw, n=n))
    res.attrs["baselines"] = {"clean_logit_diff": float(kc.mean()), "corrupted_logit_diff": float(kx.mean()), "n": K}
    res.attrs["pairs"] = {"n": len(keep), "kept": K, "dropped": int((~keep).sum()),
                          "filter": "all pairs" if keep_all else "answered correctly on both prompts"}
    return res


def compare_attribution(res, att, by=("site",)) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Attribution estimates against exact denoising cells: (the cells side by side, with
    ``logit_diff_attribution``; one row per group of ``by`` with cells, Pearson r, Spearman rho,
    the share of cells with an exact effect >= 0.05 whose estimate has the same sign, the largest
    |estimate - exact| and where it is)."""
    exact = res[res.direction == "denoise"] if "direction" in res else res
    m = pd.DataFrame(exact).merge(pd.DataFrame(att)[["site", "layer", "position", "head", "logit_diff"]],
                                  on=["site", "layer", "position", "head"], suffixes=("", "_attribution"))
    if m.empty:
        raise InterpError("no cell is in both the exact result and the attribution result")
    rows = []
    for key, g in m.groupby(list(by), sort=False):
        err = (g.logit_diff_attribution - g.logit_diff).abs()
        big = g[g.logit_diff.abs() >= 0.05]
        w = g.loc[err.idxmax()]
        rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))), "cells": len(g),
                     "pearson_r": g.logit_diff.corr(g.logit_diff_attribution),
                     "spearman_rho": g.logit_diff.corr(g.logit_diff_attribution, method="spearman"),
                     "sign_agree": (np.sign(big.logit_diff) == np.sign(big.logit_diff_attribution)).mean()
                     if len(big) else np.nan, "n_effect": len(big), "max_abs_err": float(err.max()),
                     "worst": f"L{w.layer} pos {w.position}" + (f" h{w['head']}" if w["head"] >= 0 else "")
                     + f": exact {w.logit_diff:.3f}, estimate {w.logit_diff_attribution:.3f}"})
    return m, pd.DataFrame(rows)


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
