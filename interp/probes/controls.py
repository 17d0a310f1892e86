"""Probe controls: what a probe reaches without the model's knowledge of the fact. Label controls
(`shuffled`: labels permuted within token-id strata; `hewitt_liang`: a random class per token id)
re-label the same points; the `untrained` control is the same architecture freshly initialised
(`untrained_copy`); `uninformative` flags a control too close to 1 to leave room for selectivity."""
from __future__ import annotations

import numpy as np
import torch

from interp import InterpError

CONTROLS = ("shuffled", "untrained", "hewitt_liang")
LABEL_CONTROLS = ("shuffled", "hewitt_liang")
FLAG_AT = 0.9


def check_controls(controls) -> tuple:
    """``controls`` as a tuple of known kinds, in the order given, each once."""
    if isinstance(controls, str):
        controls = [c for c in controls.split(",") if c]
    out = tuple(dict.fromkeys(controls or ()))
    bad = [c for c in out if c not in CONTROLS]
    if bad:
        raise InterpError(f"unknown probe control '{bad[0]}'; valid controls: {', '.join(CONTROLS)}")
    return out


def shuffled(y: torch.Tensor, token: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Labels permuted at random among the points that share a token id (seeded by [seed, 2]):
    each token id keeps its label distribution, every other link between point and label is cut,
    so a probe fitted to them reaches at most what the token id tells (the surface baseline)."""
    g = np.random.default_rng([seed, 2])
    tok = token.numpy()
    src = np.lexsort((g.random(len(tok)), tok))        # each token's points in random order
    dst = np.argsort(tok, kind="stable")               # ... and in their own order
    out = y.clone()
    out[torch.as_tensor(dst)] = y[torch.as_tensor(src)]
    return out


def hewitt_liang(token: torch.Tensor, n_classes: int, seed: int = 0) -> torch.Tensor:
    """Hewitt & Liang (2019): each token id mapped to a fixed random class (seeded by [seed, 1]).
    With few token types this map is easy to learn and the control approaches 1."""
    cmap = torch.as_tensor(np.random.default_rng([seed, 1]).integers(0, n_classes, int(token.max()) + 1))
    return cmap[token]


def label_controls(controls, y, token, n_classes, seed) -> dict:
    """{kind: labels [N]} for the label controls among ``controls``."""
    make = {"shuffled": lambda: shuffled(y, token, seed), "hewitt_liang": lambda: hewitt_liang(token, n_classes, seed)}
    return {c: make[c]() for c in controls if c in LABEL_CONTROLS}


def untrained_copy(model, seed: int = 0):
    """The same architecture with fresh weights: ``type(model)(model.config)`` built on the CPU under
    ``torch.manual_seed(seed)`` (the global RNG is restored), moved to the model's device and dtype,
    in eval mode, with the model's scan functions (zoo: `set_scan_backend`). Works for zoo models
    (`interp.zoo.HybridLM`) and Hugging Face models; others raise an InterpError."""
    cfg = getattr(model, "config", None)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            fresh = type(model)(cfg)
    except Exception as e:
        raise InterpError(f"the untrained control rebuilds the model from its config, which failed for "
                          f"{type(model).__name__} ({type(e).__name__}: {str(e)[:120]}); leave 'untrained' "
                          "out of the controls") from None
    p = next(model.parameters())
    fresh = fresh.to(device=p.device, dtype=p.dtype).eval()
    for a, b in zip(model.modules(), fresh.modules()):
        if hasattr(a, "scan_fn") and hasattr(b, "scan_fn"):
            b.scan_fn = a.scan_fn
    return fresh


def uninformative(control, flag_at: float = FLAG_AT):
    """Whether a control accuracy leaves no room for selectivity: control >= ``flag_at``."""
    return control >= flag_at
