"""The text models of the token-loss comparison, trained from scratch: a byte-level BPE tokenizer and three
arms matched in parameter count (an Olmo-3-style transformer with full attention, the same with Olmo 3's
sliding-window layers, an Olmo-Hybrid-style GDN hybrid), each run trained (resumably, optionally in worker
processes) on the windows its training seed draws, every window once per pass over the text; and the
fingerprint of given checkpoints.

A run is ``<runs>/models/<arm>_s<seed>_lr<lr>/``: the HF checkpoint with its tokenizer and ``meta.json``
(``steps_done``; the finished run's, with its losses, written last), ``trainer.pt`` while it is unfinished.
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import inspect
import json
import math
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from interp import InterpError
from interp.experiment.context import Ctx
from interp.store import atomic_save, atomic_write_json
from interp.zoo import load_trainer_state

SPECIALS = ["<pad>", "<bos>", "<eos>"]


def train_tokenizer(docs, vocab: int, path: Path):
    """A byte-level BPE tokenizer trained on ``docs`` (saved as a PreTrainedTokenizerFast in the
    folder ``path``, which appears whole: written as ``<path>.tmp-<pid>`` and renamed)."""
    from transformers import PreTrainedTokenizerFast
    if (path / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(str(path))
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((d.text for d in docs), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    fast.save_pretrained(str(tmp))
    shutil.rmtree(path, ignore_errors=True)        # a folder without tokenizer.json: left by an older version
    os.replace(tmp, path)
    return fast


ARMS = ("olmo3", "olmo3_swa", "olmo_hybrid")   # the transformer, its sliding-window variant, the hybrid


def layer_kinds(n_layers: int, other: str) -> list[str]:
    """Olmo-Hybrid's layer pattern: full attention every 4th layer counted from the last (which is full
    attention), ``other`` elsewhere; for 4k layers that is Olmo 3's (3 ``other`` then 1 full) x k."""
    return ["full_attention" if (n_layers - 1 - i) % 4 == 0 else other for i in range(n_layers)]


def arm_configs(vocab_size: int, M: dict, max_len: int, window: int | None = None) -> dict:
    """The three arms' transformers configs: ``olmo_hybrid`` (3 Gated DeltaNet layers per attention layer),
    ``olmo3`` (full attention in every layer) and ``olmo3_swa`` (Olmo 3's pattern: sliding-window attention of
    ``window`` tokens in the hybrid's GDN slots, full attention in its attention slots; None: ``max_len // 2``,
    Olmo 3's window / pretraining-context ratio of 4096 / 8192). Both transformers get the MLP width that
    matches the hybrid's parameter count (a sliding window adds no parameters)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    L = M["layers"]
    window = window or max(1, max_len // 2)
    common = dict(vocab_size=vocab_size, hidden_size=M["d"], num_hidden_layers=L, num_attention_heads=M["heads"],
                  num_key_value_heads=M["heads"], pad_token_id=0, bos_token_id=1, eos_token_id=2,
                  tie_word_embeddings=True, max_position_embeddings=max(max_len, 64))
    hyb = AutoConfig.for_model("olmo_hybrid", **common, intermediate_size=3 * M["d"],
                               layer_types=layer_kinds(L, "linear_attention"),
                               linear_num_key_heads=M["heads"], linear_num_value_heads=M["heads"],
                               linear_key_head_dim=M["head_dim"], linear_value_head_dim=M["head_dim"])

    def n_params(cfg):
        with torch.device("meta"):
            return sum(p.numel() for p in AutoModelForCausalLM.from_config(cfg).parameters())
    target = n_params(hyb)

    def tf(inter, kinds):
        return AutoConfig.for_model("olmo3", **common, intermediate_size=inter, layer_types=kinds,
                                    sliding_window=window)
    n1, n2 = n_params(tf(1, ["full_attention"] * L)), n_params(tf(2, ["full_attention"] * L))
    inter = max(1, round(1 + (target - n1) / (n2 - n1)))
    return {"olmo3": tf(inter, ["full_attention"] * L), "olmo3_swa": tf(inter, layer_kinds(L, "sliding_attention")),
            "olmo_hybrid": hyb}


pair_configs = arm_configs      # the name earlier callers use


def layers_str(cfg) -> str:
    """A config's layers: A full attention, S sliding-window attention, G Gated DeltaNet."""
    return " ".join({"full_attention": "A", "sliding_attention": "S"}.get(k, "G") for k in cfg.layer_types)


