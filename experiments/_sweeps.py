"""Shared by E1 and E2: learning-rate sweeps of zoo models, trained in parallel worker processes
under a time budget and resumable across calls; the best run per arm; the report header.

A *run* is one (arm, learning rate); an *arm* is one architecture / training variant. Runs go to
``<root>/runs/<arm>_lr<lr>/`` (`interp.train` checkpoints, ``meta.json`` with ``steps_done``). A
call trains what is not finished, highest priority first, and stops every run cleanly before its
deadline (`TrainConfig.time_limit` leaves a checkpoint); calling again continues.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import json
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from interp import InterpError
from interp.tasks import VOCAB
from interp.train import TrainConfig, default_induction_steps, train
from interp.zoo import HybridLM, ZooConfig, load_model, match_params

REPO = Path(__file__).resolve().parent.parent


def matched(model: dict, ref_layout: str = "transformer") -> dict:
    """``model`` with its SwiGLU width set so its parameter count matches ``ref_layout`` at the
    same width and depth (as the shipped default set is matched)."""
    ref = HybridLM(ZooConfig(vocab_size=len(VOCAB), **{**model, "layout": ref_layout, "mlp_hidden": 0}))
    cfg = match_params(ZooConfig(vocab_size=len(VOCAB), **{**model, "mlp_hidden": 0}), ref.num_params())
    return {**model, "mlp_hidden": cfg.mlp_hidden}


def n_params(model: dict) -> int:
    return HybridLM(ZooConfig(vocab_size=len(VOCAB), **model)).num_params()


def attention_fraction(model: dict) -> float:
    cfg = ZooConfig(vocab_size=len(VOCAB), **model)
    return len(cfg.attention_layers) / cfg.n_layers


@dataclass
class Run:
    arm: str
    lr: float
    cfg: TrainConfig
    priority: int = 0

    @property
    def name(self) -> str:
        return f"{self.arm}_lr{self.lr:g}"

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)


def make_runs(root, arms: dict, lrs, priority=None, **train_kw) -> list[Run]:
    """One Run per (arm, lr). arms: {name: {"model": {...}, optional "knobs", "tasks"}}."""
    runs = []
    for i, (arm, spec) in enumerate(arms.items()):
        for j, lr in enumerate(lrs):
            kw = {**train_kw, **{k: v for k, v in spec.items() if k != "model"}}
            # the trainer's induction warm-up for arms with attention, as for the shipped defaults
            kw.setdefault("induction_steps", default_induction_steps(spec["model"], kw.get("steps", 0)))
            cfg = TrainConfig(out=str(Path(root) / "runs" / f"{arm}_lr{lr:g}"), model=dict(spec["model"]), lr=lr, **kw)
            runs.append(Run(arm, lr, cfg, priority=(priority or {}).get(arm, 0) * 1000 + j * 100 + i))
    return runs


def status(run: Run) -> dict:
    meta = run.out / "meta.json"
    done = json.loads(meta.read_text())["steps_done"] if meta.is_file() else 0
    if not meta.is_file() and (run.out / "checkpoint" / "trainer.pt").is_file():
        import torch
        done = torch.load(run.out / "checkpoint" / "trainer.pt", map_location="cpu", weights_only=False)["step"]
    peak = run.out / "gpu_peak.json"
    return {"run": run.name, "arm": run.arm, "lr": run.lr, "steps_done": done, "steps": run.cfg.steps,
            "complete": done >= run.cfg.steps,
            "gpu_peak_gb": round(json.loads(peak.read_text())["peak_gb"], 2) if peak.is_file() else None}


def _train_one(cfg_dict: dict, deadline: float | None, threads: int) -> str:
    """Worker: train (or resume) one run until done or until the deadline; its output goes to
    ``<out>/train.out`` (and its peak GPU memory to ``<out>/gpu_peak.json``)."""
    import torch
    torch.set_num_threads(threads)
    cfg = TrainConfig(**cfg_dict)
    if str(cfg.device).startswith("cuda:"):
        torch.cuda.set_device(cfg.device)      # no stray context on cuda:0 for a run placed elsewhere
    if deadline is not None:
        left = (deadline - time.time()) / 60
        if left < 0.25:
            return "skipped"
        cfg.time_limit = left - 0.1
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    with open(Path(cfg.out) / "train.out", "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        try:
            train(cfg, resume=True, progress=False)
        except Exception as e:  # noqa: BLE001 - one failed run (e.g. out of GPU memory) must not stop the others
            import traceback
            traceback.print_exc()
            return f"failed: {type(e).__name__}: {e}"
        finally:
            if torch.cuda.is_available() and str(cfg.device) != "cpu":
                (Path(cfg.out) / "gpu_peak.json").write_text(json.dumps(
                    {"peak_gb": torch.cuda.max_memory_allocated(cfg.device) / 1e9, "device": str(cfg.device)}))
    return "ran"


_NOWHERE = object()


def place(loads: dict, w: float, capacity: float | None):
    """The device a run of weight ``w`` starts on: of ``loads`` ({device: weights of its running
    runs}), the one with the fewest running runs (first listed on ties), if the run fits within
    ``capacity`` there or nothing runs there; else ``_NOWHERE`` (the run waits)."""
    dev = min(loads, key=lambda d: (len(loads[d]), list(loads).index(d)))
    return dev if capacity is None or sum(loads[dev]) + w <= capacity or not loads[dev] else _NOWHERE


def train_runs(runs: list[Run], workers: int = 1, deadline: float | None = None, threads: int = 1,
               progress: bool = True, weight=None, capacity: float | None = None,
               devices: list[str] | None = None) -> pd.DataFrame:
    """Train every unfinished run, highest priority (lowest number) first; ``workers`` > 1 uses that
    many spawned processes (each with ``threads`` torch threads), starting a run only while the
    summed ``weight(run)`` of the running ones stays within ``capacity`` (e.g. estimated GPU GB; a
    run that does not fit waits and lighter ones go first). ``devices`` (e.g. ``["cuda:0",
    "cuda:1"]``) spreads the runs over several GPUs: each run goes to the device with the fewest
    running runs, and ``capacity`` holds per device (a run's seed and steps do not depend on where it
    trains). A run that fails is reported (column ``error``; its traceback
    in ``<out>/train.out``) and retried by the next call. Returns the status table."""
    todo = sorted((r for r in runs if not status(r)["complete"]), key=lambda r: r.priority)
    errors = {}
    from tqdm.auto import tqdm
    bar = tqdm(total=len(todo), desc="train runs", disable=not progress, dynamic_ncols=True)
    if workers <= 1:
        for r in todo:
            bar.set_postfix_str(r.name)
            errors[r.name] = _train_one(dataclasses.asdict(r.cfg), deadline, threads)
            bar.update()
    else:
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
        ctx = mp.get_context("spawn")
        pending, running = list(todo), {}       # running: future -> (run, weight, device)
        devs = list(devices or [None])
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as ex:
            while (pending or running) and not any(e.startswith("failed: BrokenProcessPool") for e in errors.values()):
                i = 0
                while i < len(pending) and len(running) < workers:
                    w = weight(pending[i]) if weight else 1.0
                    dev = place({d: [x for _, x, rd in running.values() if rd == d] for d in devs}, w, capacity)
                    if dev is not _NOWHERE:
                        r = pending.pop(i)
                        cfg = dataclasses.asdict(r.cfg)
                        if dev is not None:
                            cfg["device"] = dev
                        try:
                            running[ex.submit(_train_one, cfg, deadline, threads)] = (r, w, dev)
                        except cf.process.BrokenProcessPool as e:   # a worker died: the pool is gone
                            errors[r.name] = f"failed: BrokenProcessPool: {e}"
                            break
                    else:
                        i += 1
                done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                for f in done:
                    r, _, _ = running.pop(f)
                    try:
                        errors[r.name] = f.result()
                    except Exception as e:  # noqa: BLE001 - a worker process died
                        errors[r.name] = f"failed: {type(e).__name__}: {e}"
                    bar.set_postfix_str(r.name)
                    bar.update()
    bar.close()
    for name, e in errors.items():
        if e.startswith("failed"):
            print(f"run {name} {e}", file=sys.stderr)
    return pd.DataFrame([{**status(r), "trained_now": errors.get(r.name) == "ran",
                          "error": errors.get(r.name, "") if errors.get(r.name, "").startswith("failed") else ""}
                         for r in runs])


def cached(path: Path, fn) -> pd.DataFrame:
    """``fn()`` saved as CSV at ``path``; read back instead of recomputed on a later call."""
    if path.is_file():
        return pd.read_csv(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df = fn()
    df.to_csv(path, index=False)
    return df


def load_run(run: Run, device="cpu"):
    return load_model(run.out, device=device).eval()


def best_by(scores: pd.DataFrame, key="arm", score="val_acc") -> pd.DataFrame:
    """The row with the highest score per arm (ties: the smaller lr, i.e. the earlier row)."""
    idx = scores.sort_values(["lr"]).groupby(key, sort=False)[score].idxmax()
    return scores.loc[idx].set_index(key)


def git_commit() -> str:
    if os.environ.get("INTERP_GIT_COMMIT"):
        # set by whoever shipped this tree to another host (e.g. a GPU host whose copy of .git can be stale)
        return os.environ["INTERP_GIT_COMMIT"] + " (from INTERP_GIT_COMMIT)"
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout
        files = [line[3:] for line in dirty.splitlines() if line.strip()]
        return sha + (f" (uncommitted changes in {', '.join(files[:8])}{', ...' if len(files) > 8 else ''})"
                      if files else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_name(device: str) -> str:
    import torch
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__})"
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores (torch {torch.__version__})"


def runs_note(status: pd.DataFrame) -> list[str]:
    n = int(status["trained_now"].sum()) if "trained_now" in status else 0
    return [f"Runs trained (or continued) in this call: {n} of {len(status)}; the others were finished by earlier "
            "calls of the same command (their checkpoints and cached evaluations are reused).", ""]


def header(title: str, device: str, started: float, argv: list[str]) -> list[str]:
    cmd = " ".join(["python", *[a if " " not in a else repr(a) for a in argv]])
    return [f"# {title}", "",
            f"* command: `{cmd}`",
            f"* device: {device_name(device)}",
            f"* date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; this call took "
            f"{(time.time() - started) / 60:.1f} min",
            f"* git commit: {git_commit()}", ""]


def md_table(df: pd.DataFrame, floatfmt="{:.2f}") -> list[str]:
    cols = list(df.columns)
    out = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for _, row in df.iterrows():
        out.append("| " + " | ".join(floatfmt.format(v) if isinstance(v, float) else str(v) for v in row) + " |")
    return out


def sweep_table(status: pd.DataFrame, val: pd.DataFrame, best: pd.DataFrame, extra=()) -> list[str]:
    """The learning-rate sweep as a markdown table; each arm's best run in bold."""
    sw = status.merge(val, on=["arm", "lr"], how="left").sort_values(["arm", "lr"], kind="stable")
    isbest = [bool(a in best.index and best.loc[a, "lr"] == lr) for a, lr in zip(sw.arm, sw.lr)]
    cols = ["arm", "lr", "steps_done", "steps", "val_acc"] + [c for c in extra if c in sw]
    return md_table(sw.assign(lr=[f"{x:g}" for x in sw.lr],
                              val_acc=[f"**{v:.3f}**" if b else f"{v:.3f}" for v, b in zip(sw.val_acc, isbest)])[cols])


