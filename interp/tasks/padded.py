"""Padded batches of tasks: clean/corrupted pairs (`pairs_from_ids`, `pad_pairs`) or task batches
(`pad_batches`) of different lengths in one batch, padded on the left or the right with an attention mask
(1: a real token), and where each row's real tokens lie (`real_span`).

A padded batch runs as each of its prompts alone (`hooks`: ``attention_mask=``). Its ``answer_pos``,
``diff_pos`` and labels index the padded rows (what the model sees); patching and attribution patching
(`interp.patching`), interventions (`interp.interventions`) and the SAE interchange test count positions per
row from its first real token (`pair_span`, `to_real`), and probes read real tokens only (labels are -1 at
pads). The two prompts of a clean/corrupted pair must have the same length: patching writes position p of one
prompt into position p of the other, so a pair of two lengths is refused (pairs may differ in length from each
other)."""
from __future__ import annotations

import torch

from interp import InterpError
from interp.tasks.base import PairBatch, TaskBatch
from interp.tasks.vocab import PAD

SIDES = ("left", "right")


def check_side(side: str) -> str:
    if side not in SIDES:
        raise InterpError(f"side '{side}' is not valid; valid: {', '.join(SIDES)}")
    return side


def real_span(mask) -> tuple[torch.Tensor, torch.Tensor]:
    """(first real index [N], number of real tokens [N]) of each row of a padding mask [N, T] (1: a real
    token). A row's real tokens must be one run (left or right padding); a row without any is refused."""
    m = torch.as_tensor(mask)
    if m.dim() != 2 or not bool(((m == 0) | (m == 1)).all()):
        raise InterpError(f"attention_mask must be [N, T] of 0 (padding) and 1 (a real token), got shape "
                          f"{list(m.shape)}")
    m = m.bool().cpu()
    length = m.sum(1)
    if (length == 0).any():
        raise InterpError(f"row {int((length == 0).nonzero()[0])} of attention_mask has no real token")
    offset = m.long().argmax(1)
    idx = torch.arange(m.shape[1])
    run = (idx >= offset[:, None]) & (idx < (offset + length)[:, None])
    bad = (run != m).any(1)
    if bad.any():
        raise InterpError(f"row {int(bad.nonzero()[0])} of attention_mask is not one run of real tokens; valid: "
                          "left or right padding")
    return offset, length


