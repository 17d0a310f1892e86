"""Interchange interventions and distributed alignment search (DAS) at any hook site, including a
recurrent state, restricted to a subspace (docs/interventions.md states every formula).

    from interp import tasks, interventions as iv
    pairs = tasks.make_pairs("mqar", 512, seed=0)
    site = iv.Site("blocks.0.rec.state", side="key")
    iv.intervene(model, pairs, site, subspaces=["full", "random", "write_key"], rank=1)   # IIA table
    res = iv.train_das(model, pairs, site, rank=1)       # learned R; IIA train/val/test, random, full
    res.plot(); res.save("runs/das", "gdn100_mqar")

Files: ``subspace`` (bases and the interchange op), ``site`` (sites, heads, state sides),
``intervene`` (pairs, positions, running interchanges, IIA), ``plan`` (`intervene`: its checks, its
table), ``das`` (training), ``result`` (tables and plots), ``store`` (R + spec files).
"""
from interp.interventions.das import DASConfig, Rotation, plan_das, train_das
from interp.interventions.intervene import (ORDERS, InterchangePairs, Interchanger, edit_site, interchange_pairs,
                                            resolve_positions)
from interp.interventions.plan import Planned, intervene, plan_intervene
from interp.interventions.result import DASResult, InterventionResult
from interp.interventions.site import SIDES, Site
from interp.interventions.store import load_subspace, save_subspace
from interp.interventions.subspace import (check_basis, identity_basis, interchange, orthonormalize, probe_basis,
                                           random_basis, write_key_interchange)

__all__ = ["Site", "SIDES", "ORDERS", "InterchangePairs", "Interchanger", "interchange_pairs", "resolve_positions",
           "edit_site", "intervene", "plan_intervene", "Planned", "train_das", "plan_das", "DASConfig", "Rotation",
           "InterventionResult", "DASResult",
           "identity_basis", "random_basis", "probe_basis", "orthonormalize", "check_basis", "interchange",
           "write_key_interchange", "save_subspace", "load_subspace"]