def finish_report(figs: Path, lines: list[str], profile: str, verdicts: list[str]):
    lines += ["", "## Comparison with the published shape", ""] + verdicts
    if profile != "full":
        lines += ["", f"_Profile `{profile}` trains tiny models for a few steps: near-chance numbers are expected and "
                      "say nothing about the architectures; the full profile (GPU) is the experiment._"]
    (figs / "report.md").write_text("\n".join(lines) + "\n")


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_fig(fig, path, dpi=110):
    import matplotlib.pyplot as plt
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def cli(main):
    """Run ``main()`` as a command: an `InterpError` prints ``error: ...`` and exits with 2."""
    try:
        sys.exit(main())
    except InterpError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def add_common_args(ap, name: str, profiles: dict):
    """The flags of `experiments._common.parser` (same names and meanings) plus ``--workers``."""
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="CPU profile: tiny models, a few minutes")
    g.add_argument("--tiny", action="store_true", help="test-suite profile: seconds, numbers meaningless")
    g.add_argument("--profile", choices=list(profiles), default=None, help="full (default) | quick | test")
    ap.add_argument("--out", "--figures", dest="out", default=None,
                    help=f"figures, tables and report.md (default figures/{name})")
    ap.add_argument("--runs", default=None,
                    help=f"checkpoints and cached evaluations (default runs/{name}[_<profile>])")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--workers", type=int, default=None, help="parallel training processes (GPU; CPU: 1)")
    ap.add_argument("--time-budget", type=float, default=None,
                    help="minutes for this call, evaluation included (0 = none; full profile: 8.5); stops "
                         "cleanly, calling again continues")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_run_args(ap)


