"""`intervene`: check its arguments, prepare the pairs at a site once (`Interchanger`) and run each subspace's
interchanges into an IIA table (`plan_intervene` does the checks and the preparation alone, `Planned.run` the
interchanges; `interp intervene` checks everything before it makes its output folder)."""
from __future__ import annotations

import numpy as np
import torch

import hooks
from interp import InterpError
from interp.checks import check_count
from interp.interventions.intervene import (InterchangePairs, Interchanger, describe_positions,
                                            interchange_pairs, resolve_positions, result_row, site_width)
from interp.interventions.site import Site
from interp.interventions.subspace import check_basis, random_basis

BUILTIN = ("full", "random", "write_key")   # subspace names `intervene` knows; a given basis may not take one


def check_seeds(seeds, what: str = "seeds", empty_ok: bool = True) -> list:
    """``seeds`` as a list of distinct integers >= 0 (at least one unless ``empty_ok``): a repeated seed would
    count its run twice."""
    try:
        out = [check_count(s, what, 0) for s in seeds]
    except (TypeError, InterpError):
        out = None
    if out is None or len(set(out)) < len(out) or not (out or empty_ok):
        raise InterpError(f"{what} {seeds!r} is not valid; valid: {'' if empty_ok else 'at least one, '}"
                          "distinct integers >= 0, e.g. (0, 1, 2)")
    return out


def subspace_items(subspaces, rank, seeds, width, site: Site):
    """[(label, R | None | 'write_key', rank, seed)] from the ``subspaces`` argument of `intervene`; each label
    once (bare tensors are 'given', or 'given0', 'given1', ... when there are several), none a `BUILTIN` name
    but its own."""
    given = [subspaces] if isinstance(subspaces, (str, torch.Tensor, np.ndarray, dict)) else list(subspaces)
    valid = f"full, random, write_key, a tensor (or numpy array) [rank, {width}] or a dict {{label: tensor}}"
    if not given:
        raise InterpError(f"no subspace given; valid: one or more of {valid}")
    n_bare = sum(isinstance(s, (torch.Tensor, np.ndarray)) for s in given)
    items, j = [], 0
    for s in given:
        if isinstance(s, dict):
            for k, v in s.items():
                if str(k) in BUILTIN:
                    raise InterpError(f"subspace label '{k}' is the name of a built-in subspace; valid: a label "
                                      f"other than {', '.join(BUILTIN)}")
                items.append((str(k), check_basis(v, width, f"subspace '{k}'"), None, -1))
        elif isinstance(s, (torch.Tensor, np.ndarray)):
            lb = "given" if n_bare == 1 else f"given{j}"
            j += 1
            items.append((lb, check_basis(s, width, f"subspace '{lb}'"), None, -1))
        elif isinstance(s, str) and s == "full":
            items.append(("full", None, width, -1))
        elif isinstance(s, str) and s == "write_key":
            if site.kind != "state":
                raise InterpError("the write-key interchange acts on a recurrent state (rec.state), "
                                  f"not on '{site.name}'")
            items.append(("write_key", "write_key", 1, -1))
        elif isinstance(s, str) and s == "random":
            if not seeds:
                raise InterpError("subspace 'random' needs at least one seed; valid: seeds such as (0, 1, 2)")
            items += [("random", random_basis(width, rank, seed), rank, int(seed)) for seed in seeds]
        else:
            raise InterpError(f"subspace {_describe(s)} is not valid; valid: {valid}")
    labels = [lb for lb, *_ in items if lb != "random"]
    labels += ["random" for s in given if isinstance(s, str) and s == "random"]
    twice = [lb for lb in dict.fromkeys(labels) if labels.count(lb) > 1]
    if twice:
        raise InterpError(f"subspace '{twice[0]}' is given twice; valid: each subspace once, under a label of "
                          "its own")
    return [(lb, R, R.shape[0] if r is None else r, sd) for lb, R, r, sd in items]


def _describe(x) -> str:
    """A value for an error message: an array-like as its type and shape, anything else as a short repr."""
    if hasattr(x, "shape") and not isinstance(x, str):
        return f"{type(x).__name__} of shape {tuple(x.shape)}"
    r = repr(x).replace("\n", " ")
    return r if len(r) <= 80 else r[:77] + "..."


