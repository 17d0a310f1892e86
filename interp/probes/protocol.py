"""The probe protocol: train/val/test split by example (`assign`; the older two-way `split`), then
`probe`, which fits one probe per feature block and scores it on val and test against the controls
(label controls and the untrained model) and the majority and surface baselines, pooled, per
distance and per whether the model answered the example correctly; it warns when a class has fewer
than `MIN_TEST_PER_CLASS` test points (`warn_small_classes`)."""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from interp import InterpError
from interp.probes.controls import FLAG_AT, check_controls, label_controls, uninformative
from interp.probes.fit import BACKENDS, _standardize, check_backend
from interp.probes.targets import Points

SPLIT = (0.6, 0.2, 0.2)
TRAIN, VAL, TEST = 0, 1, 2
MIN_EXAMPLES = 10
MIN_TEST_PER_CLASS = 5


def check_split(split) -> tuple:
    """(train, val, test) fractions: three positive numbers summing to 1."""
    try:
        f = tuple(float(x) for x in split)
    except (TypeError, ValueError):
        f = ()
    if len(f) != 3 or not all(math.isfinite(x) and x > 0 for x in f) or abs(sum(f) - 1) > 1e-6:
        raise InterpError(f"split {split!r} is not valid; expected three positive fractions train,val,test "
                          "summing to 1, e.g. 0.6,0.2,0.2")
    return f


def check_C(C) -> float:
    if isinstance(C, bool) or not isinstance(C, (int, float)) or not math.isfinite(C) or C <= 0:
        raise InterpError(f"C={C} is not valid; C (the inverse L2 strength, sklearn's C) must be a positive "
                          "finite number, e.g. 1.0")
    return float(C)


def assign(ex, split=SPLIT, seed=0) -> torch.Tensor:
    """Per point: 0 train, 1 val, 2 test, by example (every point of an example in one split): a
    permutation of the examples seeded by ``seed``, round(n * val) to val and round(n * test) to
    test (at least one each), the rest to train."""
    f = check_split(split)
    n_ex = int(ex.max()) + 1
    n_val, n_test = max(1, round(n_ex * f[1])), max(1, round(n_ex * f[2]))
    if n_ex - n_val - n_test < 1:
        raise InterpError(f"{n_ex} examples cannot be split train/val/test {f}; use more examples (n / --n)")
    role = np.full(n_ex, TRAIN)
    perm = np.random.default_rng(seed).permutation(n_ex)
    role[perm[:n_test]] = TEST
    role[perm[n_test:n_test + n_val]] = VAL
    return torch.as_tensor(role)[ex]


def split(ex, test_frac=0.2, seed=0):
    """Boolean test mask over points: a random ``test_frac`` of the examples (by example id); the
    two-way split of earlier versions (`probe` uses `assign`)."""
    n_ex = int(ex.max()) + 1
    test_ex = torch.as_tensor(np.random.default_rng(seed).permutation(n_ex)[: max(1, round(n_ex * test_frac))])
    return torch.isin(ex, test_ex)


def warn_small_classes(classes, y, role, seed=0) -> bool:
    """Warn (UserWarning) when a class of the labels ``y`` (indices into ``classes``, the label
    values) has fewer than `MIN_TEST_PER_CLASS` test points under ``role``, naming the fewest; the
    accuracy on such a class rests on a handful of points. Returns whether it warned."""
    te = torch.bincount(y[role == TEST], minlength=len(classes))
    small = torch.nonzero(te < MIN_TEST_PER_CLASS).flatten()
    if not len(small):
        return False
    small = small[torch.argsort(te[small], stable=True)]
    fewest = ", ".join(f"label {classes[i].item()}: {int(te[i])}" for i in small[:5])
    warnings.warn(f"probe test split (seed {seed}): {len(small)} of {len(classes)} classes have fewer than "
                  f"{MIN_TEST_PER_CLASS} test points ({fewest}{', ...' if len(small) > 5 else ''}; "
                  f"{int(te.sum())} test points in all): their accuracy rests on a few points; use more "
                  "examples (n / --n)", UserWarning, stacklevel=3)
    return True


def _baselines(pts: Points, y, tr, n_classes):
    """Per point: the majority prediction and the surface one (most frequent training class of the
    point's token id; the majority class for ids not seen in training)."""
    maj = torch.bincount(y[tr], minlength=n_classes).argmax()
    table = torch.zeros(int(pts.token.max()) + 1, n_classes, dtype=torch.long)
    table.index_put_((pts.token[tr], y[tr]), torch.ones_like(y[tr]), accumulate=True)
    surf = torch.where(table.sum(1) > 0, table.argmax(1), maj)[pts.token]
    return torch.full_like(y, int(maj)), surf


