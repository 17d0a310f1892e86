"""The causal check of a probe: interchange the probe's subspace between two examples at the probed
site and ask how often the model's answer follows the source's label (IIA), against a random
subspace of the same rank and the full-site patch (`interp.interventions` runs the interchanges).

For one (layer, site) of one unit (model, knob set, seed), on that unit's data and split:

* the probe is fitted on the training examples (standardised features, as `probe` fits it) and its
  subspace is the row space of its class directions in the site's own coordinates, centred over
  classes (`interventions.probe_basis`): rank <= classes - 1, or its top ``rank`` directions;
* pairs: test examples whose answer is the target's value (`targets.answer_labels`), ordered
  (base, source) with different labels and the same answer position, at most ``max_pairs`` drawn
  with a generator seeded by [seed, 3];
* where: residual, mixer, MLP and head sites at the answer position (the query token, a probe point
  of every supported target); ``rec.state@key`` / ``rec.state@query`` (features S^T k, S^T q in
  [H*V]) as the value side of ``rec.state`` (every key row of the state has its component in the
  probe's value subspace replaced) at the token before the answer, whose state the query token's
  step continues from; flattened ``rec.state`` has no such view and is not checked (NaN);
* IIA over the pairs the model answers correctly on both examples unintervened: ``iia`` along the
  probe's subspace, ``iia_random`` the mean over 3 random subspaces of the same rank (seeds
  1000 * seed + 0..2), ``iia_full`` the whole site (an upper reference).
"""
from __future__ import annotations

import numpy as np
import torch

from interp import InterpError
from interp import tasks as T
from interp.probes.features import collect
from interp.probes.fit import _standardize, fit_weights
from interp.probes.protocol import TEST, TRAIN, assign
from interp.probes.targets import answer_labels

N_RANDOM = 3
STATE_READOUTS = ("rec.state@key", "rec.state@query")


def intervention_site(site: str, layer: int):
    """(interventions.Site, positions) where the probe of ``site`` at ``layer`` is interchanged, or
    None (flattened rec.state)."""
    from interp.interventions import Site
    if site == "rec.state":
        return None
    if site in STATE_READOUTS:
        return Site(f"blocks.{layer}.rec.state", side="value"), "answer-1"
    if site.startswith("attn.head_out.h") and site[len("attn.head_out.h"):].isdigit():
        return Site(f"blocks.{layer}.attn.head_out", head=int(site[len("attn.head_out.h"):])), "answer"
    return Site(f"blocks.{layer}.{site}"), "answer"


def pairs_from(batch, target, test_ex, max_pairs, seed):
    """Ordered (base, source) pairs of test examples whose answer is the target's value, with
    different labels and the same answer position (see the module doc). Returns
    `interventions.InterchangePairs` (possibly empty)."""
    from interp.interventions import InterchangePairs
    ap, ans, y, keep = answer_labels(batch, target)
    ok = torch.zeros(len(batch), dtype=torch.bool)
    ok[test_ex] = True
    idx = torch.nonzero(keep & ok).flatten()
    b, s = torch.meshgrid(idx, idx, indexing="ij")
    b, s = b.flatten(), s.flatten()
    m = (y[b] != y[s]) & (ap[b] == ap[s])
    b, s = b[m], s[m]
    if len(b) > max_pairs:
        pick = torch.as_tensor(np.sort(np.random.default_rng([seed, 3]).permutation(len(b))[:max_pairs]))
        b, s = b[pick], s[pick]
    base, src = batch.tokens[b], batch.tokens[s]
    return InterchangePairs(base, src, ap[b], ans[b], ans[s], (base != src).int().argmax(1) if len(b) else ap[b],
                            torch.arange(len(b)), torch.zeros(len(b), dtype=torch.bool))


def check(model, task, target, chosen, sites, n, seed, split, backend, C, knobs, rank=None, max_pairs=256,
          batch_size=64) -> list:
    """Causal-check rows for ``chosen`` [(layer, site)] of one unit (the module doc says how): one
    dict per (layer, site) with iia, iia_random, iia_full, n_iia (pairs kept: answered correctly on
    both), n_pairs (pairs drawn), rank, causal_site (where the interchange acted)."""
    from interp.interventions import Interchanger, probe_basis, random_basis
    batch = T.generate(task, n, seed=seed, **knobs)
    feats, pts = collect(model, task, target, sites, batch=batch, batch_size=batch_size, skip_missing=True,
                         layers=sorted({la for la, _ in chosen}))
    role = assign(pts.ex, split, seed)
    tr = role == TRAIN
    classes, y = torch.unique(pts.y, return_inverse=True)
    ip = pairs_from(batch, target, torch.unique(pts.ex[role == TEST]), max_pairs, seed)
    rows = []
    for layer, site in chosen:
        where = intervention_site(site, layer)
        row = dict(layer=layer, site=site, iia=float("nan"), iia_random=float("nan"), iia_full=float("nan"),
                   n_iia=0, n_pairs=len(ip), rank=0, causal_site="")
        if where is None or (layer, site) not in feats or len(ip) == 0:
            rows.append(row)
            continue
        X = feats[(layer, site)]
        Xtr, _ = _standardize(X[tr], X[:1])
        W = fit_weights(Xtr, y[tr], len(classes), backend, C)
        R = probe_basis(W, scale=X[tr].std(0).clamp(min=1e-6))
        if rank and rank > R.shape[0]:
            import warnings
            warnings.warn(f"causal rank {rank} is above the probe's rank {R.shape[0]} ({len(classes)} classes) at "
                          f"layer {layer} {site}: interchanging its {R.shape[0]} directions (the causal_rank column "
                          "says which rank ran)", stacklevel=2)
        R = R[:rank] if rank else R
        ix = Interchanger(model, ip, where[0], positions=where[1], batch_size=batch_size)
        if ix.width != R.shape[1]:
            raise InterpError(f"probe of '{site}' at layer {layer} has width {R.shape[1]}, the interchange site "
                              f"{where[0].label()} {ix.width}")
        iia, kept = ix.iia(R)
        rnd = [ix.iia(random_basis(ix.width, R.shape[0], 1000 * seed + j))[0] for j in range(N_RANDOM)]
        row.update(iia=iia, iia_random=float(sum(rnd) / len(rnd)), iia_full=ix.iia(None)[0], n_iia=kept,
                   rank=int(R.shape[0]), causal_site=f"{where[0].label()}@{where[1]}")
        rows.append(row)
    return rows
