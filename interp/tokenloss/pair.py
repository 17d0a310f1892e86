"""The model pair of the token-loss comparison, trained from scratch: a byte-level BPE tokenizer, an
Olmo-3-style transformer and an Olmo-Hybrid-style GDN hybrid matched in parameter count, trained
(resumably, optionally in worker processes) on the same windows; their training curves, and the
fingerprint of given checkpoints.

A run is ``<runs>/models/<arch>_lr<lr>/``: the HF checkpoint with its tokenizer and ``meta.json``
(written last: the run's completion mark), ``trainer.pt`` while it is unfinished.
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
from pathlib import Path

import numpy as np
import torch

from interp import InterpError
from interp.experiment.context import Ctx
from interp.experiment.report import pyplot, save_figure
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


def pair_configs(vocab_size: int, M: dict, max_len: int) -> dict:
    """Olmo-3-style transformer and Olmo-Hybrid-style GDN hybrid (attention every 4th layer, last
    layer attention), the transformer's MLP width chosen to match the hybrid's parameter count."""
    from transformers import AutoConfig, AutoModelForCausalLM
    L = M["layers"]
    common = dict(vocab_size=vocab_size, hidden_size=M["d"], num_hidden_layers=L, num_attention_heads=M["heads"],
                  num_key_value_heads=M["heads"], pad_token_id=0, bos_token_id=1, eos_token_id=2,
                  tie_word_embeddings=True, max_position_embeddings=max(max_len, 64))
    kinds = ["full_attention" if (L - 1 - i) % 4 == 0 else "linear_attention" for i in range(L)]
    hyb = AutoConfig.for_model("olmo_hybrid", **common, intermediate_size=3 * M["d"], layer_types=kinds,
                               linear_num_key_heads=M["heads"], linear_num_value_heads=M["heads"],
                               linear_key_head_dim=M["head_dim"], linear_value_head_dim=M["head_dim"])

    def n_params(cfg):
        with torch.device("meta"):
            return sum(p.numel() for p in AutoModelForCausalLM.from_config(cfg).parameters())
    target = n_params(hyb)

    def tf(inter):
        return AutoConfig.for_model("olmo3", **common, intermediate_size=inter, layer_types=["full_attention"] * L)
    n1, n2 = n_params(tf(1)), n_params(tf(2))
    inter = max(1, round(1 + (target - n1) / (n2 - n1)))
    return {"olmo3": tf(inter), "olmo_hybrid": hyb}


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
def stream_loss(model, stream: np.ndarray, seq_len: int, n_windows: int, batch: int, device) -> float:
    """Mean next-token loss (nats) over the first ``n_windows`` non-overlapping windows of ``stream``."""
    from interp.tokenloss.losses import token_nll
    starts = list(range(0, max(len(stream) - seq_len, 0) + 1, seq_len))[:n_windows]
    if not starts or len(stream) < 2:
        raise InterpError(f"the validation text has {len(stream)} tokens; too little for one window")
    tot = n = 0.0
    for i in range(0, len(starts), batch):
        x = torch.from_numpy(np.stack([stream[s:s + seq_len] for s in starts[i:i + batch]])).to(device)
        nll = token_nll(model, x)
        tot += float(nll.sum())
        n += nll.numel()
    return tot / n


def run_name(arch: str, lr: float) -> str:
    return f"{arch}_lr{lr:g}"


def _lr_at(s: int, lr: float, warmup: int, steps: int) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine from ``lr`` down to 0.1 ``lr``."""
    if s < warmup:
        return lr * (s + 1) / warmup
    p = (s - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))


def _save(ck: Path, model, opt, st: dict):
    state = dict(model=model.state_dict(), opt=opt.state_dict(), step=st["step"], log=st["log"],
                 t_train=st["t_train"], tokens=st["tokens"])
    atomic_save(ck, lambda tmp: torch.save(state, tmp))


def _start(cfg, lr: float, ck: Path, ctx: Ctx, name: str):
    """A freshly seeded model and its AdamW, resumed from the checkpoint ``ck`` if there is one;
    returns (model, optimizer, state: step, log, t_train, tokens)."""
    from transformers import AutoModelForCausalLM
    torch.manual_seed(ctx.seed)
    dev = torch.device(ctx.device)
    model = AutoModelForCausalLM.from_config(cfg).float().to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    st = dict(step=0, log=[], t_train=0.0, tokens=0)
    if ck.is_file():
        saved = load_trainer_state(ck, map_location=dev)   # tensors and plain data only: no code in it runs
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        st = dict(step=saved["step"], log=saved["log"], t_train=saved["t_train"], tokens=saved["tokens"])
        print(f"{name}: resuming at step {st['step']}", file=sys.stderr)
    return model, opt, st