def _groups(pts: Points, role):
    """[(distance, answered, mask over points)]: pooled; per distance (seen among test points);
    with ``pts.correct``, pooled over the examples the model answered correctly / wrongly."""
    everything = torch.ones(len(pts), dtype=torch.bool)
    out = [(None, "all", everything)]
    d_te = pts.distance[role == TEST]
    out += [(int(d), "all", pts.distance == d) for d in torch.unique(d_te[d_te >= 0])]
    if pts.correct is not None:
        out += [(None, a, m) for a, m in (("correct", pts.correct), ("wrong", ~pts.correct))
                if bool((m & (role == TEST)).any())]
    return out


def _fit_blocks(feats, keys, role, labels: dict, n_classes, backend, C, fit_kw):
    """{(layer, site): {label set: predictions [N] (-1 on training points)}} for ``keys`` of
    ``feats``: every block of one width fitted together, on the training points."""
    tr, ev = role == TRAIN, role != TRAIN
    by_dim = {}
    for key in keys:
        by_dim.setdefault(feats[key].shape[1], []).append(key)
    names, ys = list(labels), [v[tr] for v in labels.values()]
    out = {}
    for ks in by_dim.values():
        X = torch.stack([feats[k] for k in ks])                                  # [P, N, D]
        Xtr, Xev = _standardize(X[:, tr], X[:, ev])
        pred = BACKENDS[backend](Xtr, ys, Xev, n_classes, C=C, **fit_kw)         # [P, G, M]
        for j, k in enumerate(ks):
            out[k] = {}
            for g, name in enumerate(names):
                full = torch.full((len(role),), -1, dtype=torch.long)
                full[ev] = pred[j, g]
                out[k][name] = full
    return out


def _acc(pred, y, m):
    return pred[m].eq(y[m]).float().mean().item() if bool(m.any()) else float("nan")


def probe(feats, pts: Points, split=SPLIT, seed=0, backend="torch", C=1.0, controls=("shuffled",), untrained=None,
          min_per_class=2, flag_at=FLAG_AT, **fit_kw):
    """Fit and score one probe per feature block ``feats`` {(layer, site): [N, D]} on ``pts``.

    Examples split train/val/test (``split`` fractions, seeded by ``seed``); each probe fitted on
    train, scored on val (``val_accuracy``: what picks a layer) and test (``accuracy``). Controls,
    each scored on the same test points: ``shuffled`` / ``hewitt_liang`` (a probe fitted to the
    control labels, scored against them) and ``untrained`` (a probe fitted to the true labels on
    ``untrained``, the same blocks from the untrained model). Returns row dicts, one per (layer,
    site, distance (None: pooled), answered ('all', or 'correct' / 'wrong' when ``pts.correct`` is
    known), control_kind) with accuracy, val_accuracy, control, selectivity (= accuracy - control),
    uninformative (control >= ``flag_at``), majority, surface, n (test points), n_val, n_train.
    A class with fewer than `MIN_TEST_PER_CLASS` test points is warned about (`warn_small_classes`)."""
    check_backend(backend)
    C, controls = check_C(C), check_controls(controls)
    if not feats:
        raise InterpError("nothing to probe: no features")
    role = assign(pts.ex, split, seed)
    tr = role == TRAIN
    classes, y = torch.unique(pts.y, return_inverse=True)
    K = len(classes)
    counts = torch.bincount(y[tr], minlength=K)
    if K < 2 or int(tr.sum()) < min_per_class * K:
        raise InterpError(f"too few examples per class to train a probe ({int(tr.sum())} training points for "
                          f"{K} classes, counts {counts.tolist()}); use more examples (n / --n)")
    warn_small_classes(classes, y, role, seed)
    labels = {"task": y, **label_controls(controls, y, pts.token, K, seed)}
    preds = _fit_blocks(feats, list(feats), role, labels, K, backend, C, fit_kw)
    if "untrained" in controls and untrained is not None:
        for k, p in _fit_blocks(untrained, [k for k in feats if k in untrained], role, {"task": y}, K, backend, C,
                                fit_kw).items():
            preds[k]["untrained"] = p["task"]
    kinds = [c for c in controls if c != "untrained" or untrained is not None] or ["none"]
    maj, surf = _baselines(pts, y, tr, K)
    rows = []
    for (layer, site), pr in preds.items():
        for d, answered, g in _groups(pts, role):
            te, va = g & (role == TEST), g & (role == VAL)
            acc = _acc(pr["task"], y, te)
            base = dict(layer=layer, site=site, distance=d, answered=answered, accuracy=acc,
                        val_accuracy=_acc(pr["task"], y, va), majority=_acc(maj, y, te), surface=_acc(surf, y, te),
                        n=int(te.sum()), n_val=int(va.sum()), n_train=int(tr.sum()))
            for kind in kinds:
                ctl = float("nan") if kind not in pr else _acc(pr[kind], labels.get(kind, y), te)
                rows.append(dict(base, control_kind=kind, control=ctl, selectivity=acc - ctl,
                                 uninformative=bool(uninformative(ctl, flag_at))))
    return rows
