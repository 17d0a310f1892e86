"""Probe features: the sites a probe can read (`SITES`), which hooks each needs in a model, and
`collect`, the activations at a target's probe points."""
from __future__ import annotations

import torch

import hooks
from interp import InterpError
from interp import tasks as T
from interp.checks import check_count
from interp.probes.targets import points

PLAIN = ("resid_post", "resid_pre", "resid_mid", "mixer_out", "mlp_out", "attn.head_out", "rec.state",
         "rec.readout")
SITES = PLAIN + ("attn.head_out.per_head", "rec.state@key", "rec.state@query")


def _site_names(hm, sites, skip_missing=False, layers=None):
    """[(site, layer, [hook names])] for every (site, layer) the model has (of ``layers``, if given)."""
    out, keep = [], None if layers is None else set(layers)
    for s in sites:
        if s not in SITES:
            raise InterpError(f"unknown probe site '{s}'; valid sites: {', '.join(SITES)}")
        if s in PLAIN:
            need = [s]
        elif s == "attn.head_out.per_head":
            need = ["attn.head_out"]
        else:
            need = ["rec.state", "rec.k" if s.endswith("@key") else "rec.q"]
        have = [i for i in range(hm.n_layers) if all(f"blocks.{i}.{x}" in hm.hook_names for x in need)]
        if not have:
            if skip_missing:
                continue
            fam = "a recurrent mixer" if need[0].startswith("rec.") else \
                "attention" if need[0].startswith("attn.") else "it"
            raise InterpError(f"site '{s}' is not present in this model (no layer has {fam}; the model's sites: "
                              f"{', '.join(_present(hm))})")
        out += [(s, i, [f"blocks.{i}.{x}" for x in need]) for i in have if keep is None or i in keep]
    return out


def _present(hm):
    have = {n.split(".", 2)[2] for n in hm.hook_names if n.startswith("blocks.")}
    out = [s for s in PLAIN if s in have]
    if "attn.head_out" in have:
        out.append("attn.head_out.per_head")
    if {"rec.state", "rec.k"} <= have:
        out += ["rec.state@key", "rec.state@query"]
    return out


def collect(model, task: str, target: str, sites=("resid_post",), n: int = 256, seed: int = 0,
            batch_size: int = 64, skip_missing: bool = False, batch=None, layers=None, **knobs):
    """Features at the probe points of ``target`` (see `points`).

    Returns (feats {(layer, site): [N_points, F] float32}, Points); ``Points.correct`` says whether
    this model answered each point's example correctly (argmax at every answer position). ``batch``:
    a TaskBatch to use instead of generating ``n`` examples (a padded one, e.g. `interp.tasks.pad_batches`,
    runs with its ``attention_mask``: points at real tokens only, each example's features as it gives
    them alone); ``layers``: only these layers."""
    batch_size = check_count(batch_size, "batch_size")
    batch = batch if batch is not None else T.generate(task, n, seed=seed, **knobs)
    pts = points(batch, target)
    hm = hooks.wrap(model)
    plan = _site_names(hm, sites, skip_missing, layers)
    if any(s == "rec.state@key" for s, _, _ in plan) and (pts.write < 0).any():
        raise InterpError(f"site 'rec.state@key' needs the write position of each probed fact, which target "
                          f"'{target}' of task '{batch.meta['task']}' does not define; targets with one: "
                          "state_recall var_value[j] / query_var_value, mqar bound_value")
    names = sorted({x for _, _, ns in plan for x in ns})
    feats = {}
    dev = next(model.parameters()).device
    N, L = batch.tokens.shape
    right = torch.zeros(N, dtype=torch.bool)
    for s0 in range(0, N, batch_size):
        sel = (pts.ex >= s0) & (pts.ex < s0 + batch_size)
        p = pts.select(sel)
        need = torch.unique(torch.cat([p.pos, p.write[p.write >= 0]]))
        look = torch.full((L,), -1, dtype=torch.long)
        look[need] = torch.arange(len(need))
        mask = None if batch.attention_mask is None else batch.attention_mask[s0:s0 + batch_size].to(dev)
        with torch.no_grad():
            logits, cache = hm.run_with_cache(batch.tokens[s0:s0 + batch_size].to(dev), names=names,
                                              positions=need.tolist() if 0 < len(need) < L else None,
                                              attention_mask=mask)
        right[s0:s0 + batch_size] = _answered(logits, batch.answer_pos[s0:s0 + batch_size],
                                              batch.answers[s0:s0 + batch_size])
        if not len(p) or not names:
            continue
        rows = p.ex - s0
        at = look[p.pos] if len(need) < L else p.pos
        wat = (look[p.write.clamp(min=0)] if len(need) < L else p.write.clamp(min=0))
        for s, i, ns in plan:
            a = cache[ns[0]]
            r, c = rows.to(a.device), at.to(a.device)
            if s in PLAIN:
                f = {s: a[r, c].float().flatten(1)}
            elif s == "attn.head_out.per_head":
                h = a[r, c].float()
                f = {f"attn.head_out.h{j}": h[:, j] for j in range(h.shape[1])}
            else:
                S = a[r, c].float()                                          # [n, H, K, V]
                kq = cache[ns[1]][r, (wat if s.endswith("@key") else at).to(a.device)].float()   # [n, H, K]
                f = {s: torch.einsum("nhkv,nhk->nhv", S, kq).flatten(1)}
            for site, x in f.items():
                feats.setdefault((i, site), []).append(x.cpu())
        del cache
    feats = {k: torch.cat(v) for k, v in feats.items()}
    pts.correct = right[pts.ex]
    return feats, pts


def _answered(logits, answer_pos, answers):
    """bool [B]: the argmax at every answer position (-1: none) is the answer."""
    ok = answer_pos < 0
    rows = torch.arange(logits.shape[0])[:, None].expand_as(answer_pos)
    pred = logits[rows.to(logits.device), answer_pos.clamp(min=0).to(logits.device)].argmax(-1).cpu()
    return (ok | (pred == answers)).all(1)