class Planned:
    """An intervention checked and prepared (`plan_intervene`): ``ix`` the `Interchanger` (``ix.correct``: the
    kept pairs), ``items`` the subspaces; `run` makes the IIA table."""

    def __init__(self, ix, items, pairs, positions, order, seeds, write_at, key_from):
        self.ix, self.items, self.pairs, self.positions = ix, items, pairs, positions
        self.settings = dict(order=order, seeds=list(seeds), write_at=write_at, key_from=key_from)

    @property
    def n_kept(self) -> int:
        return int(self.ix.correct.sum())

    def run(self, model_name: str = "model"):
        from interp.interventions.result import InterventionResult
        ix, site, pairs = self.ix, self.ix.site, self.pairs
        rows = []
        for label, R, r, seed in self.items:
            v, n = ix.iia(R)
            rows.append(result_row(site, ix, model_name, pairs, self.positions, label, r, "all", seed, v, n,
                                   len(ix.ip)))
        res = InterventionResult(rows)
        st = self.settings
        res.attrs["spec"] = dict(site=site.name, head=site.head, side=site.side, width=ix.width, order=st["order"],
                                 positions=describe_positions(self.positions, site), n_pairs=len(pairs),
                                 n_ordered=len(ix.ip), n_kept=self.n_kept, seeds=st["seeds"],
                                 task=dict(getattr(pairs, "meta", {}) or {}), write_at=st["write_at"],
                                 key_from=st["key_from"])
        return res


def plan_intervene(model, pairs, site, subspaces=("full",), rank: int = 1, seeds=(0, 1, 2, 3, 4), positions=None,
                   order: str = "both", batch_size: int = 64, write_at="write", key_from: str = "base") -> Planned:
    """Every check of `intervene` (its arguments, always, whether or not a subspace uses them) and its
    preparation (one pass over the prompts; the write keys where 'write_key' is asked for): a `Planned`."""
    site = Site(site) if isinstance(site, str) else site
    check_count(rank, "rank")
    batch_size = check_count(batch_size, "batch_size")
    seeds = check_seeds(seeds)
    if key_from not in ("base", "source"):
        raise InterpError(f"key_from {key_from!r} is not valid; valid: base, source")
    hm = model if isinstance(model, hooks.HookedModel) else hooks.wrap(model)
    ip = pairs if isinstance(pairs, InterchangePairs) else interchange_pairs(pairs, order)
    resolve_positions(positions, ip, site)
    resolve_positions(write_at, ip, site)
    from interp.models import input_device
    items = subspace_items(subspaces, rank, seeds, site_width(hm, site, ip.base[:1].to(input_device(hm.model))),
                           site)
    ix = Interchanger(hm, ip, site, positions, order, batch_size, write_at, key_from)
    if any(isinstance(R, str) for _, R, _, _ in items):
        ix.write_keys()
    return Planned(ix, items, pairs, positions, order, seeds, write_at, key_from)


def intervene(model, pairs, site, subspaces=("full",), rank: int = 1, seeds=(0, 1, 2, 3, 4), positions=None,
              order: str = "both", batch_size: int = 64, model_name: str = "model", write_at="write",
              key_from: str = "base"):
    """IIA of interchanges at ``site`` (a `Site` or a hook name) on ``pairs`` (a `tasks.PairBatch`).
    ``subspaces``: any of 'full' (the whole site, or one head), 'random' (rank ``rank``, one row per
    seed of ``seeds``: distinct integers >= 0), 'write_key' (``rec.state`` only: the rank-1 form along the layer's
    rec.k at ``write_at`` of the base prompt, or of the source with ``key_from='source'``), a tensor R
    [r, width] (or a numpy array) or a dict {label: R} (each subspace once; labels not 'full', 'random' or
    'write_key'). Returns an `InterventionResult` (split 'all'); with no pair kept (none answered right on both
    prompts) its IIA is NaN and ``n`` 0 (`plan_intervene(...).n_kept` tells before any interchange runs)."""
    return plan_intervene(model, pairs, site, subspaces, rank, seeds, positions, order, batch_size, write_at,
                          key_from).run(model_name)
