"""``--first-config`` for the GPU check scripts (and their other shared options, `parse_check_args`):
every autotuned Triton kernel runs the first of its configs that launches, so nothing is benchmarked.

Why by hand: on a fresh GPU host fla's first autotuning of its GLA / Mamba2 kernels took longer than
our check calls (BENCHMARKS.md sections 10 and 11), and neither Triton nor fla 0.6.0 has a switch to
skip it (fla's ``FLA_CACHE_MODE`` needs tuned configs for the GPU, which fla 0.6.0 does not ship for
the H200). The checks compare values, not speed, and a kernel's result does not depend on its block
configuration beyond float rounding, so one config is enough there. Never use it for timings.

How: ``triton.runtime.autotuner.Autotuner.run`` is patched, so it covers kernels decorated with
``triton.autotune`` and fla 0.6's own ``fla_cache_autotune`` (a subclass whose ``run`` calls the base
one), whenever they were defined. (Until 2026-11-30 this patched ``triton.autotune`` at import instead,
which fla 0.6's kernels never call: its "first config" runs were autotuning those kernels all along.) On
an autotuner's first call the configs are tried in order, each alone (a one-config autotuner runs it
without benchmarking), and the first that does not raise ``OutOfResources`` (e.g. too much shared
memory: mamba-ssm lists large configs first) is kept for every later call. The check scripts import
this module as a sibling (``python tests/gpu/<script>.py`` puts tests/gpu on the path) and take the
flag with ``add_flag`` / ``apply``.
"""
from __future__ import annotations


def first_config_only(autotuner_cls=None, out_of_resources=None) -> None:
    """Patch ``autotuner_cls.run`` (default Triton's ``Autotuner``) to keep the first config that
    launches instead of benchmarking all of them (idempotent). ``out_of_resources``: the exception
    type that moves on to the next config (default Triton's ``OutOfResources``)."""
    if autotuner_cls is None:
        from triton.runtime.autotuner import Autotuner as autotuner_cls
        from triton.runtime.errors import OutOfResources as out_of_resources
    orig = autotuner_cls.run
    if getattr(orig, "_first_config_only", False):
        return

    def run(self, *args, **kwargs):
        if getattr(self, "_first_config_chosen", False) or len(self.configs) <= 1:
            return orig(self, *args, **kwargs)
        configs = list(self.configs)
        for i, cfg in enumerate(configs):
            self.configs, self.cache = [cfg], {}
            try:
                out = orig(self, *args, **kwargs)
            except out_of_resources:
                if i + 1 == len(configs):
                    self.configs = configs
                    raise
                continue
            self._first_config_chosen = True
            return out

    run._first_config_only = True
    autotuner_cls.run = run


def add_flag(ap) -> None:
    ap.add_argument("--first-config", action="store_true",
                    help="fla's autotuned kernels run their first config, no benchmarking (fast start on a fresh "
                         "host; values only, never timings): tests/gpu/first_config.py")


def add_ieee_flag(ap) -> None:
    ap.add_argument("--ieee", action="store_true",
                    help="fla's fp32 Triton products in IEEE fp32, none as TF32 (hooks.scan.fla_precision.ieee_dots: "
                         "TRITON_F32_DEFAULT=ieee and fla's named TF32 precisions), set before any kernel compiles")


def apply(args) -> None:
    """``--first-config`` and, where the script takes it, ``--ieee`` (prints what it set)."""
    if args.first_config:
        first_config_only()
    if getattr(args, "ieee", False):
        from hooks.scan.fla_precision import ieee_dots
        print("--ieee: " + "; ".join(ieee_dots()), flush=True)


def parse_check_args(ap, layouts: list[str]):
    """The zoo check scripts' shared options: ``--out``, ``--layouts`` (checked against ``layouts``),
    ``--ieee`` (fla's fp32 Triton products in IEEE fp32, none as TF32: `add_ieee_flag`) and ``--first-config``
    (both applied). Returns (args, the chosen layouts)."""
    ap.add_argument("--out")
    ap.add_argument("--layouts", default=",".join(layouts), help=f"comma list out of {layouts}")
    add_ieee_flag(ap)
    add_flag(ap)
    args = ap.parse_args()
    apply(args)
    chosen = args.layouts.split(",")
    bad = [x for x in chosen if x not in layouts]
    if bad:
        ap.error(f"unknown layout(s) {bad}; choose from {layouts}")
    return args, chosen
