"""A training run's output folder kept whole across calls: one trainer at a time, a resume only under the config
that made it, and a log that holds one row per evaluation.

`interp.train.train` and `interp.stacked.train_stacked` open each run's folder with `open_run` before they build
a model:

* a second trainer on the same folder is refused while the first runs (`interp.store.Lock`: ``<out>/.lock``;
  a lock left by a process that no longer runs on this host is taken over);
* resuming (the default) compares the call's `interp.train.TrainConfig` with the one that made the folder (its
  checkpoint's ``train_config.json``, and a saved model's ``meta.json``; each with the kernels that trained it,
  `interp.kernels`): a difference in any field but `MAY_CHANGE` is refused (InterpError naming the fields and
  the way out) instead of, say, continuing a run made at ``--lr 1e-3`` at 3e-3 or stretching a 2000-step cosine
  schedule to 4000 steps;
* a finished run (``meta.json`` whose ``steps_done`` reaches ``steps``) of the same config is not trained
  again: the call loads and returns it;
* `cut_log` drops the log rows after the step a call resumes from (a killed call logged them; the resumed one
  logs them again), and a line a kill left half written;
* the temporary files of a killed trainer's atomic writes (`interp.store.atomic_save`) are removed;
* ``resume=False`` (``--no-resume``) removes what an earlier run left in the folder (`OWNS`: its model, log
  and checkpoints; never other files) before training starts, so the folder never mixes two runs;
* the call records its config (`record`) in ``<out>/train_config.json`` before it trains, so a run killed before
  its first checkpoint is known as this trainer's;
* a folder holding any of the files a trainer writes (`OWNS`) with no record of a training run (someone else's
  files) is refused either way.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from pathlib import Path

from interp import InterpError
from interp.devices import device_type
from interp.kernels import kernel_spec
from interp.store import Lock, atomic_write_text, diff_summary, is_temp, normalize, read_spec, remove, spec_diff

# fields that may differ between the calls of one run: where it is written, how it was invoked, how long a call
# may train, which device of a kind trains it (cuda:0 or cuda:1; the kind is compared: `record`'s device_type, as
# CUDA trains under bf16 autocast and the CPU in fp32), how often it checkpoints
MAY_CHANGE = ("out", "command", "time_limit", "device", "save_every")
# what a trainer writes in a run's folder (`interp.train`, `interp.zoo.save_model`)
OWNS = ("model.safetensors", "config.json", "meta.json", "COMMAND.txt", "train_log.jsonl",
        "checkpoint", "checkpoint.old", "checkpoint.tmp", "train_config.json")
LOG = "train_log.jsonl"
RECORD = "train_config.json"   # the call's config, written before it trains (`open_run`)


def _defaults(cfg) -> dict:
    """The default of every field of ``cfg``'s dataclass that has one."""
    found = {}
    for f in dataclasses.fields(cfg):
        if f.default is not dataclasses.MISSING:
            found[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            found[f.name] = f.default_factory()
    return found


def _comparable(cfg: dict, defaults: dict) -> dict:
    """``cfg`` (a TrainConfig as a dict, maybe read from JSON of an older version: its missing fields take
    ``defaults``) without `MAY_CHANGE`, normalized as JSON reads back."""
    return normalize({k: v for k, v in {**defaults, **cfg}.items() if k not in MAY_CHANGE})


def _read(path: Path):
    """A JSON file as a dict, or None where it is absent or damaged (a damaged one is no evidence either way)."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def recorded_configs(out: Path) -> list:
    """[(source file, config dict)]: the configs the folder's record, checkpoints and saved model were made with."""
    found = []
    for path in (out / RECORD, out / "checkpoint" / RECORD, out / "checkpoint.old" / RECORD):
        cfg = _read(path)
        if cfg is not None:
            found.append((path, cfg))
    meta = _read(out / "meta.json")
    if meta is not None and isinstance(meta.get("train_config"), dict):
        extra = {"kernels": meta["kernels"]} if "kernels" in meta else {}
        if isinstance(meta.get("device"), str):     # the device it trained on, resolved
            extra["device_type"] = meta["device"].split(":")[0]
        found.append((out / "meta.json", {**meta["train_config"], **extra}))
    return found


def record(cfg) -> dict:
    """What a checkpoint records of the call that wrote it (``train_config.json``): the TrainConfig ``cfg``, the
    kind of device it trained on and the kernels that trained it where not the defaults
    (`interp.kernels.kernel_spec`)."""
    return {**dataclasses.asdict(cfg), "device_type": device_type(cfg.device), **kernel_spec(training=True)}


def config_diff(old: dict, cfg) -> list:
    """['field: old -> new', ...] between a recorded config (`record`) and the TrainConfig ``cfg`` with today's
    kernels, over the fields outside `MAY_CHANGE`."""
    defaults, new = _defaults(cfg), record(cfg)
    if "device_type" not in old:    # recorded by an older version: the kind of device is not known
        new.pop("device_type")
    return spec_diff(_comparable(old, defaults), _comparable(new, defaults))


def is_finished(out: Path, cfg) -> bool:
    """Whether ``out`` holds the trained model of ``cfg``, all its steps done (what a resume leaves as it is)."""
    meta = _read(out / "meta.json")
    return bool(meta) and (out / "model.safetensors").is_file() and int(meta.get("steps_done") or 0) >= cfg.steps


@contextlib.contextmanager
def open_run(out, cfg, resume: bool = True):
    """Hold ``out``'s writer lock while checked for training ``cfg`` (module doc); yields whether it holds this
    config's finished run. InterpError where another trainer holds it or where resuming would continue a run of
    another config."""
    out = Path(out)
    lock = Lock(out)
    lock.acquire()
    try:
        for f in out.iterdir():   # temporary files of a killed trainer's atomic writes (this call holds the lock)
            if is_temp(f) and f.name.split(".tmp-")[0] in OWNS:
                remove(f)
        _refuse_foreign(out)
        if not resume:
            for name in OWNS:
                remove(out / name)
        for src, old in (recorded_configs(out) if resume else []):
            diff = config_diff(old, cfg)
            if diff:
                raise InterpError(f"{out} holds a run made with other settings ({src.name}: {diff_summary(diff)}"
                                  "); valid: the same settings to resume it, --no-resume (resume=False) to "
                                  "train it again from step 0 (replacing it), or another --out")
        finished = resume and is_finished(out, cfg)
        if not finished:
            atomic_write_text(out / RECORD, json.dumps(record(cfg), indent=2))
        yield finished
    finally:
        lock.release()


def _refuse_foreign(out: Path):
    """An InterpError where ``out`` holds files a trainer writes (`OWNS`) but no record of a training run (its
    train_config.json, a checkpoint's, a trained model's meta.json): someone else's files, which neither a resume
    nor --no-resume may write over."""
    result = read_spec(out) if (out / "spec.json").is_file() else None
    if isinstance(result, dict) and "kind" in result:     # a result folder of interp.store (a capture, an sae run)
        raise InterpError(f"{out} holds a {result.get('kind')} result (spec.json), not a training run; valid: a new or "
                          "empty folder, a training run's folder, or another --out")
    if recorded_configs(out):
        return
    found = [n for n in OWNS if (out / n).exists()]
    if found:
        raise InterpError(f"{out} holds {', '.join(found)} but no record of a training run (its "
                          "train_config.json or a trained model's meta.json), so they are not this trainer's; "
                          "valid: a new or empty folder, a training run's folder, or another --out")


def cut_log(out, step: int) -> int:
    """Keep the rows of ``<out>/train_log.jsonl`` up to ``step`` (and no half-written line), atomically;
    returns how many rows were dropped."""
    path = Path(out) / LOG
    if not path.is_file():
        return 0
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    keep = []
    for ln in lines:
        try:
            row = json.loads(ln)
            at = int(row.get("step", 0)) if isinstance(row, dict) else None
        except (ValueError, TypeError):     # a line a kill cut, or not a row of this trainer's
            continue
        if at is not None and at <= step:
            keep.append(ln)
    if len(keep) < len(lines):
        atomic_write_text(path, "".join(ln + "\n" for ln in keep))
    return len(lines) - len(keep)


def already_trained(out, device):
    """The finished run in ``out``, loaded for evaluation (a note on stderr says it was not trained again)."""
    from interp.zoo import load_model
    meta = _read(Path(out) / "meta.json") or {}
    print(f"{out} already holds this run, trained for {meta.get('steps_done')} steps: not trained again "
          "(--no-resume trains it again from step 0)", file=sys.stderr)
    return load_model(out, device=device).eval()