@contextmanager
def reference_kernels(model):
    """While open, HF linear-attention layers use transformers' pure-torch functions instead of
    fla / causal-conv1d kernels (fla 0.6's gated-chunk backward refuses Hopper with Triton < 3.7.1,
    fla issue #640). The parameters are the same on both paths."""
    names = ("torch_chunk_gated_delta_rule", "torch_recurrent_gated_delta_rule", "causal_conv1d_fn",
             "causal_conv1d_update", "chunk_gated_delta_rule", "fused_recurrent_gated_delta_rule")
    saved = []
    for m in model.modules():
        try:
            g = inspect.unwrap(type(m).forward).__globals__     # the globals its forward calls through
        except (TypeError, AttributeError):
            continue
        for n in names:
            f = g.get(n)
            if callable(f) and inspect.unwrap(f) is not f and not any(s[0] is g and s[1] == n for s in saved):
                saved.append((g, n, f))
                g[n] = inspect.unwrap(f)
    try:
        yield
    finally:
        for g, n, f in saved:
            g[n] = f


def token_stream(docs, tok) -> np.ndarray:
    ids = []
    for d in docs:
        ids += [tok.bos_token_id] + tok(d.text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return np.asarray(ids, np.int64)


@torch.no_grad()
def stream_eval(model, stream: np.ndarray, seq_len: int, n_windows: int, batch: int, device) -> tuple[float, float]:
    """(mean next-token loss in nats, top-1 next-token accuracy) over the first ``n_windows``
    non-overlapping windows of ``stream``."""
    starts = list(range(0, max(len(stream) - seq_len, 0) + 1, seq_len))[:n_windows]
    if not starts or len(stream) < 2:
        raise InterpError(f"the validation text has {len(stream)} tokens; too little for one window")
    tot = right = n = 0.0
    for i in range(0, len(starts), batch):
        x = torch.from_numpy(np.stack([stream[s:s + seq_len] for s in starts[i:i + batch]])).to(device)
        logits = model(input_ids=x, use_cache=False).logits[:, :-1].float()
        y = x[:, 1:]
        tot += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum"))
        right += float((logits.argmax(-1) == y).sum())
        n += y.numel()
    return tot / n, right / n


def stream_loss(model, stream: np.ndarray, seq_len: int, n_windows: int, batch: int, device) -> float:
    """Mean next-token loss (nats) over the first ``n_windows`` non-overlapping windows of ``stream``."""
    return stream_eval(model, stream, seq_len, n_windows, batch, device)[0]


def run_name(arch: str, lr: float) -> str:
    return f"{arch}_lr{lr:g}"


def _lr_at(s: int, lr: float, warmup: int, steps: int) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine from ``lr`` down to 0.1 ``lr``."""
    if s < warmup:
        return lr * (s + 1) / warmup
    p = (s - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))


def n_steps(P: dict, n_tokens: int) -> int:
    """Training steps: ``P["steps"]`` if set (e.g. ``--steps``), else ``P["passes"]`` passes over the
    ``n_tokens`` training tokens in windows of ``seq_len`` (``batch`` windows a step)."""
    if P.get("steps"):
        return int(P["steps"])
    return max(1, round(P["passes"] * window_count(n_tokens, P["seq_len"]) / P["batch"]))


def passes(P: dict, steps: int, n_tokens: int) -> float:
    """How many passes over the training text ``steps`` steps make (windows drawn without replacement)."""
    return steps * P["batch"] / window_count(n_tokens, P["seq_len"])


def window_count(n_tokens: int, seq_len: int) -> int:
    """How many non-overlapping training windows of ``seq_len`` tokens the text holds (at least 1)."""
    return max(1, (n_tokens - 1) // seq_len)


def batch_starts(step: int, batch: int, n_tokens: int, seq_len: int, seed: int) -> np.ndarray:
    """Start offsets of step ``step``'s windows: the text cut into non-overlapping windows of ``seq_len``,
    read in a seeded random order, every window once per pass before any repeats (pass k: the
    permutation seeded by (seed, k)); the same seed gives every arm the same batches."""
    n = window_count(n_tokens, seq_len)
    idx = step * batch + np.arange(batch)
    out = np.empty(batch, np.int64)
    for k in np.unique(idx // n):
        perm = np.random.default_rng([seed, int(k)]).permutation(n)
        sel = idx // n == k
        out[sel] = perm[idx[sel] % n]
    return out * seq_len


def _save(ck: Path, model, opt, st: dict):
    state = dict(model=model.state_dict(), opt=opt.state_dict(), step=st["step"], log=st["log"],
                 t_train=st["t_train"], tokens=st["tokens"], evals=st["evals"])
    atomic_save(ck, lambda tmp: torch.save(state, tmp))


def _start(cfg, lr: float, ck: Path, ctx: Ctx, name: str):
    """A freshly seeded model and its AdamW, resumed from the checkpoint ``ck`` if there is one;
    returns (model, optimizer, state: step, log, t_train, tokens, evals)."""
    from transformers import AutoModelForCausalLM
    torch.manual_seed(ctx.seed)
    dev = torch.device(ctx.device)
    model = AutoModelForCausalLM.from_config(cfg).float().to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    st = dict(step=0, log=[], t_train=0.0, tokens=0, evals=[])
    if ck.is_file():
        saved = load_trainer_state(ck, map_location=dev)   # tensors and plain data only: no code in it runs
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        st = {k: saved.get(k, []) for k in st}
        print(f"{name}: resuming at step {st['step']}", file=sys.stderr)
    return model, opt, st


def _checkpoint_eval(model, stream, val_stream, P: dict, dev) -> tuple[float, float]:
    """(loss on the first ``ckpt_windows`` windows of the training text, loss on as many validation windows)."""
    model.eval()
    n = P.get("ckpt_windows", 16)
    out = (stream_loss(model, stream, P["seq_len"], n, P["eval_batch"], dev),
           stream_loss(model, val_stream, P["seq_len"], n, P["eval_batch"], dev))
    model.train()
    return out


def _train_steps(model, opt, st: dict, lr: float, data: tuple, ck: Path, ctx: Ctx, P: dict, name: str) -> bool:
    """The training loop from ``st["step"]`` to its ``steps`` on windows of the training text (`batch_starts`,
    seeded by the training seed), with the train / validation loss every tenth of the run (``st["evals"]``);
    True once done, False if the time budget ran out (then the checkpoint is saved)."""
    stream, val_stream = data
    dev = torch.device(ctx.device)
    T, B, steps = P["seq_len"], P["batch"], n_steps(P, len(stream))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu",
                                                                                                      enabled=False)
    every = max(1, steps // 10)
    from tqdm.auto import tqdm
    model.train()
    bar = tqdm(range(st["step"], steps), initial=st["step"], total=steps, desc=f"train {name}",
               disable=not ctx.progress, dynamic_ncols=True)
    for step in bar:
        starts = batch_starts(step, B, len(stream), T, ctx.seed)
        x = torch.from_numpy(np.stack([stream[s:s + T] for s in starts])).to(dev)
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, lr, P["warmup"], steps)
        t0 = time.time()
        with autocast:
            loss = model(input_ids=x, labels=x, use_cache=False).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        st["t_train"] += time.time() - t0
        st["tokens"] += x.numel()
        if step % 10 == 0 or step + 1 == steps:
            st["log"].append((step + 1, float(loss.item())))
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % every == 0 or step + 1 == steps:
            with autocast:
                st["evals"].append((step + 1, *_checkpoint_eval(model, stream, val_stream, P, dev)))
            if step + 1 < steps:
                _save(ck, model, opt, {**st, "step": step + 1})
                atomic_write_json(ck.parent / "meta.json", {"steps_done": step + 1, "steps": steps})
        if step + 1 < steps and ctx.out_of_time(reserve_s=P.get("reserve_s", 60)):
            _save(ck, model, opt, {**st, "step": step + 1})
            atomic_write_json(ck.parent / "meta.json", {"steps_done": step + 1, "steps": steps})
            print(f"{name}: time budget reached at step {step + 1}/{steps}; checkpoint saved, run the same "
                  "command again to continue", file=sys.stderr)
            return False
    return True


def train_hf(arch: str, cfg, lr: float, stream: np.ndarray, val_stream: np.ndarray, tok, ctx: Ctx,
             P: dict, out: Path | None = None) -> dict | None:
    """Train (or resume) one run (architecture ``arch`` at learning rate ``lr``, training seed ``ctx.seed``:
    its initialisation and its batches) into ``out`` (default ``<runs>/models/<arch>_lr<lr>``). A checkpoint
    and the train / validation loss are written every tenth of the run and when the time budget runs out.
    Returns the meta dict (with the final validation loss and next-token accuracy on ``val_stream``) once
    finished (``steps_done`` = ``steps``), None if the time ran out."""
    out = Path(out or ctx.runs / "models" / run_name(arch, lr))
    done = out / "meta.json"
    if done.is_file():
        meta = json.loads(done.read_text())
        if meta.get("steps_done", 0) >= meta.get("steps", 1) and "val_loss" in meta:
            return meta
    out.mkdir(parents=True, exist_ok=True)
    ck = out / "trainer.pt"
    model, opt, st = _start(cfg, lr, ck, ctx, out.name)
    T, B = P["seq_len"], P["batch"]
    if len(stream) <= T + 1:
        raise InterpError(f"the training corpus has {len(stream)} tokens, fewer than seq_len {T}; give more text")
    steps = n_steps(P, len(stream))
    with reference_kernels(model):
        if not _train_steps(model, opt, st, lr, (stream, val_stream), ck, ctx, P, out.name):
            return None
        model.eval()
        val, acc = stream_eval(model, val_stream, T, P["val_windows"], P["eval_batch"], torch.device(ctx.device))
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    log = st["log"]
    meta = dict(name=out.name, arch=arch, seed=ctx.seed, model_type=cfg.model_type,
                params=sum(p.numel() for p in model.parameters()), steps=steps, steps_done=steps, batch=B, seq_len=T,
                lr=lr, log=log, evals=st["evals"], train_s=st["t_train"], train_tokens=len(stream),
                tokens_seen=st["tokens"], passes=passes(P, steps, len(stream)),
                tokens_per_s=st["tokens"] / max(st["t_train"], 1e-9),
                final_loss=float(np.mean([v for _, v in log[-5:]])), val_loss=val, val_acc=acc,
                layer_types=list(cfg.layer_types), sliding_window=getattr(cfg, "sliding_window", None))
    atomic_write_json(done, meta)      # the run's completion mark: written last, whole or not at all
    if ck.is_file():
        ck.unlink()
    return meta


# --- the arms' runs, as `interp.experiment.sweep_and_seeds` takes them ----------------------------

@dataclass
class TextCfg:
    """A text run's training settings: its transformers config and its number of steps."""
    hf: object
    steps: int


@dataclass
class TextRun:
    """One (arm, training seed, learning rate) of the text models, at ``<root>/models/<name>``; `status`
    (`interp.experiment.runs`) reads it like a zoo run (``meta.json``'s ``steps_done``)."""
    unit: str
    lr: float
    seed: int
    cfg: TextCfg
    root: Path

    @property
    def arm(self) -> str:
        return self.unit

    @property
    def name(self) -> str:
        return f"{self.unit}_s{self.seed}_lr{self.lr:g}"

    @property
    def out(self) -> Path:
        return Path(self.root) / "models" / self.name


@dataclass
class TextData:
    """What every text run trains and validates on: token streams and the tokenizer's folder."""
    stream: np.ndarray
    val_stream: np.ndarray
    tok_dir: Path


def _train_run(run: TextRun, data: TextData, ctx: Ctx, P: dict, tok=None) -> bool:
    import dataclasses
    from transformers import PreTrainedTokenizerFast
    tok = tok or PreTrainedTokenizerFast.from_pretrained(str(data.tok_dir))
    c = dataclasses.replace(ctx, seed=run.seed)
    return train_hf(run.unit, run.cfg.hf, run.lr, data.stream, data.val_stream, tok, c, P, out=run.out) is not None


def _text_worker(run: TextRun, data: TextData, ctx: Ctx, P: dict, device: str) -> bool:
    """Worker process: `train_hf` for one run on ``device``, its output appended to ``<run>/train.out``."""
    import contextlib
    import dataclasses
    if device.startswith("cuda:"):
        torch.cuda.set_device(device)
    torch.set_num_threads(1)
    ctx = dataclasses.replace(ctx, device=device, progress=False)
    run.out.mkdir(parents=True, exist_ok=True)
    with open(run.out / "train.out", "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        return _train_run(run, data, ctx, P)


def train_text_runs(runs: list, data: TextData, ctx: Ctx, P: dict, deadline=None, progress: bool = True,
                    devices=None, **_) -> pd.DataFrame:
    """`interp.experiment.train_runs` for text runs: train every unfinished run until done or until
    ``deadline`` (one after the other here, or ``P["pair_workers"]`` at once in spawned processes spread
    round-robin over ``devices``: a run's batches and seed do not depend on where it trains). Returns the
    status table (`status` per run, ``trained_now``, ``error``: a worker's failure; here a failure raises)."""
    import dataclasses
    from interp.experiment.runs import status
    c = dataclasses.replace(ctx, deadline=deadline, progress=progress)
    todo = [r for r in runs if not status(r)["complete"]]
    workers = min(P.get("pair_workers", 1), len(todo))
    result = {}
    if workers <= 1:
        for r in todo:
            if c.out_of_time(reserve_s=P.get("reserve_s", 60)):
                break
            result[r.name] = "ran" if _train_run(r, data, c, P) else "stopped"
    else:
        from interp.workers import spawn_pool
        devs = devices or [ctx.device]
        with spawn_pool(workers) as ex:   # (its workers stop with this process: interrupted or killed)
            futs = {ex.submit(_text_worker, r, data, c, P, devs[i % len(devs)]): r for i, r in enumerate(todo)}
            for f in cf.as_completed(futs):
                try:
                    result[futs[f].name] = "ran" if f.result() else "stopped"
                except Exception as e:  # noqa: BLE001 - one failed run (e.g. out of memory) must not stop the others
                    result[futs[f].name] = f"failed: {type(e).__name__}: {e}"
                    print(f"run {futs[f].name} failed: {e} (see its train.out)", file=sys.stderr)
    return pd.DataFrame([{**status(r), "trained_now": result.get(r.name) == "ran",
                          "error": result.get(r.name, "") if result.get(r.name, "").startswith("failed") else ""}
                         for r in runs])


def checkpoint_fingerprint(*dirs) -> str:
    """A short hash of checkpoint directories (resolved paths, file names, sizes, mtimes): the
    cached per-token losses of a changed checkpoint are not reused."""
    h = hashlib.sha1()
    for d in dirs:
        p = Path(d).resolve()
        h.update(str(p).encode())
        for f in sorted(x for x in p.iterdir() if x.is_file()):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:10]
