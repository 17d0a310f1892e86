"""`interp probe`: layer-wise linear probes with control tasks and selectivity (interp.probes)."""
from __future__ import annotations

from interp.cli.options import add_device, add_knob, add_n, add_seed, kv, load_any

DEFAULT_MODELS = ["transformer", "gdn75", "gdn100"]


def add_parser(sub):
    pr = sub.add_parser("probe", help="layer-wise linear probes with control tasks and selectivity")
    pr.add_argument("--model", action="append", default=None, help="model dir or default name (repeatable; "
                    "default: transformer, gdn75, gdn100)")
    pr.add_argument("--task", default="state_recall")
    pr.add_argument("--target", default="var_value[0]", help="per-token label, or name[j] for a column")
    pr.add_argument("--site", action="append", default=None,
                    help="resid_post (default), resid_pre, resid_mid, mixer_out, mlp_out, attn.head_out, "
                         "attn.head_out.per_head, rec.state, rec.readout, rec.state@key, rec.state@query (repeatable)")
    add_knob(pr)
    pr.add_argument("--sweep", default=None, help="load sweep KNOB=V1,V2,... (one knob), e.g. n_pairs=2,4,8")
    add_n(pr, 256, help="examples per seed and load (split 80/20 by example)")
    add_seed(pr)
    pr.add_argument("--seeds", default=None, help="comma-separated seeds (data, split, control); 95%% CI over them")
    pr.add_argument("--C", type=float, default=1.0, help="inverse L2 strength (sklearn's C)")
    pr.add_argument("--backend", default="torch", help="torch (batched, GPU if present) or sklearn")
    add_device(pr, help="where the models run")
    pr.add_argument("--out", default="figures/probe")
    pr.add_argument("--units", default="runs/probe_units", help="finished units, for resuming (under .units/)")
    pr.set_defaults(func=cmd_probe)


def cmd_probe(a):
    from interp.probes import cli_run
    a.model = a.model or list(DEFAULT_MODELS)
    a.site = a.site or ["resid_post"]
    cli_run(a, load_any, kv)