def add_run_args(ap):
    """``--train-only`` and ``--train-devices``, shared by every experiment that trains runs."""
    ap.add_argument("--train-only", action="store_true",
                    help="train (or continue) the runs and stop, without evaluating; exit 0 once all are finished, "
                         "3 while some are not")
    ap.add_argument("--train-devices", default=None,
                    help="comma-separated GPUs to spread the training runs over, e.g. cuda:0,cuda:1 (default: "
                         "--device); evaluation runs on --device")
    ap.add_argument("--steps", type=int, default=None,
                    help="training steps instead of the profile's (a longer budget; the induction warm-up of "
                         "attention arms scales with it: min(2000, steps/4)); the default --runs directory gets a "
                         "_steps<N> suffix")


def with_steps(P: dict, steps: int | None, runs_suffix: str) -> tuple[dict, str]:
    """``--steps`` applied: (the profile with ``steps`` replaced, the default runs-directory suffix)."""
    if steps is None:
        return P, runs_suffix
    if steps < 1:
        raise InterpError(f"--steps {steps} is out of range; valid: integers >= 1")
    return {**P, "steps": steps}, f"{runs_suffix}_steps{steps}"


def check_spec(root: Path, spec: dict, mismatch) -> None:
    """``<root>/spec.json`` records the configuration that the checkpoints and cached results in
    ``root`` were made with; another configuration raises ``InterpError(mismatch(recorded))`` instead
    of silently reusing them (a finished 2000-step run is not a 4000-step one)."""
    f = Path(root) / "spec.json"
    spec = json.loads(json.dumps(spec))
    if f.is_file():
        old = json.loads(f.read_text())
        if old != spec:
            raise InterpError(mismatch(old))
    else:
        Path(root).mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(spec, indent=1))


