"""Linear probes: is a tracked fact (a variable's value, a bound value) linearly decodable at a
site, layer by layer, and is that the model's doing rather than the probe's?

    from interp import probes
    df = probes.run(models, task="state_recall", target="query_var_value", sites=["resid_post", "rec.state"])
    df.plot()

Protocol: activations are captured through `hooks` at every token where the target label is
defined; train/test split **by example**; multinomial logistic regression per (layer, site);
a **control task** (Hewitt & Liang 2019) re-labels each token by a fixed random map of its token id,
so a probe that memorises surface identity scores high there too; **selectivity** = accuracy -
control accuracy; the majority-class baseline is reported alongside.

Two backends, one interface: ``torch`` fits every (layer, site) probe of a batch at once (full-batch
L-BFGS on a stacked weight tensor; GPU if available) and ``sklearn`` (LogisticRegression, lbfgs,
same L2 strength) is the reference.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

import hooks
from interp import InterpError
from interp import tasks as T

SITES = ("resid_post", "resid_pre", "mixer_out", "rec.state", "rec.readout")


class ProbeResult(pd.DataFrame):
    """Tidy results: model, layer, site, target, accuracy, control, selectivity, majority, n_train,
    n_test. ``.plot()`` draws accuracy (solid) and selectivity (dashed) against layer, one colour
    per model, one panel per site."""

    @property
    def _constructor(self):
        return ProbeResult

    def plot(self, path=None):
        import matplotlib
        if path is not None:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        sites = list(dict.fromkeys(self["site"]))
        colour = {m: f"C{i}" for i, m in enumerate(dict.fromkeys(self["model"]))}  # same colour in every panel
        lo = min(-0.05, float(self["selectivity"].min()) - 0.05)
        fig, axes = plt.subplots(1, len(sites), figsize=(4.5 * len(sites), 3.4), squeeze=False)
        for ax, site in zip(axes[0], sites):
            sub = self[self.site == site]
            for model, g in sub.groupby("model", sort=False):
                c = colour[model]
                ax.plot(g["layer"], g["accuracy"], marker="o", color=c, label=f"{model} accuracy")
                ax.plot(g["layer"], g["selectivity"], ls="--", color=c, label=f"{model} selectivity")
            ax.axhline(sub["majority"].max(), color="gray", lw=0.8, ls=":", label="majority")
            ax.set_title(f"{sub['target'].iloc[0]} from {site}", fontsize=10)
            ax.set_xlabel("layer")
            ax.set_ylim(lo, 1.05)
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("test accuracy")
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=110)
            plt.close(fig)
        return fig


def collect(model, task: str, target: str, sites=("resid_post",), n: int = 512, seed: int = 0,
            batch_size: int = 64, skip_missing: bool = False, **knobs):
    """Features at every token where ``target`` is defined.

    Returns (feats: {(layer, site): [N_tok, D] float32}, labels [N_tok], example_ids [N_tok],
    token_ids [N_tok])."""
    batch = T.generate(task, n, seed=seed, **knobs)
    lab = target_labels(batch, target)
    hm = hooks.wrap(model)
    names = []
    for s in sites:
        if s not in SITES:
            raise InterpError(f"unknown probe site '{s}'; valid sites: {', '.join(SITES)}")
        layer_names = [f"blocks.{i}.{s}" for i in range(hm.n_layers) if f"blocks.{i}.{s}" in hm.hook_names]
        if not layer_names and skip_missing:
            continue
        if not layer_names:
            raise InterpError(f"site '{s}' is not present in this model (no layer has it; e.g. 'rec.state' "
                              "needs a recurrent mixer)")
        names += layer_names
    mask = lab >= 0
    feats = {}
    dev = next(model.parameters()).device
    for s0 in range(0, n, batch_size):
        x = batch.tokens[s0:s0 + batch_size]
        m = mask[s0:s0 + batch_size]
        with torch.no_grad():
            _, cache = hm.run_with_cache(x.to(dev), names=names)
        for name, act in cache.items():
            i = int(name.split(".")[1])
            site = name.split(".", 2)[2]
            feats.setdefault((i, site), []).append(act.float().flatten(2)[m.to(act.device)].cpu())
    feats = {k: torch.cat(v) for k, v in feats.items()}
    ex = torch.arange(n)[:, None].expand_as(lab)[mask]
    return feats, lab[mask], ex, batch.tokens[mask]


def target_labels(batch, target: str):
    """[N, T] labels for ``target``: a per-token label name, or ``name[j]`` for column j of a
    per-token vector label (e.g. ``var_value[0]``: the value of x0 after each token)."""
    import re
    m = re.fullmatch(r"(\w+)(?:\[(\d+)\])?", target)
    valid = [k if v.dim() == 2 else f"{k}[0..{v.shape[-1] - 1}]" for k, v in batch.labels.items()]
    task = batch.meta["task"]
    if not m or m.group(1) not in batch.labels:
        raise InterpError(f"target '{target}' is not produced by task '{task}'; valid targets: {', '.join(valid)}")
    lab = batch.labels[m.group(1)]
    if lab.dim() == 3:
        if m.group(2) is None or int(m.group(2)) >= lab.shape[-1]:
            raise InterpError(f"target '{target}' needs a column index; valid targets: {', '.join(valid)}")
        return lab[..., int(m.group(2))]
    if m.group(2) is not None:
        raise InterpError(f"target '{m.group(1)}' has no columns; valid targets: {', '.join(valid)}")
    return lab


def _standardize(tr, te):
    mu, sd = tr.mean(0), tr.std(0).clamp(min=1e-6)
    return (tr - mu) / sd, (te - mu) / sd


def fit_torch(Xtr, ytr, Xte, n_classes, C=1.0, max_iter=100):
    """Multinomial logistic regression, full-batch L-BFGS, loss = mean CE + ||W||^2 / (2 C N)
    (sklearn's objective divided by N). Returns test predictions."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    Xtr, Xte, ytr = Xtr.to(dev), Xte.to(dev), ytr.to(dev)
    W = torch.zeros(Xtr.shape[1], n_classes, device=dev, requires_grad=True)
    b = torch.zeros(n_classes, device=dev, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=max_iter, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-6, tolerance_change=1e-9)
    lam = 1.0 / (C * Xtr.shape[0])

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(Xtr @ W + b, ytr) + 0.5 * lam * W.square().sum()
        loss.backward()
        return loss
    opt.step(closure)
    with torch.no_grad():
        return (Xte @ W + b).argmax(-1).cpu()


def fit_sklearn(Xtr, ytr, Xte, n_classes, C=1.0, max_iter=200):
    from sklearn.linear_model import LogisticRegression
    clf = LogisticRegression(C=C, max_iter=max_iter)
    clf.fit(Xtr.numpy(), ytr.numpy())
    return torch.as_tensor(clf.predict(Xte.numpy()))


BACKENDS = {"torch": fit_torch, "sklearn": fit_sklearn}


def probe(feats, labels, ex, token_ids, test_frac=0.2, seed=0, backend="torch", C=1.0, min_per_class=2):
    """Train/evaluate one probe per feature block. Returns a list of row dicts."""
    if backend not in BACKENDS:
        raise InterpError(f"unknown probe backend '{backend}'; valid: {', '.join(BACKENDS)}")
    rng = np.random.default_rng(seed)
    n_ex = int(ex.max()) + 1
    test_ex = torch.as_tensor(rng.permutation(n_ex)[: max(1, int(n_ex * test_frac))])
    te = torch.isin(ex, test_ex)
    tr = ~te
    classes, y = torch.unique(labels, return_inverse=True)
    counts = torch.bincount(y[tr], minlength=len(classes))
    if (counts < min_per_class).all() or counts.max() < min_per_class or len(classes) < 2:
        raise InterpError(f"too few examples per class to train a probe (train counts {counts.tolist()}); "
                          "use more examples (--n)")
    # control task: a fixed random label per token id (same label set size)
    cmap = torch.as_tensor(np.random.default_rng(seed + 1).integers(0, len(classes), int(token_ids.max()) + 1))
    yc = cmap[token_ids]
    majority = (y[te] == counts.argmax()).float().mean().item()
    fit = BACKENDS[backend]
    rows = []
    for (layer, site), X in feats.items():
        Xtr, Xte = _standardize(X[tr], X[te])
        acc = (fit(Xtr, y[tr], Xte, len(classes), C) == y[te]).float().mean().item()
        ctl = (fit(Xtr, yc[tr], Xte, len(classes), C) == yc[te]).float().mean().item()
        rows.append(dict(layer=layer, site=site, accuracy=acc, control=ctl, selectivity=acc - ctl,
                         majority=majority, n_train=int(tr.sum()), n_test=int(te.sum())))
    return rows


def run(models: dict, task: str, target: str, sites=("resid_post",), n: int = 512, seed: int = 0,
        backend: str = "torch", C: float = 1.0, **knobs) -> ProbeResult:
    """Probe each model at each site and layer; one tidy DataFrame."""
    out = []
    for s in sites:  # a site may be missing in some models (rec.state in a transformer), not in all
        if not any(f".{s}" in n_ for m in models.values() for n_ in hooks.wrap(m).hook_names):
            raise InterpError(f"site '{s}' is not present in any of the models; valid sites: {', '.join(SITES)}")
    for name, model in models.items():
        feats, y, ex, tok = collect(model, task, target, sites, n=n, seed=seed, skip_missing=len(models) > 1, **knobs)
        for r in probe(feats, y, ex, tok, seed=seed, backend=backend, C=C):
            out.append(dict(model=name, target=target, **r))
    return ProbeResult(out).sort_values(["model", "site", "layer"], kind="stable").reset_index(drop=True)
