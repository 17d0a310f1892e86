"""hybrid-interp analysis package: model zoo, reasoning-primitive tasks, trainer, probes, patching.

`interp` builds on `hooks` (model observation and intervention); `hooks` never imports `interp`.
"""

__version__ = "0.1.0"


class InterpError(ValueError):
    """A user-facing error: bad model path, layout, knob, layer, ... The CLI prints it as one line
    (`error: ...`) and exits with code 2."""