def _train_steps(model, opt, st: dict, lr: float, stream: np.ndarray, ck: Path, ctx: Ctx, P: dict,
                 name: str) -> bool:
    """The training loop from ``st["step"]`` to ``P["steps"]`` on random windows of ``stream``
    (seeded by step), updating ``st``; True once done, False if the time budget ran out (then the
    checkpoint is saved)."""
    dev = torch.device(ctx.device)
    T, B, steps = P["seq_len"], P["batch"], P["steps"]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu",
                                                                                                      enabled=False)
    every = max(10, steps // 10)
    from tqdm.auto import tqdm
    model.train()
    bar = tqdm(range(st["step"], steps), initial=st["step"], total=steps, desc=f"train {name}",
               disable=not ctx.progress, dynamic_ncols=True)
    for step in bar:
        rng = np.random.default_rng([ctx.seed, step])
        starts = rng.integers(0, len(stream) - T, size=B)
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
        if step + 1 < steps and ctx.out_of_time(reserve_s=P.get("reserve_s", 60)):
            _save(ck, model, opt, {**st, "step": step + 1})
            print(f"{name}: time budget reached at step {step + 1}/{steps}; checkpoint saved, run the same "
                  "command again to continue", file=sys.stderr)
            return False
        if (step + 1) % every == 0 and step + 1 < steps:
            _save(ck, model, opt, {**st, "step": step + 1})
    return True


def train_hf(arch: str, cfg, lr: float, stream: np.ndarray, val_stream: np.ndarray, tok, ctx: Ctx,
             P: dict) -> dict | None:
    """Train (or resume) one run (architecture ``arch`` at learning rate ``lr``) on random windows of
    ``stream``; every run sees the same windows (seeded by step). A checkpoint is written every
    ``steps // 10`` steps and when the time budget runs out. Returns the meta dict (with the
    validation loss on ``val_stream``) once finished, None if the time ran out."""
    name = run_name(arch, lr)
    out = ctx.runs / "models" / name
    done = out / "meta.json"
    if done.is_file():
        return json.loads(done.read_text())
    out.mkdir(parents=True, exist_ok=True)
    ck = out / "trainer.pt"
    model, opt, st = _start(cfg, lr, ck, ctx, name)
    T, B, steps = P["seq_len"], P["batch"], P["steps"]
    if len(stream) <= T + 1:
        raise InterpError(f"the training corpus has {len(stream)} tokens, fewer than seq_len {T}; give more text")
    with reference_kernels(model):
        if not _train_steps(model, opt, st, lr, stream, ck, ctx, P, name):
            return None
        model.eval()
        val = stream_loss(model, val_stream, T, P["val_windows"], P["eval_batch"], torch.device(ctx.device))
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    log = st["log"]
    meta = dict(name=name, arch=arch, model_type=cfg.model_type, params=sum(p.numel() for p in model.parameters()),
                steps=steps, batch=B, seq_len=T, lr=lr, log=log, train_s=st["t_train"], train_tokens=len(stream),
                tokens_per_s=st["tokens"] / max(st["t_train"], 1e-9),
                final_loss=float(np.mean([v for _, v in log[-5:]])), val_loss=val, layer_types=list(cfg.layer_types))
    atomic_write_json(done, meta)      # the run's completion mark: written last, whole or not at all
    if ck.is_file():
        ck.unlink()
    return meta


def _pair_worker(arch: str, cfg, lr: float, stream, val_stream, ctx: Ctx, P: dict, device: str) -> bool:
    """Worker process: `train_hf` for one pair run on ``device``, its output appended to
    ``<runs>/models/<run>/train.out``. True once the run is finished, False if the time ran out."""
    import contextlib
    import dataclasses
    from transformers import PreTrainedTokenizerFast
    if device.startswith("cuda:"):
        torch.cuda.set_device(device)
    torch.set_num_threads(1)
    ctx = dataclasses.replace(ctx, device=device, progress=False)
    tok = PreTrainedTokenizerFast.from_pretrained(str(ctx.runs / "tokenizer"))
    out = ctx.runs / "models" / run_name(arch, lr)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "train.out", "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        return train_hf(arch, cfg, lr, stream, val_stream, tok, ctx, P) is not None


def train_pair(cfgs: dict, stream, val_stream, tok, ctx: Ctx, P: dict) -> list | None:
    """Train (or resume) the pair's runs, every architecture at every learning rate; returns their
    metas, or None if the time budget ran out first. With ``P["pair_workers"]`` > 1 the runs train
    at once in that many spawned processes, spread round-robin over ``--train-devices`` (a small
    model leaves most of a GPU idle; a run's batches and seed do not depend on where it trains)."""
    jobs = [(arch, cfg, lr) for arch, cfg in cfgs.items() for lr in P["lrs"]]
    workers = min(P.get("pair_workers", 1), len(jobs))
    if workers <= 1:
        metas = []
        for arch, cfg, lr in jobs:
            meta = train_hf(arch, cfg, lr, stream, val_stream, tok, ctx, P)
            if meta is None:
                return None
            metas.append(meta)
        return metas
    import multiprocessing as mp
    devs = ctx.train_devices or [ctx.device]
    with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
        futs = [ex.submit(_pair_worker, arch, cfg, lr, stream, val_stream, ctx, P, devs[i % len(devs)])
                for i, (arch, cfg, lr) in enumerate(jobs)]
        finished = [f.result() for f in futs]
    if not all(finished):
        print("time budget reached before the pair finished; checkpoints saved, run the same command again to "
              "continue", file=sys.stderr)
        return None
    return [json.loads((ctx.runs / "models" / run_name(arch, lr) / "meta.json").read_text()) for arch, _, lr in jobs]


def plot_training(metas: list[dict], path):
    """The pair's training-loss curves (solid: the run analysed per architecture)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    arches = list(dict.fromkeys(m["arch"] for m in metas))
    for m in metas:
        s, v = zip(*m["log"])
        ax.plot(s, v, color=f"C{arches.index(m['arch'])}", ls="-" if m.get("best") else ":", lw=1.2,
                label=f"{m['name']} ({m['params'] / 1e6:.2f}M){' best' if m.get('best') else ''}")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


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
