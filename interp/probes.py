"""Linear probes: is a tracked fact (a variable's value, a bound value) linearly decodable at a
site, layer by layer, how does that change with distance and load, and is that the model's doing
rather than the probe's?

    from interp import probes
    df = probes.run(models, task="state_recall", target="query_var_value",
                    sites=["resid_post", "rec.state@key"], seeds=[0, 1, 2])
    df.plot()                  # accuracy (band: 95% CI over seeds) and selectivity against layer
    df.plot_distance()         # accuracy against steps since the fact was written
    probes.run(..., sweep={"n_pairs": [2, 4, 8]}).plot_load()

**Probe points.** A probe reads a site at the tokens where the target label is defined, with
these exceptions: ``mqar``/``bound_value`` is read only at the query keys (at a context key the
bound value is the *next* token, so nothing before it can hold it). Each point carries its
``distance``, the steps since the fact was written, and its ``write`` position (the token that
wrote it, the token that completes the fact in the input):

* ``state_recall`` ``var_value[j]`` / ``query_var_value``: distance in statements since the
  variable was last assigned (0 at the ``;`` of the assigning statement; equals the task label
  ``steps_since_write`` for the queried variable); write position: the ``;`` of that statement
  (where the task's labels change).
* ``mqar`` ``bound_value``: distance in tokens from the key's context position to the query
  (the task label ``write_distance``); write position: the **value** token after the key in the
  context (the first token at which the binding is complete; a GDN writes k_t v_t^T there with
  both tokens in its short convolution. On the default gdn75 / gdn100, reading out with the key
  token's own k instead decodes the bound value less well at most layers).
* other targets: no distance (<NA>); ``rec.state@key`` is then unavailable.

**Sites** (``SITES``), per layer; a site the model lacks raises an error naming it:

* ``resid_pre``, ``resid_mid``, ``resid_post``, ``mixer_out``, ``mlp_out``: [D].
* ``attn.head_out``: every attention head's output before the out-projection, **concatenated**
  ([H*Dh], the out-projection's input). ``attn.head_out.per_head``: one probe per head, reported
  as sites ``attn.head_out.h0``, ``attn.head_out.h1``, ...
* ``rec.state``: the recurrent state S_t after the token, flattened ([H*K*V]).
* ``rec.readout``: the scan output S_t^T (scale q_t) as the layer consumes it ([H*V]).
* ``rec.state@key``: S_t^T k_w, the state after the probed token read out with the layer's **own
  key rec.k at the write position w** of the probed fact (above), per head, concatenated ([H*V]).
  This asks: would the key that wrote the fact retrieve it from the state now?
* ``rec.state@query``: S_t^T q_t, the state read out with the layer's **current query** rec.q at
  the probed token ([H*V]). For GDN / GLA this is rec.readout without its constant scale (so the
  two give the same probe up to optimisation tolerance; a check); for Mamba2 it lacks the D x_t
  skip term.

**Protocol.** Train/test split **by example** (never by token); multinomial logistic regression per
(layer, site) on standardised features (train statistics); a **control task** (Hewitt & Liang 2019)
re-labels each point by a fixed random map of the token id at the probed position into the same
number of classes, so it measures how much the probe can memorise surface identity there;
**selectivity** = accuracy - control. Also reported: ``majority`` (predict the most frequent training
class) and ``surface`` (predict the most frequent training class of the probed token's id: what
the current token alone tells). ``seeds=[...]`` repeats everything (task data, split, control
map) per seed and reports the mean and a 95% t-interval over seeds (``acc_lo``, ``acc_hi``,
``sel_lo``, ``sel_hi``).

**Backends**, one interface: ``torch`` fits every (layer, site) probe of one feature width, task
and control together, as one batched problem (full-batch L-BFGS on a stacked weight tensor;
CUDA if available), ``sklearn`` (LogisticRegression, lbfgs) is the reference. Both minimise the
same objective, mean cross-entropy + ||W||^2 / (2 C N) (sklearn's, divided by C N).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import hooks
from interp import InterpError
from interp import tasks as T
from interp.tasks.base import get as _task, resolve_knobs

PLAIN = ("resid_post", "resid_pre", "resid_mid", "mixer_out", "mlp_out", "attn.head_out", "rec.state",
         "rec.readout")
SITES = PLAIN + ("attn.head_out.per_head", "rec.state@key", "rec.state@query")
KEYS = ["model", "load", "layer", "site", "target", "distance"]


# ---------------------------------------------------------------------------------------------
# results

def _t975(k: int) -> float:
    from scipy.stats import t
    return float(t.ppf(0.975, k))


def aggregate(per_seed: pd.DataFrame) -> "ProbeResult":
    """Mean over seeds per (model, load, layer, site, target, distance) and 95% t-intervals
    (NaN with one seed); ``n`` sums test points over seeds, ``seeds`` counts them."""
    g = per_seed.groupby(KEYS, sort=False, dropna=False)
    out = g[["accuracy", "control", "selectivity", "majority", "surface", "n_train"]].mean()
    out["n"] = g["n"].sum()
    out["seeds"] = g["seed"].nunique()
    for col, pre in (("accuracy", "acc"), ("selectivity", "sel")):
        sd, k = g[col].std(ddof=1), out["seeds"]
        half = np.array([_t975(int(s) - 1) if s > 1 else np.nan for s in k]) * sd / np.sqrt(k)
        out[f"{pre}_lo"], out[f"{pre}_hi"] = out[col] - half, out[col] + half
    out = out.reset_index()
    cols = KEYS + ["accuracy", "acc_lo", "acc_hi", "control", "selectivity", "sel_lo", "sel_hi", "majority",
                   "surface", "n", "n_train", "seeds"]
    res = ProbeResult(out[cols])
    res["distance"] = res["distance"].astype("Int64")
    return res


class ProbeResult(pd.DataFrame):
    """Tidy results, one row per (model, load, layer, site, target, distance): ``distance`` <NA>
    pools all distances, an integer d holds the test points written d steps before; ``load`` is
    the swept knob's value (<NA> without a sweep; the knob is ``attrs['load_knob']``).
    Columns: accuracy (acc_lo, acc_hi), control, selectivity (sel_lo, sel_hi), majority, surface,
    n (test points, summed over seeds), n_train, seeds."""

    _metadata = []

    @property
    def _constructor(self):
        return ProbeResult

    def pooled(self) -> "ProbeResult":
        return self[self["distance"].isna()]

    def save(self, out, name="probes"):
        """Write ``name``.csv and ``name``.parquet under ``out``; returns the paths."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        df = pd.DataFrame(self)
        df["load"] = df["load"].astype(str).where(df["load"].notna(), None) if df["load"].dtype == object \
            else df["load"]
        df.to_csv(out / f"{name}.csv", index=False)
        df.to_parquet(out / f"{name}.parquet", index=False)
        return out / f"{name}.csv", out / f"{name}.parquet"

    # -- plots --------------------------------------------------------------------------------
    def _fig(self, n_panels, path, width=4.6):
        import matplotlib
        if path is not None:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, n_panels, figsize=(width * n_panels, 3.5), squeeze=False)
        return plt, fig, axes[0]

    def _done(self, plt, fig, path):
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=110)
            plt.close(fig)
        return fig

    def _colours(self):
        return {m: f"C{i}" for i, m in enumerate(dict.fromkeys(self["model"]))}

    def plot(self, path=None, load=None):
        """Layer-wise curve: accuracy (solid, band = 95% CI over seeds) and selectivity (dashed)
        against layer, one colour per model, one panel per site; pooled over distances; with a
        load sweep, the largest load unless ``load`` is given."""
        d = self.pooled()
        if d["load"].notna().any():
            d = d[d["load"] == (load if load is not None else d["load"].max())]
        sites = list(dict.fromkeys(d["site"]))
        plt, fig, axes = self._fig(len(sites), path)
        colour = self._colours()
        lo = min(-0.05, float(d["selectivity"].min()) - 0.05)
        for ax, site in zip(axes, sites):
            sub = d[d.site == site]
            for model, g in sub.groupby("model", sort=False):
                c = colour[model]
                ax.plot(g["layer"], g["accuracy"], marker="o", color=c, label=f"{model} accuracy")
                if g["acc_lo"].notna().any():
                    ax.fill_between(g["layer"], g["acc_lo"].clip(0, 1), g["acc_hi"].clip(0, 1), color=c, alpha=0.2,
                                    lw=0)
                    ax.fill_between(g["layer"], g["sel_lo"].clip(-1, 1), g["sel_hi"].clip(-1, 1), color=c, alpha=0.1,
                                    lw=0)
                ax.plot(g["layer"], g["selectivity"], ls="--", color=c, label=f"{model} selectivity")
            ax.axhline(sub["majority"].max(), color="gray", lw=0.8, ls=":", label="majority")
            title = f"{sub['target'].iloc[0]} from {site}"
            if sub["load"].notna().any():
                title += f" ({self.attrs.get('load_knob', 'load')}={sub['load'].iloc[0]})"
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("layer")
            ax.set_ylim(lo, 1.05)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("test accuracy")
        axes[0].legend(fontsize=7)
        return self._done(plt, fig, path)

    def best_layers(self, by="accuracy") -> pd.DataFrame:
        """(model, site, load) -> the layer with the highest pooled ``by``."""
        d = self.pooled()
        idx = d.groupby(["model", "site", "load"], sort=False, dropna=False)[by].idxmax()
        return d.loc[idx, ["model", "site", "load", "layer", by]].reset_index(drop=True)

    def _at_layer(self, layer):
        if layer is None:
            best = self.best_layers()
            key = best.set_index(["model", "site", "load"])["layer"]
            keep = [key.get((m, s, ld), None) == la for m, s, ld, la in
                    zip(self["model"], self["site"], self["load"], self["layer"])]
            return self[keep]
        return self[self["layer"] == layer]

    def plot_distance(self, path=None, layer=None, min_n=20, max_distance=None, bin_width=None):
        """Accuracy (band: 95% CI over seeds) against distance (steps since the fact was
        written), at each model's best layer per site (or ``layer``); distances with fewer than
        ``min_n`` test points are left out. ``bin_width``: pool distances [0, w), [w, 2w), ...
        (accuracy weighted by test points, plotted at the bin start; no band). With a load sweep,
        one line per (model, load)."""
        d = self._at_layer(layer)
        d = d[d["distance"].notna()]
        if bin_width:
            d = d.assign(distance=(d["distance"] // bin_width) * bin_width, _w=d["accuracy"] * d["n"])
            keys = ["model", "load", "layer", "site", "target", "distance"]
            d = d.groupby(keys, sort=False, dropna=False).agg(_w=("_w", "sum"), n=("n", "sum")).reset_index()
            d = d.assign(accuracy=d["_w"] / d["n"], acc_lo=np.nan, acc_hi=np.nan)
        d = d[d["n"] >= min_n]
        if max_distance is not None:
            d = d[d["distance"] <= max_distance]
        if d.empty:
            raise InterpError("no distance rows to plot (the target has no distance, or every distance has "
                              f"fewer than min_n={min_n} test points)")
        sites = list(dict.fromkeys(d["site"]))
        plt, fig, axes = self._fig(len(sites), path)
        colour = self._colours()
        loads = list(dict.fromkeys(d["load"].dropna()))
        for ax, site in zip(axes, sites):
            sub = d[d.site == site]
            for (model, load), g in sub.groupby(["model", "load"], sort=False, dropna=False):
                g = g.sort_values("distance")
                alpha = 1.0 if pd.isna(load) else 0.35 + 0.65 * (loads.index(load) + 1) / len(loads)
                lab = f"{model} (L{g['layer'].iloc[0]})" + ("" if pd.isna(load) else f" {load}")
                x = g["distance"].astype(float)
                ax.plot(x, g["accuracy"], marker=".", color=colour[model], alpha=alpha, label=lab)
                if g["acc_lo"].notna().any():
                    ax.fill_between(x, g["acc_lo"].clip(0, 1), g["acc_hi"].clip(0, 1), color=colour[model],
                                    alpha=0.15 * alpha, lw=0)
            ax.set_title(f"{sub['target'].iloc[0]} from {site}", fontsize=10)
            ax.set_xlabel("distance (steps since written)")
            ax.set_ylim(-0.05, 1.05)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        axes[0].set_ylabel("test accuracy")
        return self._done(plt, fig, path)

    def plot_load(self, path=None, layer=None):
        """Pooled accuracy (band: 95% CI) and selectivity (dashed) against the swept load, at each
        model's best layer per (site, load) (or ``layer``)."""
        d = self._at_layer(layer).pooled()
        if d["load"].isna().all():
            raise InterpError("no load sweep in these results; run with sweep={knob: [values]}")
        sites = list(dict.fromkeys(d["site"]))
        plt, fig, axes = self._fig(len(sites), path)
        colour = self._colours()
        for ax, site in zip(axes, sites):
            sub = d[d.site == site]
            for model, g in sub.groupby("model", sort=False):
                g = g.sort_values("load")
                c = colour[model]
                ax.plot(g["load"], g["accuracy"], marker="o", color=c, label=f"{model} accuracy")
                if g["acc_lo"].notna().any():
                    ax.fill_between(g["load"].astype(float), g["acc_lo"].clip(0, 1), g["acc_hi"].clip(0, 1), color=c,
                                    alpha=0.2, lw=0)
                ax.plot(g["load"], g["selectivity"], ls="--", color=c, label=f"{model} selectivity")
            ax.set_title(f"{sub['target'].iloc[0]} from {site} (best layer)", fontsize=10)
            ax.set_xlabel(self.attrs.get("load_knob", "load"))
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("test accuracy")
        axes[0].legend(fontsize=7)
        return self._done(plt, fig, path)


# ---------------------------------------------------------------------------------------------
# probe points

@dataclass
class Points:
    """Probe points: example, position, label, distance (-1: unknown), write position (-1:
    unknown) and the token id at the position."""
    ex: torch.Tensor
    pos: torch.Tensor
    y: torch.Tensor
    distance: torch.Tensor
    write: torch.Tensor
    token: torch.Tensor

    def __len__(self):
        return len(self.y)

    def select(self, m):
        return Points(*(getattr(self, f)[m] for f in ("ex", "pos", "y", "distance", "write", "token")))


def target_labels(batch, target: str):
    """[N, T] labels for ``target``: a per-token label name, or ``name[j]`` for column j of a
    per-token vector label (e.g. ``var_value[0]``: the value of x0 after each token).
    Returns (labels, column j or None)."""
    m = re.fullmatch(r"(\w+)(?:\[(\d+)\])?", target)
    valid = [k if v.dim() == 2 else f"{k}[0..{v.shape[-1] - 1}]" for k, v in batch.labels.items()]
    task = batch.meta["task"]
    if not m or m.group(1) not in batch.labels:
        raise InterpError(f"target '{target}' is not produced by task '{task}'; valid targets: {', '.join(valid)}")
    lab = batch.labels[m.group(1)]
    if lab.dim() == 3:
        if m.group(2) is None or int(m.group(2)) >= lab.shape[-1]:
            raise InterpError(f"target '{target}' needs a column index; valid targets: {', '.join(valid)}")
        return lab[..., int(m.group(2))], int(m.group(2))
    if m.group(2) is not None:
        raise InterpError(f"target '{m.group(1)}' has no columns; valid targets: {', '.join(valid)}")
    return lab, None


def _state_recall_writes(batch, var):
    """Per token: statements since variable ``var`` ([N] per example, or an int) was last
    assigned, and the position of that statement's ``;`` (-1 before any)."""
    from interp.tasks.state_recall import _layout
    from interp.tasks.vocab import VARS, VOCAB
    k = batch.meta["knobs"]
    S = k["n_vars"] + k["n_steps"]
    idx, stmt, _, _ = _layout(S, k["n_vars"], k["cot"])
    tok = batch.tokens.numpy()
    vi = np.full(len(VOCAB), -1)
    vi[VOCAB.encode(VARS)] = np.arange(len(VARS))
    v = np.broadcast_to(np.asarray(var), (tok.shape[0],))[:, None]
    a0, a1, a2 = vi[tok[:, stmt]], vi[tok[:, stmt + 1]], vi[tok[:, stmt + 2]]
    writes = np.where(tok[:, stmt] == VOCAB.id("swap"), (a1 == v) | (a2 == v), a0 == v)   # [N, S]
    last = np.full((tok.shape[0], S + 1), -1)
    for s in range(S):
        last[:, s + 1] = np.where(writes[:, s], s, last[:, s])
    u = np.arange(S + 1)
    dist = np.where(last >= 0, u - 1 - last, -1)
    wpos = np.where(last >= 0, stmt[np.maximum(last, 0)] + 3, -1)
    return torch.as_tensor(dist[:, idx]), torch.as_tensor(wpos[:, idx])


def points(batch, target: str) -> Points:
    """The probe points of ``target`` in ``batch`` (see the module doc)."""
    lab, col = target_labels(batch, target)
    task = batch.meta["task"]
    N, L = lab.shape
    dist = torch.full((N, L), -1, dtype=torch.long)
    write = torch.full((N, L), -1, dtype=torch.long)
    mask = lab >= 0
    name = target.split("[")[0]
    if task == "state_recall" and name in ("var_value", "query_var_value"):
        from interp.tasks.vocab import VARS, VOCAB
        var = col if name == "var_value" else np.asarray(VOCAB.decode(batch.tokens[:, -2]))
        if name == "query_var_value":
            var = np.array([VARS.index(w) for w in var])
        dist, write = _state_recall_writes(batch, var)
    elif task == "mqar" and name == "bound_value":
        wd = batch.labels["write_distance"]
        mask = mask & (wd >= 0)
        dist = wd.clone()
        write = torch.where(wd >= 0, torch.arange(L)[None] - wd + 1, -1)    # the value after the key
    ex = torch.arange(N)[:, None].expand(N, L)[mask]
    pos = torch.arange(L)[None].expand(N, L)[mask]
    return Points(ex, pos, lab[mask], dist[mask], write[mask], batch.tokens[mask])


# ---------------------------------------------------------------------------------------------
# features

def _site_names(hm, sites, skip_missing=False):
    """[(site, layer, [hook names])] for every (site, layer) the model has."""
    out = []
    for s in sites:
        if s not in SITES:
            raise InterpError(f"unknown probe site '{s}'; valid sites: {', '.join(SITES)}")
        if s in PLAIN:
            need = [s]
        elif s == "attn.head_out.per_head":
            need = ["attn.head_out"]
        else:
            need = ["rec.state", "rec.k" if s.endswith("@key") else "rec.q"]
        layers = [i for i in range(hm.n_layers) if all(f"blocks.{i}.{x}" in hm.hook_names for x in need)]
        if not layers:
            if skip_missing:
                continue
            fam = "a recurrent mixer" if need[0].startswith("rec.") else \
                "attention" if need[0].startswith("attn.") else "it"
            raise InterpError(f"site '{s}' is not present in this model (no layer has {fam}; the model's sites: "
                              f"{', '.join(_present(hm))})")
        out += [(s, i, [f"blocks.{i}.{x}" for x in need]) for i in layers]
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
            batch_size: int = 64, skip_missing: bool = False, batch=None, **knobs):
    """Features at the probe points of ``target`` (see `points`).

    Returns (feats {(layer, site): [N_points, F] float32}, Points). ``batch``: a TaskBatch to use
    instead of generating ``n`` examples."""
    batch = batch if batch is not None else T.generate(task, n, seed=seed, **knobs)
    pts = points(batch, target)
    hm = hooks.wrap(model)
    plan = _site_names(hm, sites, skip_missing)
    if any(s == "rec.state@key" for s, _, _ in plan) and (pts.write < 0).any():
        raise InterpError(f"site 'rec.state@key' needs the write position of each probed fact, which target "
                          f"'{target}' of task '{batch.meta['task']}' does not define; targets with one: "
                          "state_recall var_value[j] / query_var_value, mqar bound_value")
    names = sorted({x for _, _, ns in plan for x in ns})
    feats = {}
    dev = next(model.parameters()).device
    N, L = batch.tokens.shape
    for s0 in range(0, N, batch_size):
        sel = (pts.ex >= s0) & (pts.ex < s0 + batch_size)
        p = pts.select(sel)
        if not len(p) or not names:
            continue
        need = torch.unique(torch.cat([p.pos, p.write[p.write >= 0]]))
        look = torch.full((L,), -1, dtype=torch.long)
        look[need] = torch.arange(len(need))
        with torch.no_grad():
            _, cache = hm.run_with_cache(batch.tokens[s0:s0 + batch_size].to(dev), names=names,
                                         positions=need.tolist() if len(need) < L else None)
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
    return feats, pts


# ---------------------------------------------------------------------------------------------
# fitting

def _standardize(tr, te):
    mu, sd = tr.mean(-2, keepdim=True), tr.std(-2, keepdim=True).clamp(min=1e-6)
    return (tr - mu) / sd, (te - mu) / sd


def fit_torch(Xtr, ys, Xte, n_classes, C=1.0, max_iter=300, tol=1e-4, device=None, history=10, whiten=None,
              curvature=None, stats=None):
    """Batched multinomial logistic regression. Xtr [P, N, D]: P feature sets on the same points;
    ys: label vectors [N] (e.g. task and control), each fitted on every feature set: P*len(ys)
    independent problems, solved together. Per problem: mean cross-entropy + ||W||^2 / (2 C N),
    intercept not penalised (sklearn's objective divided by C N).

    Solver: L-BFGS (``history`` pairs) with a backtracking Armijo line search, every problem with
    its own curvature history, step and stopping test (max |gradient| <= ``tol``), so each
    converges as if alone; one batched matmul per evaluation for all of them. ``whiten`` (default:
    D <= 8192) preconditions by an exact change of variables W = V diag(s) W', V, e the eigenvectors
    / values of the train covariance and s = (e + lam / curvature)^-1/2 (curvature: a guess of the
    softmax curvature, default 1 / n_classes): the Hessian in W' is then close to a multiple of the
    identity and L-BFGS converges in tens of iterations instead of hundreds; the penalty is the
    same ||W||^2 written in W'. float32, CUDA if available. Returns predictions on Xte [P, M, D]
    as [P, len(ys), M]; ``stats`` (a dict) receives iterations, evaluations, converged, problems."""
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    X = Xtr.to(dev, torch.float32)
    Xt = Xte.to(dev, torch.float32)
    P, N, D = X.shape
    lam = 1.0 / (C * N)
    reg = torch.ones(P, D + 1, 1, 1, device=dev)
    if whiten is None:
        whiten = D <= 8192
    curvature = curvature or 1.0 / n_classes
    if whiten:
        # exact change of variables W = V diag(s) W' (see above); centring only moves the intercept
        mu = X.mean(1, keepdim=True)
        e, V = torch.linalg.eigh(((X - mu).transpose(1, 2) @ (X - mu)).double() / N)
        scale = (e.clamp(min=0) + lam / curvature).rsqrt()
        M = (V * scale[:, None]).float()                                     # [P, D, D]
        Minv = (V / scale[:, None]).float()      # gradient in W = Minv @ gradient in W' (for the stopping test)
        X, Xt = torch.bmm(X - mu, M), torch.bmm(Xt - mu, M)
        reg[:, :D] = scale.square().float()[:, :, None, None]
    X = torch.cat([X, X.new_ones(P, N, 1)], -1)                              # intercept column
    G, K = len(ys), n_classes
    Y = torch.stack([torch.as_tensor(y) for y in ys]).to(dev).t()          # [N, G]
    Yx = Y.unsqueeze(0).expand(P, N, G).unsqueeze(-1)
    reg[:, D] = 0

    def fg(W):  # per-problem objective [P, G] and its gradient [P, D+1, G, K]
        z = torch.bmm(X, W.view(P, D + 1, G * K)).view(P, N, G, K)
        lse = z.logsumexp(-1, keepdim=True)
        Wr = W * reg
        f = (lse.squeeze(-1) - z.gather(-1, Yx).squeeze(-1)).mean(1) + 0.5 * lam * (W * Wr).sum((1, 3))
        p = (z - lse).exp_()
        p.scatter_add_(-1, Yx, torch.full(Yx.shape, -1.0, device=dev))
        return f, torch.bmm(X.transpose(1, 2), p.view(P, N, G * K)).view(P, D + 1, G, K) / N + lam * Wr

    def dot(a, b):
        return (a * b).sum((1, 3))                                          # [P, G]

    def ex(v):
        return v[:, None, :, None]

    def gmax(g):  # max |gradient| in the original coordinates (sklearn's stopping test), per problem
        if whiten:
            g = torch.cat([torch.bmm(Minv, g[:, :D].reshape(P, D, G * K)).view(P, D, G, K), g[:, D:]], 1)
        return g.abs().amax((1, 3))

    W = torch.zeros(P, D + 1, G, K, device=dev)
    f, g = fg(W)
    hist = []                                                                # (s, y, 1 / s.y)
    active = torch.ones(P, G, dtype=torch.bool, device=dev)
    n_eval, it = 1, 0
    for it in range(max_iter):
        active &= gmax(g) > tol
        if not active.any():
            break
        q, alphas = -g, []
        for s, y, r in reversed(hist):
            a = r * dot(s, q)
            alphas.append(a)
            q = q - ex(a) * y
        if hist:
            s, y, _ = hist[-1]
            q = q * ex(dot(s, y) / dot(y, y).clamp(min=1e-30))
        else:
            q = q * ex((1.0 / g.abs().sum((1, 3)).clamp(min=1e-30)).clamp(max=1.0))
        for (s, y, r), a in zip(hist, reversed(alphas)):
            q = q + ex(a - r * dot(y, q)) * s
        d = q * ex(active.float())
        gd = dot(g, d)
        if (gd >= 0).any():  # not a descent direction there: steepest descent
            d = torch.where(ex(gd >= 0), -g * ex(active.float()), d)
            gd = dot(g, d)
        t = torch.ones(P, G, device=dev)
        todo = active.clone()
        Wn, fn, gn = W, f, g
        for _ in range(40):
            ft, gt = fg(W + ex(t) * d)
            n_eval += 1
            ok = todo & (ft <= f + 1e-4 * t * gd)
            Wn = torch.where(ex(ok), W + ex(t) * d, Wn)
            fn, gn = torch.where(ok, ft, fn), torch.where(ex(ok), gt, gn)
            todo &= ~ok
            if not todo.any():
                break
            t = torch.where(todo, t * 0.5, t)
        active &= ~todo                                                      # no decrease found: stop there
        s, y = Wn - W, gn - g
        sy = dot(s, y)
        good = ex((sy > 1e-10).float())
        hist.append((s * good, y * good, torch.where(sy > 1e-10, 1.0 / sy.clamp(min=1e-10), 0.0)))
        hist = hist[-history:]
        W, f, g = Wn, fn, gn
    if stats is not None:
        stats.update(iterations=it, evaluations=n_eval,
                     converged=int((gmax(g) <= tol).sum()), problems=P * G)
    z = torch.bmm(torch.cat([Xt, Xt.new_ones(P, Xt.shape[1], 1)], -1), W.view(P, D + 1, G * K))
    return z.view(P, -1, G, K).argmax(-1).permute(0, 2, 1).cpu()


def fit_sklearn(Xtr, ys, Xte, n_classes, C=1.0, max_iter=1000, tol=1e-4, **_):
    """The reference: one scikit-learn LogisticRegression(lbfgs) per problem and label set."""
    import warnings
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    out = torch.empty(Xtr.shape[0], len(ys), Xte.shape[1], dtype=torch.long)
    for p in range(Xtr.shape[0]):
        for g, y in enumerate(ys):
            clf = LogisticRegression(C=C, max_iter=max_iter, tol=tol)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf.fit(Xtr[p].double().numpy(), np.asarray(y))
            out[p, g] = torch.as_tensor(clf.predict(Xte[p].double().numpy()))
    return out


BACKENDS = {"torch": fit_torch, "sklearn": fit_sklearn}


def split(ex, test_frac=0.2, seed=0):
    """Boolean test mask over points: a random ``test_frac`` of the examples (by example id)."""
    n_ex = int(ex.max()) + 1
    test_ex = torch.as_tensor(np.random.default_rng(seed).permutation(n_ex)[: max(1, round(n_ex * test_frac))])
    return torch.isin(ex, test_ex)


def probe(feats, pts: Points, test_frac=0.2, seed=0, backend="torch", C=1.0, min_per_class=2, **fit_kw):
    """Train/evaluate one probe per feature block (task and control). Returns row dicts: one per
    (layer, site) pooled over distances (distance None) and one per (layer, site, distance)."""
    if backend not in BACKENDS:
        raise InterpError(f"unknown probe backend '{backend}'; valid: {', '.join(BACKENDS)}")
    if not feats:
        raise InterpError("nothing to probe: no features")
    te = split(pts.ex, test_frac, seed)
    tr = ~te
    classes, y = torch.unique(pts.y, return_inverse=True)
    C_ = len(classes)
    counts = torch.bincount(y[tr], minlength=C_)
    if C_ < 2 or int(tr.sum()) < min_per_class * C_:
        raise InterpError(f"too few examples per class to train a probe ({int(tr.sum())} training points for "
                          f"{C_} classes, counts {counts.tolist()}); use more examples (n / --n)")
    # control task: a fixed random class per token id (Hewitt & Liang), same number of classes
    cmap = torch.as_tensor(np.random.default_rng([seed, 1]).integers(0, C_, int(pts.token.max()) + 1))
    yc = cmap[pts.token]
    maj = counts.argmax()
    # surface baseline: the most frequent training class of each token id
    tok_tr, y_tr = pts.token[tr], y[tr]
    table = torch.zeros(int(pts.token.max()) + 1, C_, dtype=torch.long)
    table.index_put_((tok_tr, y_tr), torch.ones_like(y_tr), accumulate=True)
    surf = torch.where(table.sum(1) > 0, table.argmax(1), maj)[pts.token]
    dist_te = pts.distance[te]
    groups = [(None, torch.ones(int(te.sum()), dtype=torch.bool))]
    if (dist_te >= 0).any():
        groups += [(int(d), dist_te == d) for d in torch.unique(dist_te[dist_te >= 0])]
    by_dim = {}
    for key, X in feats.items():
        by_dim.setdefault(X.shape[1], []).append(key)
    fit = BACKENDS[backend]
    rows = []
    for keys in by_dim.values():
        X = torch.stack([feats[k] for k in keys])                         # [P, N, D]
        Xtr, Xte = _standardize(X[:, tr], X[:, te])
        pred = fit(Xtr, [y[tr], yc[tr]], Xte, C_, C=C, **fit_kw)          # [P, 2, M]
        ok, okc = pred[:, 0] == y[te], pred[:, 1] == yc[te]
        ok_maj, ok_surf = y[te] == maj, surf[te] == y[te]
        for j, (layer, site) in enumerate(keys):
            for d, m in groups:
                acc, ctl = ok[j, m].float().mean().item(), okc[j, m].float().mean().item()
                rows.append(dict(layer=layer, site=site, distance=d, accuracy=acc, control=ctl,
                                 selectivity=acc - ctl, majority=ok_maj[m].float().mean().item(),
                                 surface=ok_surf[m].float().mean().item(), n=int(m.sum()),
                                 n_train=int(tr.sum())))
    return rows


# ---------------------------------------------------------------------------------------------
# runs

def run(models: dict, task: str, target: str, sites=("resid_post",), n: int = 256, seed: int = 0, seeds=None,
        sweep: dict | None = None, backend: str = "torch", C: float = 1.0, batch_size: int = 64, out=None,
        progress: bool = True, keep_seeds: bool = False, **knobs) -> ProbeResult:
    """Probe each model at each site and layer, for each seed (data, split and control map) and
    each value of the swept knob; returns the seed-aggregated tidy `ProbeResult`.

    sweep: {knob: [values]} (one knob, e.g. {"n_pairs": [2, 4, 8]}): the ``load`` column.
    out: a folder; each (model, load, seed) unit is written to ``out/.units/<digest>/`` as it
    finishes and reused when the same run (same spec and weights) is repeated: an interrupted run
    resumes. keep_seeds: return per-seed rows instead."""
    seeds = list(seeds) if seeds is not None else [seed]
    if sweep:
        if len(sweep) != 1:
            raise InterpError(f"sweep takes one knob, got {', '.join(sweep)}")
        (knob, values), = sweep.items()
        if knob in knobs:
            raise InterpError(f"knob '{knob}' is both swept and fixed")
        spec = _task(task)
        if knob not in spec.knobs:
            raise InterpError(f"unknown knob '{knob}' for task '{task}'; valid knobs: {', '.join(spec.knobs)}")
        loads = list(values)
    else:
        knob, loads = None, [None]
    for ld in loads:   # validate every knob set before any work
        resolve_knobs(_task(task), {**knobs, **({knob: ld} if knob else {})})
    wrapped = {name: hooks.wrap(m) for name, m in models.items()}
    for s in sites:   # a site may be missing in some models (rec.* in a transformer), not in all
        if s not in SITES:
            raise InterpError(f"unknown probe site '{s}'; valid sites: {', '.join(SITES)}")
        if not any(_site_names(hm, [s], skip_missing=True) for hm in wrapped.values()):
            raise InterpError(f"site '{s}' is not present in any of the models; their sites: "
                              f"{', '.join(dict.fromkeys(x for hm in wrapped.values() for x in _present(hm)))}")
    units_dir = None
    if out is not None:
        spec = json.dumps([task, target, list(sites), n, C, backend, knobs, batch_size,
                           {k: _fingerprint(m) for k, m in models.items()}], sort_keys=True, default=str)
        units_dir = Path(out) / ".units" / hashlib.sha1(spec.encode()).hexdigest()[:12]
        units_dir.mkdir(parents=True, exist_ok=True)
    units = [(name, ld, sd) for name in models for ld in loads for sd in seeds]
    it = units
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(units, desc="probes", unit="unit", leave=False)
    frames = []
    for name, ld, sd in it:
        path = None if units_dir is None else units_dir / f"{_safe(name)}__{_safe(str(ld))}__{sd}.parquet"
        if path is not None and path.is_file():
            frames.append(pd.read_parquet(path))
            continue
        kw = {**knobs, **({knob: ld} if knob else {})}
        feats, pts = collect(models[name], task, target, sites, n=n, seed=sd, batch_size=batch_size,
                             skip_missing=len(models) > 1, **kw)
        rows = probe(feats, pts, seed=sd, backend=backend, C=C)
        f = pd.DataFrame(rows)
        f.insert(0, "model", name)
        f.insert(1, "load", ld)
        f.insert(4, "target", target)
        f["seed"] = sd
        f["distance"] = f["distance"].astype("Int64")
        if path is not None:
            f.to_parquet(path, index=False)
        frames.append(f)
    per_seed = pd.concat(frames, ignore_index=True)
    if knob is None:
        per_seed["load"] = pd.array([pd.NA] * len(per_seed), dtype="Int64")
    order = {"model": {m: i for i, m in enumerate(models)}, "site": {s: i for i, s in enumerate(sites)}}

    def sort(df):
        site_rank = df["site"].map(lambda s: order["site"].get(s, order["site"].get("attn.head_out.per_head", 0)))
        return df.assign(_m=df["model"].map(order["model"]), _s=site_rank).sort_values(
            ["_m", "load", "_s", "site", "layer", "distance"], kind="stable", na_position="first").drop(
            columns=["_m", "_s"]).reset_index(drop=True)
    res = ProbeResult(sort(per_seed)) if keep_seeds else ProbeResult(sort(aggregate(per_seed)))
    res.attrs["load_knob"] = knob
    res.attrs.update(task=task, target=target, knobs=knobs, seeds=seeds, backend=backend, C=C, n=n)
    return res


def _fingerprint(model) -> str:
    """A cheap digest of a model's parameters (so resumed units never mix different weights)."""
    h = hashlib.sha1()
    with torch.no_grad():
        for name, p in model.named_parameters():
            x = p.detach().double()
            h.update(f"{name}{tuple(p.shape)}{x.sum().item():.10e}{x.abs().sum().item():.10e}".encode())
    return h.hexdigest()[:12]


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]", "_", s)


