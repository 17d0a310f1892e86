"""`interp demo`: the shipped default models against every difficulty knob, on CPU.

Writes ``<out>/accuracy.png`` (one panel per task x knob, one line per model),
``<out>/results.csv`` and ``<out>/report.md``.
"""
from __future__ import annotations

import json
import os
import platform
import re
import time
from datetime import date
from pathlib import Path

import torch

from interp import InterpError
from interp.evaluate import sweep
from interp.store import atomic_write_text, save_csv
from interp.zoo import load_model

DEFAULTS_DIR = Path(__file__).parent / "defaults"
DEFAULT_SET = ("transformer", "gdn75", "gdn100")


SEEDS_ENV = "INTERP_SEEDS_DIR"
SEEDS_MAKE = 'bash bench/train_defaults.sh runs/defaults "1 2"'


def seeds_dir() -> Path:
    """Where ``<name>@seed<k>`` models are looked up: $INTERP_SEEDS_DIR, else ``runs/defaults``."""
    return Path(os.environ.get(SEEDS_ENV) or "runs/defaults")


def is_default_name(name: str) -> bool:
    """A shipped default (``gdn75``) or one of its extra training seeds (``gdn75@seed1``)."""
    base = name.split("@", 1)[0]
    return "/" not in name and (DEFAULTS_DIR / base).is_dir()


def default_model_path(name: str) -> Path:
    """The folder of a shipped default model; ``<name>@seed<k>``: the same command trained with seed k
    (seed 0 is the shipped model; the others are not in the repository: ``SEEDS_MAKE`` makes them)."""
    m = re.fullmatch(r"([A-Za-z0-9_]+)@seed(\d+)", name)
    if m and int(m.group(2)) == 0:
        name = m.group(1)
    elif m:
        default_model_path(m.group(1))           # the base name must be a shipped default
        p = seeds_dir() / name
        if not (p / "config.json").is_file():
            raise InterpError(f"model '{name}' is not on this machine (looked in {p}); the extra seeds are not "
                              f"shipped: make them with `{SEEDS_MAKE}` on a GPU host (8 minutes) or set "
                              f"{SEEDS_ENV} to the folder holding {name}/")
        return p
    elif "@" in name:
        raise InterpError(f"model name '{name}' is not valid; valid: a default name or <name>@seed<k>, "
                          f"e.g. gdn75@seed1")
    p = DEFAULTS_DIR / name
    if not (p / "config.json").is_file():
        avail = sorted(d.name for d in DEFAULTS_DIR.iterdir() if (d / "config.json").is_file()) \
            if DEFAULTS_DIR.is_dir() else []
        raise InterpError(f"unknown default model '{name}'; available: {', '.join(avail) or 'none'}")
    return p


def load_defaults(names=DEFAULT_SET, device="cpu") -> dict:
    return {n: load_model(default_model_path(n), device=device) for n in names}


def run_demo(out="runs/demo", n: int = 96, tasks=None, seed: int = 123, progress: bool = True,
             overwrite: bool = False) -> Path:
    """Evaluate the default models and write ``out``/results.csv, accuracy.png and report.md, with ``demo.json``
    (what made them: `interp.oneshot`; other settings are refused unless ``overwrite``, a second writer too)."""
    from interp.oneshot import one_shot, spec_of
    t0 = time.time()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    models = load_defaults()
    tasks = tasks or sorted({t for p in DEFAULT_SET
                             for t in json.loads((default_model_path(p) / "meta.json").read_text())
                             ["train_config"]["tasks"]})
    out = Path(out)
    files = [out / "results.csv", out / "accuracy.png", out / "report.md"]
    with one_shot(out / "demo.json", files, spec_of(models, n=n, seed=seed, tasks=tasks), overwrite):
        _demo(models, tasks, n, seed, progress, out, t0)
    return out


def _demo(models, tasks, n, seed, progress, out, t0):
    res = sweep(models, tasks=tasks, n=n, seed=seed, progress=progress)
    save_csv(out / "results.csv", res, index=False)
    res.plot(out / "accuracy.png", title="Default models: answer accuracy vs each difficulty knob")
    lines = [f"# interp demo — {date.today().isoformat()}", "",
             "Models: " + ", ".join(f"`{m}` ({models[m].num_params() / 1e6:.2f}M params, layout "
                                    f"{models[m].config.layout})" for m in models) + ".",
             f"Each cell: answer accuracy on {n} held-out examples (seed {seed}); one knob moves, the "
             "others stay at their defaults.", "", "![accuracy](accuracy.png)", ""]
    for (task, knob), g in res.groupby(["task", "knob"], sort=False):
        piv = g.pivot_table(index="value", columns="model", values="accuracy", sort=False)[list(models)]
        lines += [f"## {task} — {knob}", "", "| " + knob + " | " + " | ".join(piv.columns) + " |",
                  "|---" * (len(piv.columns) + 1) + "|"]
        lines += ["| " + str(v) + " | " + " | ".join(f"{a:.2f}" for a in row) + " |"
                  for v, row in zip(piv.index, piv.values)]
        lines.append("")
    lines.append(f"_{time.time() - t0:.0f} s on {platform.processor() or platform.machine()}, "
                 f"{torch.get_num_threads()} threads._")
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
