"""Checks a hook session makes as it is entered: a model in training mode with dropout (a warning), and a
session nested in another whose order would make its cache disagree with the logits (an error)."""
from __future__ import annotations

import re
import warnings
import weakref

import torch

from hooks import names as N

# names an attention / scan replacement derives from its op's arguments before it calls the op: a session
# entered later wraps the op outside an earlier one, so it sees these before the earlier session's hook functions
_OP_INPUT = re.compile(r"blocks\.(\d+)\.(attn\.(?:q|k|v|pattern)|rec\.(?!readout$)\w+)$")


def warn_if_dropout(hm):
    """A UserWarning, once per wrapped model, when the model is in training mode with dropout (a Dropout module
    or a config ``*dropout*`` rate above 0; HF's ``from_config`` returns models in training mode): identical runs
    then differ at random, a patched run and its clean run too."""
    m = hm.model
    if not m.training or getattr(hm, "_warned_dropout", False):
        return
    rates = [mod.p for mod in m.modules() if isinstance(mod, torch.nn.modules.dropout._DropoutNd) and mod.training]
    cfg = getattr(m, "config", None)
    rates += [v for k, v in (vars(cfg).items() if hasattr(cfg, "__dict__") else ())
              if "dropout" in k and isinstance(v, (int, float)) and not isinstance(v, bool)]
    if any(r > 0 for r in rates):
        hm._warned_dropout = True
        warnings.warn("the model is in training mode with dropout: identical runs differ at random (a patched run "
                      "and its clean run too); call model.eval() first", UserWarning, stacklevel=5)


_ACTIVE = weakref.WeakKeyDictionary()     # model -> its entered sessions (whichever wrapper entered them)


def active_sessions(model) -> list:
    """The hook sessions entered on ``model`` and not yet exited, oldest first (a session adds and removes
    itself)."""
    return _ACTIVE.setdefault(model, [])


def _op_key(name):
    m = _OP_INPUT.match(str(name))
    return None if m is None else (m.group(1), m.group(2).split(".")[0])


def check_nesting(session, outer) -> None:
    """A HookError where ``session`` caches an attention or scan input (q, k, v, pattern, rec.*) of a layer whose
    op an ``outer`` (already entered) session changes with a hook function: the cache would hold the values
    before that change while the logits include it."""
    mine = {}
    for n in session.want:
        if _op_key(n) is not None:
            mine.setdefault(_op_key(n), n)
    for o in outer:
        for n in o.user_fns:
            k = _op_key(n)
            if k in mine:
                raise N.HookError(f"caching '{mine[k]}' inside another hooks session whose hook function changes "
                                  f"'{n}' would record the values before that change (the logits include it); "
                                  "valid: one call with both, e.g. run_with_cache(tokens, names=[...], hooks=[...])")