def check_steps(root: Path, profile: str, steps: int) -> None:
    """`check_spec` for the sweeps of E1 / E2: the profile and the steps their runs were trained with."""
    check_spec(root, {"profile": profile, "steps": steps}, lambda old: (
        f"'{root}' holds runs of profile {old.get('profile')} with {old.get('steps')} steps, not {profile} with "
        f"{steps}; give another --runs (or leave it out)"))


def train_devices(spec: str | None, device: str) -> list[str] | None:
    """``--train-devices`` checked: None (train on ``device``) or a list of available CUDA devices."""
    if not spec:
        return None
    import torch
    n = torch.cuda.device_count()
    valid = [f"cuda:{i}" for i in range(n)]
    devs = [d.strip() for d in spec.split(",") if d.strip()]
    bad = [d for d in devs if d not in valid]
    if bad or not devs:
        raise InterpError(f"--train-devices '{spec}': {', '.join(bad) or 'empty'} not available; valid: "
                          f"{', '.join(valid) or 'none (no CUDA device here)'}")
    return devs


@dataclass
class Setup:
    profile: str
    P: dict
    device: str
    root: Path
    figs: Path
    deadline: float | None
    workers: int
    progress: bool
    started: float
    train_only: bool = False
    train_devices: list[str] | None = None


