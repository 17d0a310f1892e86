"""Argument checks and bounds shared by the Python API and the CLI: a count (an integer at least some bound), one
message everywhere; the sizes interp.sae accepts (light: the CLI's parsers read them without importing torch)."""
from __future__ import annotations

import numbers

from interp import InterpError

MAX_FEATURES = 2 ** 22      # latents of one dictionary (a d=768 encoder of this many is 12 GB)
MAX_EXAMPLES = 2 ** 16      # task examples of one training step or one evaluation (each is every token's vector)


def check_count(value, what: str, low: int = 1) -> int:
    """``value`` as an int >= ``low``; a bool, float or string is refused, never truncated, by an InterpError
    naming ``what`` and the value."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise InterpError(f"{what}={value!r} is not valid; valid: integers >= {low}")
    return int(value)
