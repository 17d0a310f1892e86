"""Per-token losses: of two causal LMs that share a tokenizer on a corpus, in overlapping context
windows, with each token's features (`compare`, returning a `TokenLosses` frame), and of zoo models
on the synthetic tasks per token role (`task_losses`)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from interp import InterpError
from interp.tokenloss.corpus import Document
from interp.tokenloss.features import copy_features, token_features
from interp.tokenloss.plot import plot_summary
from interp.tokenloss.summary import stratify
from interp.tokenloss.tagging import annotate
from interp.tokenloss.tokenizer import encode

def _logits(model, ids):
    from interp.zoo import HybridLM
    if isinstance(model, HybridLM):
        return model(ids)
    return model(input_ids=ids, use_cache=False).logits


@torch.no_grad()
def token_nll(model, ids: torch.Tensor) -> torch.Tensor:
    """[B, T] ids -> [B, T-1] -log p(ids[:, t+1] | ids[:, :t+1]) in float32."""
    dev = next(model.parameters()).device
    ids = ids.to(dev)
    logits = _logits(model, ids)[:, :-1].float()
    return F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="none").view(ids.shape[0], -1).cpu()


def windows(n: int, seq_len: int, stride: int) -> list[tuple[int, int, int]]:
    """Sliding windows over n tokens: (begin, end, first scored target); targets in
    [first, end) are scored in this window (position 0 is never a target)."""
    out, prev_end, begin = [], 1, 0
    while True:
        end = min(begin + seq_len, n)
        if end > prev_end:
            out.append((begin, end, prev_end))
        prev_end = max(prev_end, end)
        if end >= n:
            return out
        begin += stride


# --- the comparison -----------------------------------------------------------------------------

class TokenLosses(pd.DataFrame):
    """One row per scored token: doc_id, domain, window, pos, token (its text), token_id, ctx (context
    tokens it sees), tag, piece, copy_len, copy_dist, prev_dist, delim, delim_span, loss_a, loss_b,
    diff (= loss_a - loss_b, > 0 where model B predicts the token better). ``attrs['models']`` =
    [name_a, name_b]. `stratify` and `plot` summarise it."""

    _metadata = []

    @property
    def _constructor(self):
        return TokenLosses

    @property
    def names(self) -> list[str]:
        return list(self.attrs.get("models", ["A", "B"]))

    def stratify(self, facets=None, n_boot: int = 1000, seed: int = 0, min_n: int = 1) -> pd.DataFrame:
        """Mean loss of each model and mean difference per (facet, category, domain), domain 'all'
        included, with 95% cluster-bootstrap intervals (clusters: context windows)."""
        return stratify(self, facets=facets, n_boot=n_boot, seed=seed, min_n=min_n)

    def plot(self, path=None, summary=None, title=None, value: str = "diff"):  # noqa: D102 - on the class
        return plot_summary(self.stratify() if summary is None else summary, self.names, path, title, value)


def _doc_windows(doc: Document, tokenizer, seq_len: int, stride: int, max_tokens: int | None):
    """(ids with BOS, offsets with BOS, features, windows) of one document."""
    ids, offs = encode(tokenizer, doc.text)
    if max_tokens:
        ids, offs = ids[:max_tokens], offs[:max_tokens]
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None:
        ids = np.concatenate([[bos], ids])
        offs = np.concatenate([[[0, 0]], offs])
    feats = token_features(annotate(doc.text, doc.domain, doc.path), offs)
    return ids, offs, feats, windows(len(ids), seq_len, stride)


def compare(models: dict, tokenizer, docs: list[Document], seq_len: int = 512, stride: int | None = None,
            batch_size: int = 8, out=None, progress: bool = True, max_tokens_per_doc: int | None = None,
            unit_windows: int = 64) -> TokenLosses:
    """Per-token losses of the two ``models`` ({name_a: model_a, name_b: model_b}, same tokenizer)
    on ``docs``. ``out``: a directory for finished units (groups of documents, parquet), so an
    interrupted call resumes; the same arguments must be given again."""
    if len(models) != 2:
        raise InterpError(f"compare takes exactly two models, got {len(models)}: {list(models)}")
    stride = stride or max(1, seq_len // 2)
    if not 1 <= stride <= seq_len:
        raise InterpError(f"stride {stride} is out of range; valid: 1..seq_len ({seq_len})")
    if seq_len < 2:
        raise InterpError(f"seq_len {seq_len} is out of range; valid: >= 2")
    (na, ma), (nb, mb) = models.items()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    # units: consecutive documents holding about unit_windows windows
    units, cur, nw = [], [], 0
    prepared = {}
    for d in docs:
        prepared[d.doc_id] = None
        cur.append(d)
        nw += max(1, (len(d.text) // 3) // stride)
        if nw >= unit_windows:
            units.append(cur)
            cur, nw = [], 0
    if cur:
        units.append(cur)
    spec = json.dumps([na, nb, seq_len, stride, max_tokens_per_doc, len(tokenizer)])
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm
    frames = []
    for ui, unit in enumerate(tqdm(units, desc=f"token losses {na} vs {nb}", disable=not progress,
                                   dynamic_ncols=True)):
        key = hashlib.sha1((spec + "".join(d.doc_id + hashlib.sha1(d.text.encode()).hexdigest()
                                           for d in unit)).encode()).hexdigest()[:12]
        f = out / f"unit{ui:05d}_{key}.parquet" if out is not None else None
        if f is not None and f.is_file():
            frames.append(pd.read_parquet(f))
            continue
        frames.append(_unit(unit, tokenizer, ma, mb, seq_len, stride, batch_size, pad, max_tokens_per_doc))
        if f is not None:
            tmp = f.with_suffix(".tmp")
            frames[-1].to_parquet(tmp, index=False)
            tmp.rename(f)
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    res = TokenLosses(df)
    res.attrs["models"] = [na, nb]
    res.attrs["seq_len"], res.attrs["stride"] = seq_len, stride
    return res


def _unit(unit, tokenizer, ma, mb, seq_len, stride, batch_size, pad, max_tokens):
    jobs = []   # (doc, ids, offs, feats, window index, begin, end, first)
    for d in unit:
        ids, offs, feats, wins = _doc_windows(d, tokenizer, seq_len, stride, max_tokens)
        for w, (b, e, first) in enumerate(wins):
            jobs.append((d, ids, offs, feats, w, b, e, first))
    cols: dict = {k: [] for k in ("doc_id", "domain", "window", "pos", "token", "token_id", "ctx", "tag", "piece",
                                  "copy_len", "copy_dist", "prev_dist", "delim", "delim_span", "loss_a", "loss_b")}
    for s in range(0, len(jobs), batch_size):
        chunk = jobs[s:s + batch_size]
        L = max(e - b for _, _, _, _, _, b, e, _ in chunk)
        x = torch.full((len(chunk), L), pad, dtype=torch.long)
        for i, (_, ids, _, _, _, b, e, _) in enumerate(chunk):
            x[i, :e - b] = torch.from_numpy(ids[b:e])
        la, lb = token_nll(ma, x).numpy(), token_nll(mb, x).numpy()
        for i, (d, ids, offs, feats, w, b, e, first) in enumerate(chunk):
            cf = copy_features(ids[b:e])
            t = np.arange(first, e)           # doc positions scored here
            loc = t - b                       # window positions
            n = len(t)
            cols["doc_id"].append(np.full(n, d.doc_id, dtype=object))
            cols["domain"].append(np.full(n, d.domain, dtype=object))
            cols["window"].append(np.full(n, w))
            cols["pos"].append(t)
            cols["token"].append(np.array([d.text[o0:o1] for o0, o1 in offs[t]], dtype=object))
            cols["token_id"].append(ids[t])
            cols["ctx"].append(loc)
            for k in ("tag", "piece", "delim", "delim_span"):
                cols[k].append(feats[k][t])
            for k in ("copy_len", "copy_dist", "prev_dist"):
                cols[k].append(cf[k][loc])
            cols["loss_a"].append(la[i, loc - 1])
            cols["loss_b"].append(lb[i, loc - 1])
    if not jobs:
        return pd.DataFrame(columns=list(cols) + ["diff"])
    df = pd.DataFrame({k: np.concatenate(v) for k, v in cols.items()})
    df["diff"] = df["loss_a"] - df["loss_b"]
    return df


# --- synthetic probes ----------------------------------------------------------------------------

PROBE_TASKS = ("pronoun", "entity_tracking", "brackets")


@torch.no_grad()
def task_losses(models: dict, task: str, n: int = 128, seed: int = 123, knobs=None, grid=None,
                progress: bool = False) -> pd.DataFrame:
    """Per-token losses of zoo ``models`` on a synthetic task, one knob moved at a time over its
    difficulty grid (or ``grid`` {knob: values}; ``knobs`` restricts which). Rows: model, task,
    knob, value, example, position, role, loss, cand_loss, correct. Roles: ``answer`` (the
    supervised answer) and, for brackets, ``close`` (every in-sequence position whose next token
    is a closing bracket). ``cand_loss`` renormalises over the role's candidates only (colours,
    boxes, closing brackets), so it measures the choice among them; ``correct``: argmax over the
    candidates is right."""
    from interp import tasks as T
    from interp.tasks.vocab import BOXES, CLOSE, COLORS, VOCAB
    cands = {"pronoun": COLORS, "entity_tracking": BOXES, "brackets": CLOSE}
    if task not in cands:
        raise InterpError(f"task '{task}' has no probe roles; valid: {', '.join(cands)}")
    cand = torch.tensor(VOCAB.encode(list(cands[task])))
    close_ids = torch.tensor(VOCAB.encode(list(CLOSE)))
    full = grid or T.difficulty_grid(task)
    if knobs:
        bad = [k for k in knobs if k not in full]
        if bad:
            raise InterpError(f"unknown knob '{bad[0]}' for task '{task}'; valid knobs: {', '.join(full)}")
        full = {k: full[k] for k in knobs}
    jobs = [(k, v) for k, vs in full.items() for v in vs]
    from tqdm.auto import tqdm
    rows = []
    for knob, v in tqdm(jobs, desc=f"probe {task}", disable=not progress, dynamic_ncols=True):
        b = T.generate(task, n, seed=seed, **{knob: v})
        tok = b.tokens
        tgt = tok[:, 1:]
        ex_a, pos_a = (b.answer_pos >= 0).nonzero(as_tuple=True)
        ans = (ex_a, b.answer_pos[ex_a, pos_a])
        roles = [("answer", ans)]
        if task == "brackets":
            m = torch.isin(tgt, close_ids)
            m[ans] = False
            roles.append(("close", m.nonzero(as_tuple=True)))
        for name, model in models.items():
            logits = _logits(model, tok.to(model.device)).float().cpu()[:, :-1]
            logp = logits.log_softmax(-1)
            for role, (ei, pi) in roles:
                y = tgt[ei, pi]
                lp = logp[ei, pi]
                cl = lp[:, cand].log_softmax(-1)
                yi = (cand[None, :] == y[:, None]).float().argmax(-1)
                rows.append(pd.DataFrame({
                    "model": name, "task": task, "knob": knob, "value": str(v), "example": ei.numpy(),
                    "position": pi.numpy(), "role": role, "loss": (-lp.gather(1, y[:, None])[:, 0]).numpy(),
                    "cand_loss": (-cl.gather(1, yi[:, None])[:, 0]).numpy(),
                    "correct": (cl.argmax(-1) == yi).numpy()}))
    return pd.concat(rows, ignore_index=True)
