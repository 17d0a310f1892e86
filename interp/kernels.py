"""The kernel settings that change results at float rounding, as the ``kernels`` field every result spec records.

Each result writer (capture, probes, patching, SAEs, generation, DAS subspaces, the experiments' runs
directories, a training run's checkpoints and ``meta.json`` (`interp.runfolder.record`), the one-shot outputs of
`interp.oneshot.spec_of`) adds `kernel_spec` to the spec it writes, so a folder says which kernels made
it and a resume under other ones is refused naming the field (``kernels: (absent) -> {"fla_products":
"ieee"}``). Only settings that differ from the defaults appear, so every folder written with the defaults,
before this field existed or after, keeps the spec it had:

=================  ==============================  =====================================================
field              set by                          what it changes
=================  ==============================  =====================================================
``fla_products``   ``HYBRID_INTERP_FLA_IEEE=1`` /  fla's fp32 products in IEEE instead of TF32
                   `hooks.scan.fla_precision`      (`hooks.scan.fla_precision.active`)
``conv``           ``HYBRID_INTERP_CONV``          the zoo's short conv on CUDA (`interp.zoo.common.conv_impl`)
``norm``           ``HYBRID_INTERP_NORM``          the zoo's gated norm on CUDA (`interp.zoo.common.norm_impl`)
``dqkwg``,         ``HYBRID_INTERP_DQKWG``,        training only (``training=True``): the gated backward's
``dqkwg_impl``,    ``HYBRID_INTERP_DQKWG_IMPL``,   dq/dk/dw/dg stand-in (`hooks.scan.fla_dqkwg`,
``dqkwg_compile``  ``HYBRID_INTERP_DQKWG_COMPILE``  `hooks.scan.fla_dqkwg_triton`)
=================  ==============================  =====================================================

A bad value of one of these variables raises InterpError naming the valid values.
"""
from __future__ import annotations

import os

from interp import InterpError


def _checked(read):
    """``read()``, its ValueError (a bad environment value, named) as InterpError."""
    try:
        return read()
    except InterpError:
        raise
    except ValueError as e:
        raise InterpError(str(e)) from None


def settings(training: bool = False) -> dict:
    """The kernel settings that differ from the defaults (module doc); ``training``: also the backward's."""
    from hooks.scan import fla_precision
    from interp.zoo.common import conv_impl, norm_impl
    found = {}
    if fla_precision.active():
        found["fla_products"] = "ieee"
    for name, read in (("conv", conv_impl), ("norm", norm_impl)):
        value = _checked(read)
        if value != "torch":
            found[name] = value
    if training:
        from hooks.scan.fla_dqkwg_triton import impl
        use, mode = os.environ.get("HYBRID_INTERP_DQKWG"), _checked(impl)
        if use is not None:
            found["dqkwg"] = "off" if use == "0" else "on"
        if mode != "auto":
            found["dqkwg_impl"] = mode
        if os.environ.get("HYBRID_INTERP_DQKWG_COMPILE") == "1":
            found["dqkwg_compile"] = True
    return found


def kernel_spec(training: bool = False) -> dict:
    """``{"kernels": settings(training)}``, or ``{}`` with the defaults (the field a result spec adds)."""
    found = settings(training)
    return {"kernels": found} if found else {}
