"""The window path of a rec.state sweep on a zoo GDN layer: a patch of layer L's state S_p (after token p)
changes only positions >= p, so the layer resumes from the patched state (readout at p, then its scan over
p+1.. from it, on the unchanged run's scan inputs) and the layers after it run on the suffix window
(`HybridLM.forward_window`, from the unchanged run's keys/values and states). Equals the hooked path
(`hooks` continuing the recurrence from a patched ``rec.state``, `hooks.scan.family.Family.continue_from`)."""
from __future__ import annotations

import torch

from hooks.scan.gdn import FAMILY
from interp.patching.run import _answer_metrics
from interp.patching.window import Prefix, _groups, _store
from interp.zoo.gdn import scan_rows

SEQ = ("q", "k", "v", "decay", "beta")
STATE_BYTES = 1 << 30  # per-position states of the base rows computed at once (and as many of the source's)


def state_unit(model, cache, src, cells, layer, ans, batch_size, answers, clean_logp, base_metrics):
    """All cells (position, all heads) of one rec.state unit on a GDN layer: [(ld, prob, kl) [n] per cell],
    in the order of ``cells`` (see `interp.patching.window._window_unit`). The unchanged run's and the
    source's states are computed from the layer's inputs at a block of positions at a time; a row whose
    source state equals the unchanged one, or whose answer comes before the patch, is not run."""
    blk = model.blocks[layer]
    name = f"blocks.{layer}.resid_pre"
    views = {"base": _view(blk, cache[name])}
    if src.cache is not None:
        views["src"] = _view(blk, src.cache[name])
    given = list(cells)
    cells = sorted(cells)
    R, S1 = cache[name].shape[0], views["base"]["v"]
    per_pos = R * S1.shape[2] * views["base"]["k"].shape[-1] * S1.shape[-1] * 4 * len(views)
    block = max(1, STATE_BYTES // per_pos)
    sums = [[m.clone() for m in base_metrics] for _ in cells]
    prefix = Prefix(model, cache, layer + 1)
    for b0 in range(0, len(cells), block):
        part = list(range(b0, min(len(cells), b0 + block)))
        pos = [cells[c][0] for c in part]
        Sb = FAMILY.states(views["base"], positions=pos)
        Ss = FAMILY.states(views["src"], positions=pos) if "src" in views else src.swap(Sb)
        act = [((Ss[:, i] != Sb[:, i]).flatten(1).any(-1) & (ans >= p)).nonzero().flatten() for i, p in enumerate(pos)]
        del Sb
        for grp in _groups([cells[c] for c in part], act, batch_size, src.half):
            idx = torch.cat([act[i] for i in grp])
            ppos = torch.cat([torch.full((len(act[i]),), pos[i], device=idx.device) for i in grp])
            S = torch.cat([Ss[act[i], i] for i in grp])
            lg = _resume(model, cache, views["base"], layer, idx, ppos, S, ans, prefix)
            _store([sums[part[i]] for i in range(len(part))], grp, act,
                   _answer_metrics(lg, (answers[0][idx], answers[1][idx]), clean_logp[idx]))
        del Ss
    by_cell = {c: tuple(s_) for c, s_ in zip(cells, sums)}
    return [by_cell[c] for c in given]


def _view(blk, x):
    """The canonical scan view (`hooks.scan.gdn.FAMILY`, q and k l2-normalised) of a GDN block's mixer on
    the block inputs x [B, T, D], as `hooks` sees the layer's scan call."""
    return FAMILY.canonical(blk.mixer.scan_inputs(blk.norm1(x)))


def _resume(model, cache, view, layer, idx, ppos, S, ans, prefix):
    """Logits at the answer of rows ``idx`` (pairs of the base cache) with layer ``layer``'s state after token
    ``ppos`` [R] replaced by S [R, H, K, V]. Each row's layer output is computed from its own patched position
    on (aligned to it: window index j is position ppos + j; indices past the last answer repeat its token
    and are dropped), then the rows share the window from the earliest patched position to the last
    answer."""
    blk = model.blocks[layer]
    x0 = cache[f"blocks.{layer}.resid_pre"]
    T = int(ans[idx].max()) + 1  # positions after the last answer cannot reach it
    p0 = int(ppos.min())
    W = T - p0
    j = torch.arange(W, device=idx.device)
    gpos = (ppos[:, None] + j).clamp(max=T - 1)                    # [R, W]
    r = idx[:, None]
    cw = FAMILY.view(**{k: view[k][r, gpos] for k in SEQ}, scale=view["scale"], initial_state=None)
    o = FAMILY.readout_at(cw, S, 0)[:, None].to(cw["v"].dtype)   # the readout of the patched state itself
    if W > 1:                                                     # then the recurrence from it
        c = cw.sliced(1, W)   # (its rows vary from window to window: `scan_rows` runs them at few batch sizes)
        kw = dict(q=c["q"], k=c["k"], v=c["v"], g=c["decay"], beta=c["beta"], scale=c["scale"])
        o = torch.cat([o, scan_rows(FAMILY.run_scan, kw, initial_state=S, output_final_state=True)[0].to(o.dtype)], 1)
    y = blk.mixer.output(o, blk.norm1(x0[r, gpos]))
    mixed = cache[f"blocks.{layer}.mixer_out"][idx, p0:T].clone()  # unchanged before each row's patch
    tgt = ppos[:, None] - p0 + j
    keep = tgt < W
    rows = torch.arange(len(idx), device=idx.device)[:, None].expand(-1, W)
    mixed[rows[keep], tgt[keep]] = y[keep].to(mixed.dtype)
    kv, prev = prefix(idx, p0)
    return model.forward_window(x0[idx, p0:T] + mixed, layer, p0, kv, at=ans[idx] - p0, prev=prev, mixer_done=True)
