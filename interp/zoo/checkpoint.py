"""Trainer checkpoints (``trainer.pt``: optimizer state, step, RNG state, training log) read without
running code: torch's weights-only unpickler accepts tensors and plain containers only, so a crafted
file is refused with an `InterpError` naming it instead of executing what it holds."""
from __future__ import annotations

import pickle
from pathlib import Path

import torch

from interp import InterpError


def load_trainer_state(path, map_location="cpu") -> dict:
    """``torch.load(path, weights_only=True)``: a dict of tensors, numbers, strings, lists, tuples
    and dicts. A file holding other Python objects (which could run code when unpickled) or a damaged
    one raises `InterpError` naming the file."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise InterpError(f"{path} holds objects other than tensors and plain data, which could run code when "
                          f"loaded; refused ({why}). Delete it if you did not make it: the run restarts from its "
                          "last safe state") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise InterpError(f"{path} is not a readable trainer checkpoint ({msg}); delete it and re-run") from None
    if not isinstance(state, dict):
        raise InterpError(f"{path} is not a trainer checkpoint (a {type(state).__name__}, not a dict); delete it and "
                          "re-run")
    return state