# ---------------------------------------------------------------------------------------------
# command line (`interp probe`)

def _parse_sweep(spec):
    if spec is None:
        return None
    if "=" not in spec or not spec.split("=", 1)[1]:
        raise InterpError(f"--sweep '{spec}' is not valid; expected KNOB=V1,V2,... (e.g. n_pairs=2,4,8)")
    knob, vals = spec.split("=", 1)
    return {knob: [json.loads(v) if re.fullmatch(r"-?\d+(\.\d+)?|true|false|null", v) else v
                   for v in vals.split(",")]}


def _parse_seeds(spec, seed):
    if spec is None:
        return [seed]
    try:
        return [int(s) for s in spec.split(",")]
    except ValueError:
        raise InterpError(f"--seeds '{spec}' is not valid; expected comma-separated integers, e.g. 0,1,2") from None


def cli_run(a, load_model, parse_knobs):
    """`interp probe`: run, print the pooled table, write probes.csv / .parquet and the figures
    (probes.png; distance.png when the target has distances; load.png with --sweep)."""
    import time
    t0 = time.time()
    sweep, seeds = _parse_sweep(a.sweep), _parse_seeds(a.seeds, a.seed)
    models = {Path(m).name: load_model(m, a.device) for m in a.model}
    res = run(models, a.task, a.target, sites=a.site, n=a.n, seeds=seeds, sweep=sweep, backend=a.backend, C=a.C,
              out=a.units, **parse_knobs(a.knob))
    show = ["model"] + (["load"] if sweep else []) + ["layer", "site", "accuracy"] + \
        (["acc_lo", "acc_hi"] if len(seeds) > 1 else []) + ["control", "selectivity", "majority", "surface", "n"]
    pd.set_option("display.width", 200)
    print(pd.DataFrame(res.pooled())[show].round(3).to_string(index=False))
    out = Path(a.out)
    written = [p.name for p in res.save(out)]
    res.plot(out / "probes.png")
    written.append("probes.png")
    if res["distance"].notna().any():
        d = res[res["distance"].notna()]
        res.plot_distance(out / "distance.png", min_n=min(20, int(d["n"].max())))
        written.append("distance.png")
    if sweep:
        res.plot_load(out / "load.png")
        written.append("load.png")
    print(f"wrote {', '.join(f'{out}/{w}' for w in written)} ({time.time() - t0:.0f} s)")