def setup(a, name: str, profiles: dict, started: float) -> Setup:
    profile = a.profile or ("test" if a.tiny else "quick" if a.quick else "full")
    P, suffix = with_steps(profiles[profile], a.steps, "" if profile == "full" else "_" + profile)
    device = resolve_device(a.device)
    if a.workers is not None and a.workers < 1:
        raise InterpError(f"--workers {a.workers} is out of range; valid: integers >= 1")
    figs = Path(a.out or f"figures/{name}")
    figs.mkdir(parents=True, exist_ok=True)
    budget = P["time_budget"] if a.time_budget is None else a.time_budget
    if budget < 0:
        raise InterpError(f"--time-budget {budget} is out of range; valid: minutes >= 0 (0 = none)")
    root = Path(a.runs or f"runs/{name}{suffix}")
    check_steps(root, profile, P["steps"])
    return Setup(profile, P, device, root, figs,
                 deadline_from(budget, started), a.workers or (P["workers"] if device != "cpu" else 1),
                 not a.no_progress, started, a.train_only, train_devices(a.train_devices, device))


def train_then_validate(runs, validate, s: Setup, weight=None, capacity=None):
    """Train what is unfinished (stopping ``eval_reserve`` minutes before the deadline, or at it
    with ``train_only``), then validate the finished runs. Returns (status, validation table, best
    row per arm or None); with ``train_only`` the table is empty and best is None."""
    deadline = None if s.deadline is None else s.deadline - (0 if s.train_only else 60 * s.P["eval_reserve"])
    st = train_runs(runs, workers=s.workers, deadline=deadline, progress=s.progress,
                    weight=weight if s.device != "cpu" else None, capacity=capacity, devices=s.train_devices)
    done = [r for r, c in zip(runs, st.complete) if c]
    if len(done) < len(runs):
        print(f"{len(runs) - len(done)} of {len(runs)} runs unfinished (time budget); run the same command again "
              "to continue", file=sys.stderr)
    if s.train_only:
        print(f"--train-only: {len(done)} of {len(runs)} runs finished; no evaluation", file=sys.stderr)
        return st, pd.DataFrame(), None
    val = validate(done, s.P, s.root, s.device, s.deadline)
    if val.empty:
        print("no finished runs to evaluate yet", file=sys.stderr)
        return st, val, None
    return st, val, best_by(val)


def unevaluated_exit(s: Setup, status: pd.DataFrame) -> int:
    """The exit code of a call that evaluated nothing: 0 for ``--train-only`` once every run is
    finished, else 3 (run the same command again to continue)."""
    return 0 if s.train_only and status.complete.all() else 3


def resolve_device(device: str) -> str:
    import torch
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InterpError(f"device '{device}' requested but CUDA is not available; valid: cpu, auto")
    return device


def deadline_from(minutes: float | None, started: float) -> float | None:
    return None if not minutes else started + 60 * minutes


def out_of_time(deadline: float | None, reserve_s: float = 0.0) -> bool:
    return deadline is not None and time.time() > deadline - reserve_s