def check_pairs(pairs, vocab: int | None = None):
    """Refuse a `PairBatch` whose parts do not fit together (an InterpError naming the part and what is valid):
    clean and corrupted [N, T] integer ids of one shape with N, T >= 1; answer_pos, clean_answer and
    corrupted_answer [N] integers; answer positions in 0..T-1; answers in 0..vocab-1 where ``vocab`` is given."""
    if not isinstance(pairs, PairBatch):
        raise InterpError(f"pairs must be an interp.tasks.PairBatch (make_pairs, pairs_from_ids, pad_pairs); "
                          f"got {type(pairs).__name__}")
    c, k = pairs.clean, pairs.corrupted
    for name, t in (("clean", c), ("corrupted", k)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.is_floating_point() or t.dtype == torch.bool \
                or 0 in t.shape:
            got = f"{t.dtype} {list(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise InterpError(f"pairs.{name} is {got}; valid: a non-empty [N, T] tensor of integer token ids")
    if c.shape != k.shape:
        raise InterpError(f"pairs.corrupted has shape {list(k.shape)}, pairs.clean {list(c.shape)}; valid: the same "
                          "(a pair's prompts must be of one length: pad_pairs)")
    N, T = c.shape
    for name in ("answer_pos", "clean_answer", "corrupted_answer"):
        t = getattr(pairs, name)
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (N,) or t.is_floating_point() or t.dtype == torch.bool:
            got = f"{t.dtype} {list(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise InterpError(f"pairs.{name} is {got}; valid: [{N}] integers (one per pair)")
    for name, t, hi in (("answer_pos", pairs.answer_pos, T), ("clean_answer", pairs.clean_answer, vocab),
                        ("corrupted_answer", pairs.corrupted_answer, vocab)):
        bad = ((t < 0) | (t >= hi) if hi else t < 0).nonzero().flatten()
        if len(bad):
            i = int(bad[0])
            valid = f"0..{hi - 1}" + (" (a position of the prompt)" if name == "answer_pos" else " (the vocabulary)")
            raise InterpError(f"pair {i}: {name} {int(t[i])} is not valid; valid: {valid if hi else '>= 0'}")


def pair_span(pairs):
    """(padding mask [N, T] bool or None, (first real index [N], real tokens [N]) or None) of a `PairBatch`, on
    its device: None, None where nothing is padded (no mask, or one without a pad). Its answer positions must
    be real tokens (refused naming the pair otherwise). Used by everything that runs padded pairs (patching,
    attribution, interventions, the SAE interchange test); checks the pairs first (`check_pairs`)."""
    check_pairs(pairs)
    mask = pairs.attention_mask
    if mask is not None and tuple(mask.shape) != tuple(pairs.clean.shape):
        raise InterpError(f"the pairs' attention_mask has shape {list(mask.shape)}, their tokens "
                          f"{list(pairs.clean.shape)}; valid: the same shape")
    if mask is None or bool(torch.as_tensor(mask).bool().all()):
        return None, None
    off, n = real_span(mask)
    ap = pairs.answer_pos.cpu()
    bad = ((ap < off) | (ap >= off + n)).nonzero().flatten()
    if len(bad):
        raise InterpError(f"pair {int(bad[0])}: its answer position {int(ap[bad[0]])} is a pad; valid: a real "
                          f"token, {int(off[bad[0]])}..{int(off[bad[0]] + n[bad[0]] - 1)}")
    dev = pairs.clean.device
    return mask.to(dev).bool(), (off.to(dev), n.to(dev))


def to_real(values, span, fill=float("nan")):
    """Per-row values in the padded layout ``values`` [N, T, ...] -> each row's real tokens from position 0 on
    ([N, T, ...]: position p = the row's p-th real token), ``fill`` where a row has no position p. ``span``:
    (first real index [N], real tokens [N]) (`real_span`)."""
    off, n = (t.to(values.device) for t in span)
    N, T = values.shape[:2]
    p = torch.arange(T, device=values.device)
    real = p[None] < n[:, None]
    idx = torch.where(real, off[:, None] + p[None], 0)
    out = values[torch.arange(N, device=values.device)[:, None], idx]
    return torch.where(real.view(N, T, *[1] * (values.dim() - 2)), out, torch.as_tensor(fill, dtype=out.dtype))


def _ids(x) -> list:
    return [int(t) for t in (x.tolist() if isinstance(x, torch.Tensor) else x)]


def pairs_from_ids(clean, corrupted, clean_answer, corrupted_answer, side: str = "left", pad_id: int = PAD,
                   answer_pos=None, meta: dict | None = None) -> PairBatch:
    """Clean/corrupted prompts as token-id lists (pairs may differ in length from each other) -> one
    `PairBatch` padded on ``side`` with ``pad_id``, its ``attention_mask`` shared by both prompts of a pair
    (None when every pair has one length: nothing is padded). ``clean_answer`` / ``corrupted_answer``: token
    ids [N]; ``answer_pos``: per pair the real-token position whose next token is the answer (default: the
    last token). A pair whose two prompts differ in length is refused, naming it."""
    check_side(side)
    clean, corrupted = [_ids(c) for c in clean], [_ids(x) for x in corrupted]
    ca, xa = _ids(clean_answer), _ids(corrupted_answer)
    n = len(clean)
    if not n or not len(corrupted) == len(ca) == len(xa) == n:
        raise InterpError(f"pairs need as many clean prompts, corrupted prompts, clean answers and corrupted answers "
                          f"(at least one); got {n}, {len(corrupted)}, {len(ca)}, {len(xa)}")
    lens = [len(c) for c in clean]
    for i, (c, x) in enumerate(zip(clean, corrupted)):
        if len(c) != len(x) or not c:
            raise InterpError(f"pair {i}: the clean prompt has {len(c)} tokens and the corrupted one {len(x)}; a "
                              "pair's prompts must have the same length (patching writes position p of one into "
                              "position p of the other): reword one of them; pairs may differ from each other")
    ap = [n_ - 1 for n_ in lens] if answer_pos is None else _ids(answer_pos)
    for i, (p, n_) in enumerate(zip(ap, lens)):
        if not 0 <= p < n_:
            raise InterpError(f"pair {i}: answer position {p} out of range 0..{n_ - 1}")
    from hooks.core import pad_ids
    tc, mask = pad_ids(clean, pad_id, side)
    tx, _ = pad_ids(corrupted, pad_id, side)
    T = tc.shape[1]
    off = torch.tensor([T - n_ if side == "left" else 0 for n_ in lens])
    differs = torch.tensor([next((j for j, (a, b) in enumerate(zip(c, x)) if a != b), 0)
                           for c, x in zip(clean, corrupted)])
    return PairBatch(tc, tx, torch.tensor(ap) + off, torch.tensor(ca), torch.tensor(xa), differs + off,
                     dict(meta or {}), None if bool(mask.all()) else mask)


def pad_pairs(parts, side: str = "left", pad_id: int = PAD) -> PairBatch:
    """`PairBatch` es (e.g. `make_pairs` with knobs that give other lengths; padded ones too) -> one padded
    `PairBatch` (`pairs_from_ids`): each pair's real tokens, answer position and answers kept, in order.
    Its meta: the task (where every part has the same one) and ``parts``, the parts' metas."""
    parts = list(parts)
    if not parts or not all(isinstance(p, PairBatch) for p in parts):
        raise InterpError("pad_pairs takes a non-empty list of PairBatch (interp.tasks.make_pairs)")
    rows = {k: [] for k in ("clean", "corrupted", "ca", "xa", "ap")}
    for p in parts:
        p = p.to("cpu")
        off, lens = real_span(p.attention_mask) if p.attention_mask is not None else (
            torch.zeros(len(p), dtype=torch.long), torch.full((len(p),), p.clean.shape[1]))
        for i in range(len(p)):
            a, b = int(off[i]), int(off[i] + lens[i])
            rows["clean"].append(p.clean[i, a:b])
            rows["corrupted"].append(p.corrupted[i, a:b])
            rows["ap"].append(int(p.answer_pos[i]) - a)
        rows["ca"] += p.clean_answer.tolist()
        rows["xa"] += p.corrupted_answer.tolist()
    tasks = {(p.meta or {}).get("task") for p in parts}
    meta = {**({"task": tasks.pop()} if len(tasks) == 1 else {}), "parts": [dict(p.meta or {}) for p in parts]}
    return pairs_from_ids(rows["clean"], rows["corrupted"], rows["ca"], rows["xa"], side, pad_id, rows["ap"], meta)


def pad_batches(parts, side: str = "left", pad_id: int = PAD) -> TaskBatch:
    """Unpadded `TaskBatch` es of one task (e.g. `generate` with knobs that give other lengths) -> one
    `TaskBatch` padded on ``side`` with its ``attention_mask``: tokens, answer positions, answers, labels
    (-1 at pads; a per-token vector label padded with -1 columns to the widest) and loss mask in place, the
    examples in order. ``meta['parts']``: per part its rows, length, offset in the padded rows and meta
    (probe points are found per part, `interp.probes.points`)."""
    check_side(side)
    parts = [p.to("cpu") for p in parts]
    if not parts or not all(isinstance(p, TaskBatch) for p in parts):
        raise InterpError("pad_batches takes a non-empty list of TaskBatch (interp.tasks.generate)")
    tasks = {p.meta.get("task") for p in parts}
    if len(tasks) != 1:
        raise InterpError(f"pad_batches joins batches of one task; got {', '.join(map(str, sorted(map(str, tasks))))}")
    if any(p.attention_mask is not None for p in parts):
        raise InterpError("pad_batches joins unpadded batches; one of these is padded already (attention_mask set)")
    names = set(parts[0].labels)
    if any(set(p.labels) != names for p in parts):
        raise InterpError(f"the batches have different labels: {[sorted(p.labels) for p in parts]}")
    N, T = sum(len(p) for p in parts), max(p.tokens.shape[1] for p in parts)
    Q = max(p.answer_pos.shape[1] for p in parts)
    tokens = torch.full((N, T), pad_id, dtype=torch.long)
    mask = torch.zeros(N, T, dtype=torch.long)
    ap, ans = torch.full((N, Q), -1, dtype=torch.long), torch.full((N, Q), -1, dtype=torch.long)
    loss = torch.zeros(N, T, dtype=torch.bool)
    labels = {k: torch.full((N, T) + tuple(max(p.labels[k].shape[d] for p in parts)
                                           for d in range(2, parts[0].labels[k].dim())), -1, dtype=torch.long)
              for k in sorted(names)}
    info, a = [], 0
    for p in parts:
        n, Tp = p.tokens.shape
        off = T - Tp if side == "left" else 0
        r, c = slice(a, a + n), slice(off, off + Tp)
        tokens[r, c], mask[r, c], loss[r, c] = p.tokens, 1, p.loss_mask
        q = p.answer_pos.shape[1]
        ap[r, :q] = torch.where(p.answer_pos >= 0, p.answer_pos + off, -1)
        ans[r, :q] = p.answers
        for k, v in p.labels.items():
            labels[k][(r, c) + tuple(slice(0, s) for s in v.shape[2:])] = v
        info.append({"rows": [a, a + n], "length": Tp, "offset": off, "meta": dict(p.meta)})
        a += n
    return TaskBatch(tokens, ap, ans, labels, loss, {"task": tasks.pop(), "side": side, "parts": info},
                     None if bool(mask.all()) else mask)


def part_view(batch: TaskBatch, part: dict) -> TaskBatch:
    """The unpadded rows of one part of a `pad_batches` batch (``batch.meta['parts']``), with that part's
    meta; labels keep the padded batch's columns."""
    (a, b), off, Tp = part["rows"], part["offset"], part["length"]
    c = slice(off, off + Tp)
    return TaskBatch(batch.tokens[a:b, c], torch.where(batch.answer_pos[a:b] >= 0, batch.answer_pos[a:b] - off, -1),
                     batch.answers[a:b], {k: v[a:b, c] for k, v in batch.labels.items()}, batch.loss_mask[a:b, c],
                     dict(part["meta"]))
