"""`interp probe`: layer-wise linear probes, layer chosen on val and scored on test, with controls
(shuffled labels, untrained model, Hewitt-Liang), selectivity and a causal check (interp.probes)."""
from __future__ import annotations

import argparse

from interp.cli.options import add_device, add_knob, add_n, add_seed, finite_float, int_at_least, kv, load_any

DEFAULT_MODELS = ["transformer", "gdn75", "gdn100"]


def add_parser(sub):
    pr = sub.add_parser("probe", help="layer-wise linear probes with controls, selectivity and a causal check")
    pr.add_argument("--model", action="append", default=None, help="model dir or default name (repeatable; "
                    "default: transformer, gdn75, gdn100)")
    pr.add_argument("--task", default="state_recall")
    pr.add_argument("--target", default="var_value[0]", help="per-token label, or name[j] for a column")
    pr.add_argument("--site", action="append", default=None,
                    help="resid_post (default), resid_pre, resid_mid, mixer_out, mlp_out, attn.head_out, "
                         "attn.head_out.per_head, rec.state, rec.readout, rec.state@key, rec.state@query (repeatable)")
    add_knob(pr)
    pr.add_argument("--sweep", default=None, help="load sweep KNOB=V1,V2,... (one knob), e.g. n_pairs=2,4,8")
    add_n(pr, None, help="examples per seed and load, split train/val/test by example (default: 2048 with "
                         "--device cuda, 256 on cpu; at least 10)")
    add_seed(pr, None, help="random seed (default 0; or --seeds)")
    pr.add_argument("--seeds", default=None, help="comma-separated seeds (data, split, controls); 95%% CI over them")
    pr.add_argument("--split", default="0.6,0.2,0.2", help="train,val,test fractions by example")
    pr.add_argument("--controls", default="shuffled,untrained",
                    help="comma-separated controls: shuffled (labels permuted within token-id strata), untrained "
                         "(the same architecture freshly initialised), hewitt_liang (a random class per token id)")
    pr.add_argument("--flag-at", type=finite_float(0, 1), default=0.9, help="flag a control >= this as uninformative")
    pr.add_argument("--causal", default="best", choices=["best", "all", "none"],
                    help="causal check (interchange along the probe's subspace vs a random one): at the layer chosen "
                         "on val per site (best), at every layer (all) or none")
    pr.add_argument("--causal-pairs", type=int_at_least(1), default=None,
                    help="base/source pairs per unit for the causal check (default: 1024 with --device cuda, 256 on "
                         "cpu)")
    pr.add_argument("--causal-rank", type=int_at_least(1), default=None,
                    help="rank of the interchanged subspace (default: the "
                    "probe's, classes - 1)")
    pr.add_argument("--C", type=float, default=1.0, help="inverse L2 strength (sklearn's C), a positive number")
    pr.add_argument("--backend", default="torch", help="torch (batched, GPU if present) or sklearn")
    add_device(pr, help="where the models run")
    pr.add_argument("--out", default="runs/probe", help="result folder: spec.json, units/ (resumable), probes.csv, "
                    ".parquet and figures")
    pr.add_argument("--overwrite", action="store_true", help="replace a result in --out made with other settings")
    pr.add_argument("--units", default=None, help=argparse.SUPPRESS)
    pr.set_defaults(func=cmd_probe)


def cmd_probe(a):
    from interp.probes import cli_run
    a.model = a.model or list(DEFAULT_MODELS)
    a.site = a.site or ["resid_post"]
    cli_run(a, load_any, kv)
