"""Layer layouts for the zoo: which token mixer each layer uses.

A layout is a list with one entry per layer. An entry is a mixer kind (`attn`, `gdn`, `gla`,
`mamba2`) or a *parallel* (intra-layer) fusion `attn+<mixer>`, in which attention and the
recurrent mixer run side by side on the same normalised input, each with half of the heads, and
their outputs are summed.

Presets (the striped layouts of the controlled hybrid study):

=================  ==========================================================================
``transformer``    every layer is attention
``<mixer>100``     no attention (mixer in gdn / gla / mamba2)
``<mixer>P``       P% recurrent layers. Attention sits at every ``period``-th layer counted from
                   the first, ending on the last layer: layer ``i`` (0-based) is attention iff
                   ``(L - 1 - i) % period == 0``, with ``period = round(100 / (100 - P))``.
                   For L = 12: ``50`` -> {1,3,5,7,9,11}, ``75`` -> {3,7,11}, ``83`` -> {5,11}.
                   Valid P: 50, 67, 75, 80, 83, 86, 88 (period 2..8) and 100.
``<preset>-par``   intra-layer fusion: each attention layer of ``<preset>`` becomes
                   ``attn+<mixer>``; the other layers stay recurrent (e.g. ``gdn75-par``).
``<mixer>@i,j,..`` attention exactly at the listed layers (placement ablations, e.g.
                   ``gdn@0,6`` or ``gdn@11``).
=================  ==========================================================================
"""
from __future__ import annotations

import difflib
import re

from interp import InterpError

RECURRENT = ("gdn", "gla", "mamba2")
MIXERS = ("attn",) + RECURRENT
PERCENTS = {50: 2, 67: 3, 75: 4, 80: 5, 83: 6, 86: 7, 88: 8}


def valid_kinds() -> list[str]:
    return list(MIXERS) + [f"attn+{m}" for m in RECURRENT]


def preset_names() -> list[str]:
    names = ["transformer"]
    for m in RECURRENT:
        names += [f"{m}{p}" for p in list(PERCENTS) + [100]]
    return names


def _check_kind(kind: str) -> str:
    if kind not in valid_kinds():
        close = difflib.get_close_matches(kind, valid_kinds(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise InterpError(f"unknown mixer '{kind}'{hint}; valid mixers: {', '.join(valid_kinds())}")
    return kind


def resolve_layout(spec, n_layers: int) -> list[str]:
    """Turn a preset name or an explicit list into one mixer kind per layer."""
    if n_layers < 1:
        raise InterpError(f"n_layers must be >= 1, got {n_layers}")
    if isinstance(spec, (list, tuple)):
        if len(spec) != n_layers:
            raise InterpError(f"layout has {len(spec)} entries but n_layers={n_layers}")
        return [_check_kind(str(k)) for k in spec]
    if not isinstance(spec, str):
        raise InterpError(f"layout must be a preset name or a list of mixers, got {spec!r}")
    if "," in spec and "@" not in spec:  # "attn,gdn,gdn,..." explicit list as a string
        return resolve_layout([s.strip() for s in spec.split(",")], n_layers)
    parallel = spec.endswith("-par")
    base = spec[: -len("-par")] if parallel else spec
    if base == "transformer":
        if parallel:
            raise InterpError("'transformer-par' has no recurrent mixer; use e.g. gdn75-par")
        return ["attn"] * n_layers
    m = re.fullmatch(r"(gdn|gla|mamba2)@([0-9, ]*)", base)
    if m:
        mixer, idx = m.group(1), [int(s) for s in m.group(2).split(",") if s.strip()]
        bad = [i for i in idx if not 0 <= i < n_layers]
        if bad:
            raise InterpError(f"attention layer {bad[0]} out of range 0..{n_layers - 1} in layout '{spec}'")
        attn = set(idx)
    else:
        m = re.fullmatch(r"(gdn|gla|mamba2)(\d+)", base)
        if not m:
            close = difflib.get_close_matches(spec, preset_names(), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise InterpError(
                f"unknown layout '{spec}'{hint}; valid presets: transformer, <mixer><P> with mixer in "
                f"{'/'.join(RECURRENT)} and P in {sorted(PERCENTS) + [100]} (optionally '-par'), "
                "<mixer>@i,j for attention at layers i,j, or an explicit comma-separated list")
        mixer, pct = m.group(1), int(m.group(2))
        if pct == 100:
            attn = set()
        elif pct in PERCENTS:
            period = PERCENTS[pct]
            attn = {i for i in range(n_layers) if (n_layers - 1 - i) % period == 0}
        else:
            raise InterpError(f"unknown recurrent percentage {pct} in layout '{spec}'; valid: "
                              f"{', '.join(map(str, sorted(PERCENTS) + [100]))}")
    attn_kind = f"attn+{mixer}" if parallel else "attn"
    return [attn_kind if i in attn else mixer for i in range(n_layers)]
