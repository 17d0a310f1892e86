"""``--first-config`` for the GPU check scripts (and their other shared options, `parse_check_args`):
every ``@triton.autotune`` kernel defined after the call gets only the first of its configs, so nothing
is benchmarked.

Why by hand: on a fresh GPU host fla's first autotuning of its GLA / Mamba2 kernels took longer than
our check calls (BENCHMARKS.md sections 10 and 11), and neither Triton nor fla 0.6.0 has a switch to
skip it (fla's ``FLA_CACHE_RESULTS`` only caches timings). The checks compare values, not speed, and
a kernel's result does not depend on its block configuration beyond float rounding, so the first
config is enough there. Never use it for timings. Call it before fla is imported (its decorators run
at import). The check scripts import this module as a sibling (``python tests/gpu/<script>.py`` puts
tests/gpu on the path) and take the flag with ``add_flag`` / ``apply``.
"""
from __future__ import annotations


def first_config_only(triton_module=None) -> None:
    """Replace ``triton.autotune`` by one that keeps only the first config (idempotent)."""
    if triton_module is None:
        import triton as triton_module
    orig = triton_module.autotune
    if getattr(orig, "_first_config_only", False):
        return

    def autotune(configs=None, key=None, *args, **kw):
        if configs:                     # a one-config autotuner runs that config without benchmarking
            configs = list(configs)[:1]
        kw.pop("prune_configs_by", None)   # a pruner may expect several configs
        return orig(configs, key, *args, **kw)

    autotune._first_config_only = True
    triton_module.autotune = autotune


def add_flag(ap) -> None:
    ap.add_argument("--first-config", action="store_true",
                    help="fla's autotuned kernels run their first config, no benchmarking (fast start on a fresh "
                         "host; values only, never timings): tests/gpu/first_config.py")


def apply(args) -> None:
    if args.first_config:
        first_config_only()


def parse_check_args(ap, layouts: list[str]):
    """The zoo check scripts' shared options: ``--out``, ``--layouts`` (checked against ``layouts``),
    ``--ieee`` (fp32 Triton dots in IEEE fp32 instead of TF32: ``TRITON_F32_DEFAULT=ieee``, set before any
    kernel compiles) and ``--first-config`` (applied). Returns (args, the chosen layouts)."""
    import os
    ap.add_argument("--out")
    ap.add_argument("--layouts", default=",".join(layouts), help=f"comma list out of {layouts}")
    ap.add_argument("--ieee", action="store_true",
                    help="fp32 Triton dots in IEEE fp32 (TRITON_F32_DEFAULT=ieee) instead of TF32")
    add_flag(ap)
    args = ap.parse_args()
    apply(args)
    if args.ieee:
        os.environ["TRITON_F32_DEFAULT"] = "ieee"
    chosen = args.layouts.split(",")
    bad = [x for x in chosen if x not in layouts]
    if bad:
        ap.error(f"unknown layout(s) {bad}; choose from {layouts}")
    return args, chosen
