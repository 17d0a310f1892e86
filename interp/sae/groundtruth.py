"""Which latents hold which values of a task variable: per value, the best single latent's AUROC
(latent activation as the score for "the variable has this value"; scikit-learn's ``roc_auc_score``)
and F1 (latent active = predicted), and how many latents a linear probe needs to read the variable as
well as a probe on the raw site does.

Points: ``where='answer'`` reads the site at each answer position and labels it with ``target`` there
(mqar ``bound_value`` at a query key = the value bound to that key); ``where='all'`` every token where
the label is defined; ``offset`` reads the site that many tokens later (e.g. +1: the value token
after a context key). ``target`` is a label name, or ``name[j]`` for one column (``var_value[0]``)."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.preprocessing import StandardScaler

from interp import InterpError


def labels_of(batch, target: str):
    """The label tensor [N, T] of ``target`` ('bound_value' or 'var_value[0]')."""
    m = re.fullmatch(r"(\w+)(?:\[(\d+)\])?", target)
    if not m or m.group(1) not in batch.labels:
        raise InterpError(f"target '{target}' is not a label of this task; valid: {', '.join(batch.labels)}")
    y = batch.labels[m.group(1)]
    if m.group(2) is not None:
        y = y[..., int(m.group(2))]
    elif y.dim() != 2:
        raise InterpError(f"label '{target}' has several columns; pick one, e.g. {target}[0]")
    return y


def points(batch, target: str, where: str = "answer", offset: int = 0):
    """(rows, positions, labels) of the probe points (module docstring)."""
    y = labels_of(batch, target)
    if where == "answer":
        b, t = (batch.answer_pos >= 0).nonzero(as_tuple=True)
        t = batch.answer_pos[b, t]
    elif where == "all":
        b, t = (y >= 0).nonzero(as_tuple=True)
    else:
        raise InterpError(f"where='{where}' is not valid; valid: answer, all")
    lab = y[b, t]
    keep = (lab >= 0) & (t + offset >= 0) & (t + offset < y.shape[1])
    return b[keep], (t + offset)[keep], lab[keep]


def auroc_all(Z: np.ndarray, y: np.ndarray, values) -> np.ndarray:
    """AUROC of every latent (column of Z [N, F]) for every value (y == v), [F, len(values)], from
    ranks with ties averaged (Mann-Whitney U; equal to roc_auc_score)."""
    R = rankdata(Z, axis=0)
    out = np.full((Z.shape[1], len(values)), np.nan)
    for j, v in enumerate(values):
        pos = y == v
        n1, n0 = int(pos.sum()), int((~pos).sum())
        if n1 and n0:
            out[:, j] = (R[pos].sum(0) - n1 * (n1 + 1) / 2) / (n1 * n0)
    return out


def best_features(Z, y, top: int = 16, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Per value of ``y``: the best latent, its AUROC (recomputed with sklearn), its F1 (active vs not),
    the value's count, and ``auroc_null``: the best latent's AUROC for the same value with the labels
    permuted (what picking the best of many latents gives by chance with this many points); and
    {value: its ``top`` latents by AUROC}."""
    Z, y = np.asarray(Z, dtype=np.float64), np.asarray(y)
    values = sorted(set(y.tolist()))
    A = auroc_all(Z, y, values)
    null = np.nanmax(auroc_all(Z, np.random.default_rng(seed).permutation(y), values), axis=0)
    rows, ranking = [], {}
    for j, v in enumerate(values):
        if np.isnan(A[:, j]).all():
            continue
        order = np.argsort(-np.nan_to_num(A[:, j], nan=-1.0), kind="stable")
        f = int(order[0])
        pos = y == v
        rows.append({"value": int(v), "feature": f, "auroc": float(roc_auc_score(pos, Z[:, f])),
                     "f1": float(f1_score(pos, Z[:, f] > 0, zero_division=0.0)), "n_pos": int(pos.sum()),
                     "fires": float((Z[pos, f] > 0).mean()), "auroc_null": float(null[j])})
        ranking[int(v)] = [int(i) for i in order[:top]]
    return pd.DataFrame(rows), ranking


def _probe_acc(Xtr, ytr, Xte, yte, seed: int) -> float:
    if Xtr.shape[1] == 0:
        return float("nan")
    sc = StandardScaler().fit(Xtr)
    clf = LogisticRegression(max_iter=300, random_state=seed).fit(sc.transform(Xtr), ytr)
    return float((clf.predict(sc.transform(Xte)) == yte).mean())


def features_needed(Z, X, y, groups, ranking: dict, per_value=(1, 2, 4, 8), tol: float = 0.02,
                    seed: int = 0) -> pd.DataFrame:
    """Probe accuracy on the latents {top m per value} for m in ``per_value`` against a probe on the raw
    site ``X`` (row ``m=0``, ``n_features`` = d); ``groups``: example index of each point (80/20 split by
    example). Column ``reaches``: accuracy within ``tol`` of the raw probe's, counted only where the raw
    probe beats the test set's majority class (otherwise there is nothing to reach; all False)."""
    Z, X, y, groups = (np.asarray(a) for a in (Z, X, y, groups))
    rng = np.random.default_rng(seed)
    ex = np.unique(groups)
    test = np.isin(groups, rng.choice(ex, max(1, len(ex) // 5), replace=False))
    raw = _probe_acc(X[~test], y[~test], X[test], y[test], seed)
    majority = float(np.unique(y[test], return_counts=True)[1].max() / test.sum())
    rows = [{"m": 0, "n_features": X.shape[1], "accuracy": raw, "reaches": raw > majority}]
    for m in per_value:
        feats = sorted({f for v in ranking.values() for f in v[:m]})
        acc = _probe_acc(Z[~test][:, feats], y[~test], Z[test][:, feats], y[test], seed)
        rows.append({"m": m, "n_features": len(feats), "accuracy": acc,
                     "reaches": bool(raw > majority and acc >= raw - tol)})
    return pd.DataFrame(rows)


@torch.no_grad()
def groundtruth(coder, X, batch, target: str, where: str = "answer", offset: int = 0, top: int = 16,
                probe: bool = True, seed: int = 0):
    """(per-value table of `best_features`, ranking, `features_needed` table or None) for the site
    vectors ``X`` [B, T, d] of ``batch``; ``coder``: a TopK coder or an `interp.sae.views.Latents` (then
    ``X`` are its read site's vectors: a transcoder's input, a rank-1 dictionary's ``write_kd``)."""
    from interp.sae.coder import dense_latents
    from interp.sae.views import Latents
    b, t, y = points(batch, target, where, offset)
    if len(y) == 0:
        raise InterpError(f"no points for target '{target}' (where={where}, offset={offset})")
    x = X[b, t]
    Z = (coder.encode(x) if isinstance(coder, Latents) else dense_latents(coder, x)).float().cpu().numpy()
    y, b = y.cpu(), b.cpu()
    table, ranking = best_features(Z, y.numpy(), top)
    need = features_needed(Z, x.cpu().numpy(), y.numpy(), b.numpy(), ranking, seed=seed) if probe else None
    return table, ranking, need
