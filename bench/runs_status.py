"""Progress of every training run under a directory: steps done of steps, from each run's
``meta.json`` (finished or stopped by a time limit) or its ``checkpoint/trainer.pt`` (interrupted).

    python bench/runs_status.py runs/            # one line per run, then a total per experiment

Checkpoints are read as data (`interp.zoo.load_trainer_state`, torch's weights-only unpickler): a
``trainer.pt`` holding anything else is reported, never run.
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

from interp import InterpError
from interp.zoo import load_trainer_state


def _state(ck: Path) -> dict:
    """The checkpoint's dict, or {} (with a line on stderr) if it is refused or damaged."""
    try:
        return load_trainer_state(ck)
    except InterpError as e:
        print(f"error: {e}", file=sys.stderr)
        return {}


def runs(root: Path):
    for meta in sorted(root.rglob("meta.json")):
        d = json.loads(meta.read_text())
        total = d.get("train_config", {}).get("steps") or d.get("steps")    # zoo run | E3 text-pair run
        done = d.get("steps_done", total if "val_loss" in d else None)    # an E3 meta.json exists once finished
        if done is None and (meta.parent / "checkpoint" / "trainer.pt").is_file():
            done = _state(meta.parent / "checkpoint" / "trainer.pt").get("step")
        yield meta.parent, done, total
    for ck in sorted(root.rglob("trainer.pt")):
        run = ck.parent.parent if ck.parent.name == "checkpoint" else ck.parent
        if not (run / "meta.json").is_file():
            st = _state(ck)
            yield run, st.get("step"), st.get("steps")


def main(argv=None) -> int:
    root = Path((argv or sys.argv[1:] or ["runs"])[0])
    if not root.is_dir():
        print(f"error: '{root}' is not a directory", file=sys.stderr)
        return 2
    per = defaultdict(lambda: [0, 0])
    for run, done, total in runs(root):
        rel = run.relative_to(root)
        print(f"{str(rel):60s} {done}/{total}")
        k = rel.parts[0] if len(rel.parts) > 1 else "."
        per[k][0] += int(done is not None and total is not None and done >= total)
        per[k][1] += 1
    for k, (fin, n) in sorted(per.items()):
        print(f"{k}: {fin} of {n} runs finished")
    return 0


if __name__ == "__main__":
    sys.exit(main())
