"""fla's fp32 Triton products in IEEE fp32 instead of TF32, for the rest of this process: `ieee_dots`.

On GPUs with TF32 (compute capability 8+), Triton multiplies fp32 tiles as TF32 (a 10-bit mantissa) wherever a
``tl.dot`` leaves its precision at Triton's default, and fla 0.6.0 also asks for TF32 by name in the block inverse
of its fused GDN forward (``fla.ops.gated_delta_rule.chunk_fwd``, kkt + solve_tril) and of KDA's
(``fla.ops.kda.chunk_intra``, which also multiplies its safe-gate blocks as ``bf16x3``). So an fp32 model on fla's
kernels is ~1e-3 from its float64 copy where the pure-torch scans are ~1e-5 (BENCHMARKS.md sections 1, 43-45).
``TRITON_F32_DEFAULT=ieee`` alone moves only the default dots.

`ieee_dots()` sets ``TRITON_F32_DEFAULT=ieee`` and ``FLA_TRIL_PRECISION=ieee`` (fla's standalone solve_tril; its
default) and sets fla's named precisions above to ``ieee``. Call it before the first fla kernel runs in the process:
Triton keeps kernels compiled earlier as they were (it reads the default at compile time, and refuses a named
precision that changed after compiling), so `ieee_dots` refuses once one of the patched modules' kernels has
compiled. It imports fla (on a host with its kernels), and fla's package imports its layers, so whatever must come
first (e.g. a flash-attn stand-in) must come before it. It changes nothing else: bf16 inputs are unaffected, and
IEEE dots are slower than TF32 ones (a 6% slower fp32 gdn75 forward, section 45). They also take longer to compile:
a gdn75 capture's first call on an empty Triton cache took 134-140+ s against 70-79 s, and 19 s both once cached
(section 46).
"""
from __future__ import annotations

import importlib
import importlib.util
import os

import torch

# fla module -> the module-level precisions its kernels read by name (fla 0.6.0)
NAMED = {"fla.ops.gated_delta_rule.chunk_fwd": ("SOLVE_TRIL_DOT_PRECISION",),
         "fla.ops.kda.chunk_intra": ("SOLVE_TRIL_DOT_PRECISION", "SAFE_GATE_DOT_PRECISION")}
ENV = {"TRITON_F32_DEFAULT": "ieee", "FLA_TRIL_PRECISION": "ieee"}
REQUEST_ENV = "HYBRID_INTERP_FLA_IEEE"   # "1": `hooks.scan.kernels.fla_available` calls ieee_dots at first use
_ACTIVE = False                          # True once ieee_dots has set fla's named precisions in this process


def active() -> bool:
    """Whether fla's kernels in this process multiply fp32 as IEEE fp32: `ieee_dots` ran where they are usable, or
    will at their first use (``HYBRID_INTERP_FLA_IEEE=1`` here). Result writers record it in their spec."""
    return _ACTIVE or (os.environ.get(REQUEST_ENV) == "1" and _fla_ok())


def _fla_ok() -> bool:
    """Whether fla's kernels could run here (fla and triton installed, a GPU), without importing either."""
    return (torch.cuda.is_available() and importlib.util.find_spec("triton") is not None
            and importlib.util.find_spec("fla") is not None)


def _value(v) -> str:
    """A Triton ``constexpr``'s value (or the value itself)."""
    return str(getattr(v, "value", v))


def _compiled(obj) -> bool:
    """True if the Triton kernel ``obj`` (a JITFunction, possibly inside autotuner / heuristics wrappers that keep it
    as ``.fn``) has compiled for some device."""
    seen = 0
    while obj is not None and seen < 8:
        caches = getattr(obj, "device_caches", None)
        if isinstance(caches, dict):
            return any(entry and entry[0] for entry in caches.values())
        obj, seen = getattr(obj, "fn", None), seen + 1
    return False


def _patch_module(name: str, attrs: tuple[str, ...]) -> list[str]:
    try:
        mod = importlib.import_module(name)
    except ImportError:
        return [f"{name}: not in this fla, nothing to set"]
    olds = {a: getattr(mod, a, None) for a in attrs}
    to_set = [a for a, old in olds.items() if old is not None and _value(old) != "ieee"]
    if to_set and any(_compiled(v) for v in vars(mod).values()):   # (already ieee: a second call changes nothing)
        raise RuntimeError(f"ieee_dots: fla's kernels in {name} already compiled in this process with the "
                           f"precision they had; call hooks.scan.fla_precision.ieee_dots() before the first fla "
                           f"kernel runs")
    done = []
    for attr, old in olds.items():
        if old is None:
            done.append(f"{name}.{attr}: not in this fla")
            continue
        if attr in to_set:
            setattr(mod, attr, type(old)("ieee"))
        done.append(f"{name}.{attr}: {_value(old)} -> ieee")
    return done


def ieee_dots(fla_ok: bool | None = None) -> list[str]:
    """Make fla's fp32 Triton products IEEE fp32 for the rest of this process (see the module docstring); returns
    one line per setting, what it was and what it is now. Raises RuntimeError if fla's patched kernels already
    compiled. On a host without fla's kernels (``fla_ok``, found out here when None) only the environment is set.
    ``HYBRID_INTERP_FLA_IEEE=1`` in the environment has `hooks.scan.kernels.fla_available` call this when the
    scans first use fla's kernels (so also for the ``interp`` CLI)."""
    global _ACTIVE
    done = []
    for key, val in ENV.items():
        done.append(f"{key}: {os.environ.get(key, 'unset')} -> {val}")
        os.environ[key] = val
    if not (_fla_ok() if fla_ok is None else fla_ok):
        return done + ["fla's kernels: not available here, no named precisions set"]
    tril = importlib.import_module("fla.ops.utils.solve_tril")
    if _value(getattr(tril, "FLA_TRIL_PRECISION", "ieee")) != "ieee":
        raise RuntimeError("ieee_dots: fla's solve_tril was imported with FLA_TRIL_PRECISION="
                           f"{tril.FLA_TRIL_PRECISION}; unset it before importing fla")
    for name, attrs in NAMED.items():
        done += _patch_module(name, attrs)
    _ACTIVE = True
    return done
