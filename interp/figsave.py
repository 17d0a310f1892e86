"""Save a matplotlib figure atomically (`interp.store.atomic_save`), in the format its path's extension names."""
from __future__ import annotations

from pathlib import Path

from interp.store import atomic_save


def save_fig(fig, path, **savefig_kw) -> Path:
    """Write ``fig`` to ``path`` (its folder made if missing) through a temporary file renamed over it,
    so a reader never sees half a figure; the format is the extension's (PNG without one). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(path, lambda tmp: fig.savefig(tmp, format=path.suffix[1:] or "png", **savefig_kw))
    return path
