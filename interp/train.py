"""Trainer for zoo models on a mixture of reasoning-primitive tasks.

AdamW, linear warmup + cosine decay, gradient clipping, bf16 autocast on CUDA, each step's pass replayed
from a CUDA graph on a GPU (`interp.train_graph`; ``cuda_graphs=False``: eager), a progress bar,
periodic held-out evaluation, resumable checkpoints (``<out>/checkpoint/``; a resume only under the config
that made them, a finished run left as it is: `interp.runfolder`) and a fixed seed.
Each step draws one batch from one task (round-robin over the mixture); one difficulty knob of
that task is set to a random value of its difficulty grid, the others keep their defaults, so
the model sees every knob moving on its own, as the evaluation sweeps do. The loss is next-token
cross-entropy on the supervised answer positions (``TaskBatch.loss_mask``).

Induction warm-up (``induction_steps``, ``induction_until``): the first steps train on short,
densely supervised induction sequences ``<bos> x1..xn <sep> y1..yn`` (n distinct random words of
the vocabulary; y a rotation of x; every next y is supervised) until held-out accuracy on them
reaches ``induction_until`` (checked every ``INDUCTION_CHECK`` steps) or ``induction_steps`` have
passed; then the task mixture takes over (the step at which it did is logged and kept in the
checkpoint and meta.json as ``induction_done_at``). A softmax
transformer trained on the mixture alone stays on a plateau: the answer-only loss of mqar (4
supervised tokens a sequence) and state_recall (1) never forms the previous-token + induction
circuit in the step budget, and the model settles on "a value seen in the context, not yet
answered" (mqar 0.17 at 8 pairs, the elimination ceiling). Recurrent mixers get the previous
token from their short conv and form the circuit within a few hundred warm-up steps. Short dense
sequences form it in a transformer in ~500 (2 layers) to ~1200 (8 layers) steps (d=64, batch 32,
lr 3e-3), and it transfers to mqar as is (held-out mqar near 1.0 before any mqar step).
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from interp import InterpError
from interp import tasks as T
from interp.devices import resolve_device
from interp.interventions import graphs
from interp.kernels import kernel_spec
from interp.runfolder import already_trained, cut_log, open_run, record
from interp.store import atomic_write_text
from interp.train_graph import GradPass
from interp.zoo import HybridLM, ZooConfig, load_model, save_model


@dataclass
class TrainConfig:
    out: str
    model: dict                      # ZooConfig fields (vocab_size is filled in)
    tasks: list = field(default_factory=lambda: ["mqar", "state_recall"])
    grid_max: dict = field(default_factory=dict)  # task -> {knob: max value used in training}
    grid: dict = field(default_factory=dict)      # task -> {knob: values} replacing the task's grid in training
    knobs: dict = field(default_factory=dict)     # task -> {knob: value} fixed in every batch, e.g. cot
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 250
    eval_n: int = 256
    save_every: int = 500
    seed: int = 0
    device: str = "auto"
    scan_backend: str = "auto"     # auto | reference (see HybridLM.set_scan_backend)
    induction_steps: int = 0       # at most this many first steps on induction sequences (module doc)
    induction_until: float = 0.9   # ... ending early once held-out accuracy on them reaches this (> 1: never)
    induction_len: int = 16        # n, distinct words before <sep> in those sequences
    time_limit: float = 0.0        # minutes; 0 = none. Stops early, saves, records the steps done
    command: str = ""


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))


def training_knobs(task: str, rng: np.random.Generator, grid_max: dict | None = None,
                   grid: dict | None = None) -> dict:
    """One knob of ``task`` at a random value of its difficulty grid (``grid``'s values replacing the
    registered ones of the knobs it names; capped by grid_max)."""
    grid = {**T.difficulty_grid(task), **(grid or {})}
    if not grid:
        return {}
    knob = list(grid)[rng.integers(len(grid))]
    values = list(grid[knob])
    cap = (grid_max or {}).get(knob)
    if cap is not None:
        kept = [v for v in values if not isinstance(v, (int, float)) or v <= cap]
        values = kept or values[:1]
    return {knob: values[rng.integers(len(values))]}


INDUCTION_CHECK = 50  # steps between the warm-up's held-out checks
INDUCTION_NEAR_ZERO = 0.05  # a warm-up ending below this held-out accuracy formed no induction circuit (warned)


def default_induction_steps(model: dict, steps: int) -> int:
    """The warm-up length `interp train` and the experiments use unless told otherwise:
    min(2000, steps // 4) for layouts with attention, 0 for attention-free ones. In the default-set
    training (BENCHMARKS.md sections 4 and 9) the warm-up let the transformer and gdn75 recall
    (mqar 0.17 -> 1.00, 0.94 -> 1.00), but the attention-free gdn100 did not reach the threshold in
    2500 warm-up steps and ended worse than without it (mqar 0.60 vs 0.97)."""
    from interp.zoo.layouts import resolve_layout
    kinds = resolve_layout(model["layout"], model["n_layers"])
    return min(2000, steps // 4) if any("attn" in k for k in kinds) else 0


def induction_batch(n: int, seed, length: int = 16) -> T.TaskBatch:
    """``n`` sequences ``<bos> x1..xL <sep> y1..yL``: x are ``length`` distinct words of the task
    vocabulary (no <pad>/<bos>/<eos>/<sep>), y is x rotated by a random shift, so each y_{i+1}
    is the word after y_i's earlier occurrence (wrapping once). Supervised: y_1..y_{L-1} predict the
    next y. Deterministic in ``seed`` (an int or a sequence of ints for numpy's SeedSequence)."""
    first = T.VOCAB.id("<sep>") + 1
    words = len(T.VOCAB) - first
    if not (isinstance(length, int) and 2 <= length <= words):
        raise InterpError(f"induction_len={length!r} is out of range; valid: integers 2..{words}")
    rng = np.random.default_rng(seed)
    x = rng.random((n, words)).argsort(1)[:, :length] + first
    shift = rng.integers(0, length, (n, 1))
    y = np.take_along_axis(x, (np.arange(length)[None] + shift) % length, 1)
    tokens = np.concatenate([np.full((n, 1), T.VOCAB.id("<bos>")), x,
                             np.full((n, 1), T.VOCAB.id("<sep>")), y], 1)
    pos = np.broadcast_to(np.arange(length + 2, 2 * length + 1), (n, length - 1))
    mask = np.zeros(tokens.shape, dtype=bool)
    mask[:, length + 2:2 * length + 1] = True
    tok = torch.from_numpy(tokens).long()
    pos_t = torch.from_numpy(pos.copy()).long()
    return T.TaskBatch(tokens=tok, answer_pos=pos_t, answers=tok.gather(1, pos_t + 1), labels={},
                       loss_mask=torch.from_numpy(mask), meta={"task": "induction", "length": length})


def lm_loss(model, batch) -> torch.Tensor:
    """The mean next-token cross-entropy of ``model`` on ``batch``'s supervised positions."""
    return masked_lm_loss(model, batch.tokens, batch.loss_mask)


def masked_lm_loss(model, tokens: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """`lm_loss` of tokens [B, T] and loss mask [B, T], as a masked sum that reads nothing on the host (no
    boolean indexing), so that a CUDA graph can capture it (`interp.train_graph`)."""
    ce = F.cross_entropy(model(tokens)[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")
    mask = loss_mask[:, :-1].flatten()
    return torch.where(mask, ce, 0).sum() / mask.sum()


def read_log(path) -> list[dict]:
    """The periodic rows of a run's ``train_log.jsonl`` (step, loss, lr, tokens_per_s, acc/<task>),
    without the one-off row that marks the end of the induction warm-up (it has no loss)."""
    rows = [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]
    return [r for r in rows if "induction_done_at" not in r]


@torch.no_grad()
def answer_accuracy(model, batch, chunk: int = 256) -> float:
    """Fraction of answers predicted exactly (argmax of the logits at each answer position)."""
    correct = total = 0
    for s in range(0, batch.tokens.shape[0], chunk):
        toks = batch.tokens[s:s + chunk]
        pos, ans = batch.answer_pos[s:s + chunk], batch.answers[s:s + chunk]
        logits = model(toks)
        valid = pos >= 0
        pred = logits.argmax(-1).gather(1, pos.clamp(min=0))
        correct += ((pred == ans) & valid).sum().item()
        total += valid.sum().item()
    return correct / max(total, 1)


def _save_checkpoint(path: Path, model, opt, step, cfg, induction_done_at=None, torch_rng=None):
    """``<path>/checkpoint/``: the model (safetensors + JSON), ``trainer.pt`` (optimizer state,
    step, RNG state (``torch_rng``, default the current one): tensors and plain values only, loaded
    with ``weights_only=True``) and the config. Written beside it and swapped in by renames: a crash
    or Ctrl-C at any point leaves a whole checkpoint (the new one, or the previous one as
    ``checkpoint.old``). `interp.stacked` runs the three steps for all its runs in turn."""
    write_checkpoint(path, model, opt, step, cfg, induction_done_at, torch_rng)
    swap_checkpoint(path)
    drop_old_checkpoint(path)


def write_checkpoint(path: Path, model, opt, step, cfg, induction_done_at=None, torch_rng=None):
    """The new checkpoint, whole, as ``<path>/checkpoint.tmp/``."""
    tmp = path / "checkpoint.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)  # left by a save that stopped half-way
    save_model(model, tmp)
    torch.save({"optimizer": opt.state_dict(), "step": step, "induction_done_at": induction_done_at,
                "torch_rng": torch.get_rng_state() if torch_rng is None else torch_rng}, tmp / "trainer.pt")
    (tmp / "train_config.json").write_text(json.dumps(record(cfg), indent=2))   # with its kernels (interp.runfolder)


def swap_checkpoint(path: Path):
    """``checkpoint/`` -> ``checkpoint.old/``, then ``checkpoint.tmp/`` -> ``checkpoint/``."""
    ck, tmp, old = path / "checkpoint", path / "checkpoint.tmp", path / "checkpoint.old"
    if ck.exists():
        if old.exists():
            shutil.rmtree(old)
        ck.rename(old)
    tmp.rename(ck)


def drop_old_checkpoint(path: Path):
    if (path / "checkpoint.old").exists():
        shutil.rmtree(path / "checkpoint.old")


def load_trainer_state(ck) -> dict:
    """The trainer state of checkpoint folder ``ck`` (``trainer.pt``: optimizer state, step,
    induction_done_at, torch_rng), read by `interp.zoo.load_trainer_state` (``weights_only=True``): a
    crafted file cannot run code, it is refused (InterpError) as is a damaged one."""
    from interp.zoo import load_trainer_state as read_state
    f = Path(ck) / "trainer.pt"
    try:
        return read_state(f)
    except InterpError as e:
        raise InterpError(f"checkpoint {f} is damaged or holds more than tensors and plain values ({e}); "
                          "valid: a trainer.pt written by interp.train (train again with --no-resume or a new "
                          "--out)") from None


def _checkpoint_dir(out: Path) -> Path | None:
    """The checkpoint to resume from: ``checkpoint/``, or ``checkpoint.old/`` where a save stopped
    between its two renames; None if there is none."""
    for name in ("checkpoint", "checkpoint.old"):
        if (out / name / "trainer.pt").is_file():
            return out / name
    return None


def common_checkpoints(outs) -> list | None:
    """Each run's checkpoint at the latest step every run of ``outs`` has (``checkpoint/`` or ``checkpoint.old/``: a
    stack killed while swapping its new checkpoints in holds some runs' new one and the others' previous one), or
    None where no step is common."""
    have = []
    for o in outs:
        steps = {}
        for name in ("checkpoint.old", "checkpoint"):
            if (Path(o) / name / "trainer.pt").is_file():
                steps[int(load_trainer_state(Path(o) / name)["step"])] = Path(o) / name
        have.append(steps)
    common = set.intersection(*(set(h) for h in have))
    return [h[max(common)] for h in have] if common else None


def _append_log(path: Path, row: dict):
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def _warn(msg: str):
    tqdm.write(f"warning: {msg}", file=sys.stderr)


def _check_config(cfg: TrainConfig):
    """Refuse a config that cannot train (InterpError naming the field, its value and what is
    valid) before anything is written."""
    unknown = [t for t in cfg.tasks if t not in T.TASKS]
    if unknown:
        raise InterpError(f"unknown task '{unknown[0]}'; valid tasks: {', '.join(sorted(T.TASKS))}")
    if not cfg.tasks:
        raise InterpError(f"tasks=[] is empty; valid: one or more of {', '.join(sorted(T.TASKS))}")
    ints = {"steps": 1, "batch_size": 1, "eval_every": 1, "eval_n": 1, "save_every": 1, "warmup": 0, "seed": 0}
    for name, lo in ints.items():
        v = getattr(cfg, name)
        if not (isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= lo):
            raise InterpError(f"{name}={v!r} is out of range; valid: integers >= {lo}")
    for name, lo, hi in (("lr", 0, math.inf), ("weight_decay", 0, math.inf), ("grad_clip", 0, math.inf),
                         ("min_lr_ratio", 0, 1), ("induction_until", 0, math.inf), ("time_limit", 0, math.inf)):
        v = getattr(cfg, name)
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi
        if not ok or (name == "lr" and v == 0):
            rng = f"{'> 0' if name == 'lr' else f'>= {lo}'}" + ("" if hi == math.inf else f" and <= {hi}")
            raise InterpError(f"{name}={v!r} is out of range; valid: finite numbers {rng}")
    for task, g in cfg.grid.items():
        known = T.difficulty_grid(task) if task in cfg.tasks else None
        bad = [k for k, v in g.items() if k not in known or not isinstance(v, (list, tuple)) or not v] \
            if known is not None else [task]
        if bad:
            raise InterpError(f"grid {task}: {bad[0]!r} is not valid; valid: a task being trained "
                              f"({', '.join(cfg.tasks)}) mapped to {{knob: non-empty list}} for its grid knobs "
                              f"({', '.join(known or [])})")
    if not (isinstance(cfg.induction_steps, int) and 0 <= cfg.induction_steps < cfg.steps):
        raise InterpError(f"induction_steps={cfg.induction_steps!r} is out of range; valid: integers "
                          f"0..{cfg.steps - 1} (fewer than steps={cfg.steps})")


def _warn_config(cfg: TrainConfig):
    """Warn (stderr) about a config that trains but badly: a learning-rate warm-up not shorter than
    training."""
    if cfg.warmup > cfg.steps:
        _warn(f"the learning-rate warm-up ({cfg.warmup} steps) is longer than training ({cfg.steps} steps): "
              f"the learning rate never reaches {cfg.lr:g}")
    elif cfg.warmup == cfg.steps:
        _warn(f"the learning-rate warm-up ({cfg.warmup} steps) is as long as training ({cfg.steps} steps): "
              f"the learning rate reaches {cfg.lr:g} only at the last step and never decays")


def _make_out(cfg: TrainConfig) -> Path:
    """Create ``cfg.out`` (an OSError becomes an InterpError naming it)."""
    out = Path(cfg.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InterpError(f"cannot create the output directory '{out}' ({e.strerror}); valid: a new or existing "
                          "directory in a writable place") from None
    return out


def _make_optimizer(model, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW (betas 0.9, 0.95) with weight decay on the parameters with >= 2 dims only (the first group)."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))


def _build(cfg: TrainConfig, mcfg: ZooConfig, out: Path, device, resume: bool):
    """(model, optimizer, start step, induction_done_at): a fresh model, or the checkpoint's
    model, optimizer, step and torch RNG state when resuming."""
    start, done_at, state = 0, None, None
    ck = _checkpoint_dir(out) if resume else None
    if ck is not None:
        state = load_trainer_state(ck)
        model = load_model(ck, device=device).train()
        start = state["step"]
        done_at = state.get("induction_done_at")
        torch.set_rng_state(state["torch_rng"])
    else:
        model = HybridLM(mcfg).to(device)
    cut_log(out, start)   # rows a killed call logged after its checkpoint are logged again from here
    model.set_scan_backend(cfg.scan_backend)
    opt = _make_optimizer(model, cfg)
    if start:
        opt.load_state_dict(state["optimizer"])
        print(f"resuming from {ck} at step {start}", file=sys.stderr)
    return model, opt, start, done_at


def _warmup_over(model, induction_eval, cfg: TrainConfig, step: int, autocast, log_path: Path, bar):
    """The warm-up's held-out check at ``step``: the step it ends at (logged; a warning when its
    accuracy is below `INDUCTION_NEAR_ZERO`), or None while it goes on."""
    model.eval()
    with autocast:
        acc = answer_accuracy(model, induction_eval)
    model.train()
    if acc >= cfg.induction_until or step >= cfg.induction_steps:
        _append_log(log_path, {"step": step, "induction_done_at": step, "acc/induction": acc})
        bar.write(f"induction warm-up done at step {step} (held-out induction accuracy {acc:.3f})")
        if acc < INDUCTION_NEAR_ZERO:
            _warn(f"the induction warm-up ended at step {step} with held-out induction accuracy {acc:.3f} (below "
                  f"{INDUCTION_NEAR_ZERO}; --induction-steps {cfg.induction_steps}, --induction-until "
                  f"{cfg.induction_until:g}, --lr {cfg.lr:g}): no induction circuit formed (more --induction-steps "
                  "or another --lr may help)")
        return step
    return None


def batch_spec(cfg: TrainConfig, step: int, rng, warming_up: bool):
    """(task, knobs, data seed) of ``step``'s batch (``rng``: numpy's default_rng([cfg.seed, step])): the
    induction warm-up's task ('induction', no knobs) or the mixture's task with its drawn knobs."""
    if warming_up:
        return "induction", {}, [cfg.seed, step, 1]
    task = cfg.tasks[step % len(cfg.tasks)]
    knobs = {**training_knobs(task, rng, cfg.grid_max.get(task), cfg.grid.get(task)),
             **cfg.knobs.get(task, {})}
    return task, knobs, int(rng.integers(2**31)) + 1_000_000


def _next_batch(cfg: TrainConfig, step: int, rng, warming_up: bool, device):
    """(task name, batch) of ``step``: an induction batch during the warm-up, else the mixture's task."""
    task, knobs, seed = batch_spec(cfg, step, rng, warming_up)
    if task == "induction":
        return task, induction_batch(cfg.batch_size, seed, cfg.induction_len).to(device)
    return task, T.generate(task, cfg.batch_size, seed=seed, **knobs).to(device)


def _optimizer_step(opt, batch, cfg: TrainConfig, step: int, grad_pass: GradPass) -> torch.Tensor:
    """One AdamW step on ``batch``, its clipped gradients from ``grad_pass`` (`interp.train_graph.GradPass`: replayed
    from CUDA graphs or eager)."""
    for g in opt.param_groups:
        g["lr"] = lr_at(step, cfg)
    loss = grad_pass(batch)
    opt.step()
    return loss


def _held_out_row(model, cfg: TrainConfig, row: dict, induction_eval, autocast, device) -> dict:
    """``row`` with the held-out accuracy of every task (and of the induction sequences) added."""
    model.eval()
    with autocast:
        for t in cfg.tasks:  # held-out seeds (training seeds are >= 1e6)
            row[f"acc/{t}"] = answer_accuracy(model, T.generate(t, cfg.eval_n, seed=7,
                                                                **cfg.knobs.get(t, {})).to(device))
        if induction_eval is not None:
            row["acc/induction"] = answer_accuracy(model, induction_eval)
    model.train()
    return row


def _finish(model, cfg: TrainConfig, out: Path, steps_done: int, done_at, device) -> HybridLM:
    model.eval()
    meta = {"train_config": dataclasses.asdict(cfg), "params": model.num_params(), "steps_done": steps_done,
            **kernel_spec(training=True),
            "induction_done_at": done_at,
            "command": cfg.command, "torch": torch.__version__, "device": str(device)}
    save_model(model, out, extra=meta)
    if cfg.command:
        atomic_write_text(out / "COMMAND.txt", cfg.command + "\n")
    return model


def train(cfg: TrainConfig, resume: bool = True, progress: bool = True, stop_after: int | None = None,
          cuda_graphs: bool = True) -> HybridLM:
    """Train (or resume) and save to ``cfg.out``. ``stop_after``: stop once this step is reached
    and checkpointed (as an interrupted run would be). ``cuda_graphs``: on a GPU, replay each step's forward and
    backward from a CUDA graph per batch shape (`interp.train_graph`; the eager step's numbers up to rounding,
    faster where launches bound the step; ignored on a CPU; ``False``: eager steps)."""
    _check_config(cfg)
    device = resolve_device(cfg.device)
    out = _make_out(cfg)
    with open_run(out, cfg, resume) as finished:   # one trainer, one config per folder (interp.runfolder)
        if finished:
            return already_trained(out, device)
        return _train(cfg, out, device, resume, progress, stop_after, cuda_graphs)


def _train(cfg: TrainConfig, out: Path, device, resume: bool, progress: bool, stop_after, cuda_graphs: bool):
    """`train`'s loop, in a folder `interp.runfolder.open_run` holds."""
    mcfg = ZooConfig.from_dict({**cfg.model, "vocab_size": len(T.VOCAB)})
    torch.manual_seed(cfg.seed)
    model, opt, start, done_at = _build(cfg, mcfg, out, device, resume)
    grad_pass = GradPass(model, cfg.grad_clip, masked_lm_loss, cuda_graphs and graphs.graphable(device))
    _warn_config(cfg)
    log_path = out / "train_log.jsonl"
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else torch.autocast("cpu", enabled=False))
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=not progress,
               desc=f"train {mcfg.layout}", dynamic_ncols=True)
    t0, tokens_seen, steps_done = time.time(), 0, start
    model.train()
    induction_eval = (induction_batch(cfg.eval_n, [cfg.seed, 7, 7], cfg.induction_len).to(device)
                      if cfg.induction_steps else None)
    if done_at is None and (start > cfg.induction_steps or not cfg.induction_steps):   # (at start == induction_steps
        done_at = cfg.induction_steps          # the loop's first step runs the warm-up's last check, as unbroken)
    for step in bar:
        rng = np.random.default_rng([cfg.seed, step])
        if done_at is None and step > 0 and (step % INDUCTION_CHECK == 0 or step >= cfg.induction_steps):
            done_at = _warmup_over(model, induction_eval, cfg, step, autocast, log_path, bar)
        task, batch = _next_batch(cfg, step, rng, done_at is None, device)
        loss = _optimizer_step(opt, batch, cfg, step, grad_pass)
        tokens_seen += batch.tokens.numel()
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", task=task)
        out_of_time = cfg.time_limit and time.time() - t0 > 60 * cfg.time_limit
        last = step + 1 == cfg.steps or bool(out_of_time)
        if (step + 1) % cfg.eval_every == 0 or last:
            row = _held_out_row(model, cfg, {"step": step + 1, "loss": loss.item(), "lr": lr_at(step, cfg),
                                             "tokens_per_s": tokens_seen / max(time.time() - t0, 1e-9)},
                                induction_eval, autocast, device)
            _append_log(log_path, row)
            bar.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        if (((step + 1) % cfg.save_every == 0 and not last) or (stop_after is not None and step + 1 == stop_after)
                or (out_of_time and step + 1 < cfg.steps)):  # a later call resumes where the time ran out
            _save_checkpoint(out, model, opt, step + 1, cfg, done_at)
        if stop_after is not None and step + 1 == stop_after and not last:
            return model.eval()
        if last:
            steps_done = step + 1
            break
    return _finish(model, cfg, out, steps_done, done_at, device)
