"""Run subspace interchanges on a model: base/source pairs, positions, the hook that edits a site, and
interchange intervention accuracy (IIA).

    from interp import tasks, interventions as iv
    pairs = tasks.make_pairs("mqar", 256, seed=0)
    res = iv.intervene(model, pairs, iv.Site("blocks.0.rec.state", side="key"),
                       subspaces=["full", "random"], rank=1)

**Base and source.** A task pair (clean, corrupted) differs in one fact and in the answer. An ordered
pair takes one prompt as the *base* (the run we intervene on, whose answer we try to switch) and the
other as the *source* (where the activations come from). ``order='both'`` (default) uses each task
pair twice (base = corrupted, then base = clean); ``'corrupted_base'`` / ``'clean_base'`` once.
**IIA** = the fraction of ordered pairs whose intervened base run's argmax at the answer position is
the source's answer, counted over the pairs the model answers correctly on both prompts unintervened
(how many were kept is reported with every number).

**Positions** (the same token index in base and source, which have equal length): ``'answer'`` (the
token whose next token is the answer: the query), ``'write'`` (the first token where the two prompts
differ: the changed fact), either with an offset (``'answer-1'``, ``'write+1'``), or an integer index.
Default: ``'answer'`` for residual and head sites, ``'answer-1'`` for ``rec.state`` (the state just
before the query token; the recurrence continues from the edited state). Several positions: a list.

**Padded pairs** (`tasks.pad_pairs`, `tasks.pairs_from_ids`, ``attention_mask`` set; base and source of a pair
share it) run with their mask, each pair read at its own answer position. Positions count each pair's real
tokens, as `interp.patching.sweep` does: an anchor (``'answer'``, ``'write'``, with an offset) is that pair's
token, refused where it falls on a pad or outside the prompt for some pair (as for unpadded pairs); an integer p
is each pair's p-th real token, and a pair shorter than p + 1 tokens is left out of IIA (not counted in ``n``,
as a padded sweep's cell is over the pairs that have its position). So padded pairs give each ordered pair the
intervened logits, and each IIA the counts, of its length group run alone.
"""
from __future__ import annotations

import re
from contextlib import nullcontext
from dataclasses import dataclass, fields

import torch

import hooks
from interp import InterpError
from interp.checks import check_count
from interp.interventions.site import Site
from interp.interventions.subspace import interchange, write_key_interchange

ORDERS = ("both", "corrupted_base", "clean_base")
ANCHORS = ("answer", "write")
_POS = re.compile(r"^(answer|write)\s*([+-]\s*\d+)?$")


@dataclass
class InterchangePairs:
    """Ordered base/source pairs: tokens [N, T], answer_pos [N], answers [N], write_pos [N] (first
    differing token), pair [N] (index of the task pair), base_is_clean [N]."""
    base: torch.Tensor
    source: torch.Tensor
    answer_pos: torch.Tensor
    base_answer: torch.Tensor
    source_answer: torch.Tensor
    write_pos: torch.Tensor
    pair: torch.Tensor
    base_is_clean: torch.Tensor
    attention_mask: torch.Tensor | None = None   # [N, T] bool, 1 at real tokens (padded pairs; shared by both)

    def __len__(self):
        return self.base.shape[0]

    def _map(self, fn) -> "InterchangePairs":
        return InterchangePairs(*(None if getattr(self, f.name) is None else fn(getattr(self, f.name))
                                  for f in fields(self)))

    def take(self, idx) -> "InterchangePairs":
        return self._map(lambda t: t[idx])

    def to(self, device) -> "InterchangePairs":
        return self._map(lambda t: t.to(device))

    def span(self):
        """(first real index [N], real tokens [N]) of each row (unpadded: 0 and T)."""
        N, T = self.base.shape
        if self.attention_mask is None:
            return torch.zeros(N, dtype=torch.long), torch.full((N,), T, dtype=torch.long)
        from interp.tasks.padded import real_span
        return real_span(self.attention_mask)


def interchange_pairs(pairs, order: str = "both") -> InterchangePairs:
    """Ordered base/source pairs from a `tasks.PairBatch` (see the module docstring for ``order``)."""
    if order not in ORDERS:
        raise InterpError(f"order '{order}' is not valid; valid: {', '.join(ORDERS)}")
    from interp.tasks.padded import pair_span
    mask, _ = pair_span(pairs)        # (checks that the answer positions are real tokens)
    mask = None if mask is None else mask.to(pairs.clean.device)
    n = len(pairs)
    c = (pairs.clean, pairs.corrupted, pairs.clean_answer, pairs.corrupted_answer)
    cb = InterchangePairs(c[1], c[0], pairs.answer_pos, c[3], c[2], pairs.diff_pos, torch.arange(n),
                          torch.zeros(n, dtype=torch.bool), mask)
    kb = InterchangePairs(c[0], c[1], pairs.answer_pos, c[2], c[3], pairs.diff_pos, torch.arange(n),
                          torch.ones(n, dtype=torch.bool), mask)
    if order == "corrupted_base":
        return cb
    if order == "clean_base":
        return kb
    return InterchangePairs(*(None if getattr(cb, f.name) is None else torch.cat([getattr(cb, f.name),
                                                                                   getattr(kb, f.name)])
                              for f in fields(cb)))


def default_positions(site: Site):
    return ["answer-1"] if site.kind == "state" else ["answer"]


def parse_anchor(it, what: str = "position") -> re.Match:
    """The match of an anchor position ('answer', 'write-1', ...) or an InterpError naming ``it``."""
    m = _POS.match(str(it).strip())
    if not m:
        raise InterpError(f"{what} '{it}' is not valid; valid: an integer, {', '.join(ANCHORS)}, "
                          "or one of them with an offset such as answer-1, write+1")
    return m


def resolve_positions(spec, ip: InterchangePairs, site: Site) -> torch.Tensor:
    """Per-row positions [N, P] from a spec (None, an int, 'answer', 'write-1', or a list of them), as
    indices into the rows. Padded pairs: an integer p is each row's p-th real token, -1 in a row shorter than
    p + 1 tokens (that row has no such position); an anchor must be a real token in every row."""
    spec = default_positions(site) if spec is None else spec
    items = spec if isinstance(spec, (list, tuple)) else [spec]
    if not items:
        raise InterpError("no positions given")
    off, n = (t.to(ip.base.device) for t in ip.span())
    T = ip.base.shape[1]
    cols = []
    for it in items:
        if isinstance(it, int) and not isinstance(it, bool):
            if not 0 <= it < T:
                raise InterpError(f"position {it} falls outside the prompts (0..{T - 1})")
            col = torch.where(it < n, off + it, -1)
        else:
            m = parse_anchor(it)
            anchor = ip.answer_pos if m.group(1) == "answer" else ip.write_pos
            col = anchor.long() + (int(m.group(2).replace(" ", "")) if m.group(2) else 0)
            bad = (col < off) | (col >= off + n)
            if bool(bad.any()):
                where = f"0..{T - 1}" if ip.attention_mask is None else "their real tokens"
                raise InterpError(f"position '{it}' falls outside the prompts ({where}) for {int(bad.sum())} pairs")
        cols.append(col)
    return torch.stack(cols, 1)


def _take_rows(obj, idx):
    """A block's raw output (a tensor, or a tuple of tensors and other things) at batch rows idx."""
    if isinstance(obj, torch.Tensor):
        return obj[idx.to(obj.device)]
    if isinstance(obj, (tuple, list)):
        return type(obj)(_take_rows(v, idx) for v in obj)
    return obj


def _cat_rows(objs):
    if isinstance(objs[0], torch.Tensor):
        return torch.cat(objs)
    if isinstance(objs[0], (tuple, list)):
        return type(objs[0])(_cat_rows([o[j] for o in objs]) for j in range(len(objs[0])))
    return objs[0]


def _gather(hm, tokens, name, pos, batch_size, mask=None):
    """Activation ``name`` of runs on ``tokens`` [N, T] (``mask``: their padding mask) at per-row positions
    pos [N, P] -> [N, P, ...]."""
    out = []
    with torch.no_grad():
        for s in range(0, tokens.shape[0], batch_size):
            p = pos[s:s + batch_size]
            uniq = torch.unique(p)
            _, c = hm.run_with_cache(tokens[s:s + batch_size], names=[name], positions=uniq.tolist(),
                                     attention_mask=None if mask is None else mask[s:s + batch_size])
            x = c[name]
            where = torch.searchsorted(uniq, p).to(x.device)
            out.append(x[torch.arange(len(p), device=x.device)[:, None], where])
    return torch.cat(out)


def _prompt_pass(hm, site: Site, prompts, ans_pos, need, batch_size, prefix_layer, masks=None):
    """One run per distinct prompt (``masks``: their padding masks): predictions at ``ans_pos`` [U], the
    site at the positions each prompt is a source for (``need``: {prompt: [(ordered row, positions [P])]})
    and, for ``prefix_layer`` >= 0, the output of that block (where runs on the prompt as a base start)."""
    preds, prefix, src = [], [], {}
    for s in range(0, prompts.shape[0], batch_size):
        rows = range(s, min(s + batch_size, prompts.shape[0]))
        want = [p for u in rows for _, p in need.get(u, [])]
        uniq = torch.unique(torch.cat(want)) if want else torch.zeros(0, dtype=torch.long)
        got, handles = [], []
        if prefix_layer >= 0:
            handles.append(hm.layers[prefix_layer].block.register_forward_hook(lambda m, a, out: got.append(out)))
        try:
            with torch.no_grad(), hm.logits_at(ans_pos[s:s + batch_size]):
                lg, c = hm.run_with_cache(prompts[s:s + batch_size], names=[site.name] if len(uniq) else [],
                                          positions=uniq.tolist() if len(uniq) else None,
                                          attention_mask=None if masks is None else masks[s:s + batch_size])
        finally:
            for h in handles:
                h.remove()
        preds.append(lg[:, 0].argmax(-1).cpu())
        if got:
            prefix.append(got[0])
        for u in rows:
            for i, p in need.get(u, []):
                src[i] = c[site.name][u - s, torch.searchsorted(uniq, p).to(c[site.name].device)]
    return torch.cat(preds), (_cat_rows(prefix) if prefix else None), src


def edit_site(x, site: Site, pos, src, R=None, keys=None):
    """The site activation x [B, T, ...] with, in every row b and column j, position pos[b, j] edited
    toward the source values src [B, P, ...]: R [r, w] -> subspace interchange; R None -> full patch
    (of one head if the site names one); R 'write_key' -> the rank-1 state form along ``keys``
    [B, P, H|1, K]."""
    out = x.clone()
    rows = torch.arange(x.shape[0], device=x.device)
    for j in range(pos.shape[1]):
        p = pos[:, j].to(x.device)
        xb, xs = x[rows, p], src[:, j].to(x.device, x.dtype)
        if isinstance(R, str):
            new = _write_key(xb, xs, keys[:, j].to(x.device), site)
        elif R is None:
            new = xs if site.head is None else _one_head(xb, xs, site.head)
        else:
            new = site.unvectors(interchange(site.vectors(xb), site.vectors(xs), R.to(x.device)), xb)
        out[rows, p] = new.to(x.dtype)
    return out


def _one_head(xb, xs, h):
    new = xb.clone()
    new[:, h] = xs[:, h]
    return new


def _write_key(Sb, Ss, k, site: Site):
    """States [B, H, K, V] (Mamba1 [B, D, N] as [B, D, N, 1]), keys [B, H|1, K]."""
    mamba1 = Sb.dim() == 3
    if mamba1:
        Sb, Ss = Sb[..., None], Ss[..., None]
    if site.head is None:
        new = write_key_interchange(Sb, Ss, k)
    else:
        h = site.head
        new = Sb.clone()
        new[:, h] = write_key_interchange(Sb[:, h], Ss[:, h], k[:, 0 if k.shape[1] == 1 else h])
    return new[..., 0] if mamba1 else new


def site_width(hm, site: Site, tokens) -> int:
    """Check ``site`` against the model (name, head range) and return its width, from one cheap run
    on ``tokens`` [1, T] (one position kept)."""
    site.check(hm)
    with torch.no_grad():
        _, c = hm.run_with_cache(tokens[:1], names=[site.name], positions=[0])
    shape = (1, 1) + tuple(c[site.name].shape[2:])
    site.check(hm, shape)
    return site.width(shape)


class Interchanger:
    """A model, ordered pairs and a site, prepared once for many interchanges (many R, DAS steps):
    the source values at the positions, the write keys (`write_keys`, for R = 'write_key': the
    layer's rec.k at ``write_at`` of the base or the source prompt), each base run's output
    of the block before the site's layer (later runs start there, `HookedModel.start_at`) and which
    pairs the model answers correctly on both prompts (``correct`` [N]; padded pairs: and that have every
    position, ``has_pos`` [N]: rows without one are edited at their answer position but never counted)."""

    def __init__(self, model, pairs, site: Site, positions=None, order="both", batch_size: int = 64,
                 write_at="write", key_from="base", skip_prefix: bool = True):
        self.hm = model if isinstance(model, hooks.HookedModel) else hooks.wrap(model)
        self.site, self.batch_size = site, check_count(batch_size, "batch_size")
        self.ip = (pairs if isinstance(pairs, InterchangePairs) else interchange_pairs(pairs, order)).to("cpu")
        from interp.models import input_device
        self.device = input_device(self.hm.model)
        pos = resolve_positions(positions, self.ip, site)
        self.has_pos = (pos >= 0).all(1)
        self.pos = torch.where(pos >= 0, pos, self.ip.answer_pos[:, None].long())
        self.width = site_width(self.hm, site, self.ip.base[:1].to(self.device))
        self.keys, self._key_spec, self._copies = None, (write_at, key_from), {}
        self._prepare(skip_prefix)

    def _prepare(self, skip_prefix):
        """One pass over the distinct prompts (base and source roles share them; with order 'both'
        every prompt is both): source values, base prefixes, which pairs the model gets right."""
        ip, N = self.ip, len(self.ip)
        rows = torch.cat([ip.base, ip.source])
        if ip.attention_mask is not None:    # a prompt is its tokens and its padding
            rows = torch.cat([rows, ip.attention_mask.repeat(2, 1).to(rows.dtype)], 1)
        prompts, inv = torch.unique(rows, dim=0, return_inverse=True)
        T = ip.base.shape[1]
        masks = None if ip.attention_mask is None else prompts[:, T:].bool().to(self.device)
        prompts = prompts[:, :T]
        ans = torch.zeros(len(prompts), dtype=torch.long)
        ans[inv] = torch.cat([ip.answer_pos, ip.answer_pos]).long()
        need = {}
        for i in range(N):
            need.setdefault(int(inv[N + i]), []).append((i, self.pos[i]))
        layer = self.site.layer - 1 if skip_prefix and self.site.layer > 0 else -1
        pred, self._prefix_u, src = _prompt_pass(self.hm, self.site, prompts.to(self.device), ans, need,
                                                 self.batch_size, layer, masks)
        self.src = torch.stack([src[i] for i in range(N)])
        self._base_u = inv[:N]
        self.skips_prefix = self._prefix_u is not None
        self.correct = (pred[inv[:N]] == ip.base_answer) & (pred[inv[N:]] == ip.source_answer) & self.has_pos

    def write_keys(self):
        """The write keys [N, P, H|1, K] (computed once, on first use)."""
        if self.keys is not None:
            return self.keys
        write_at, key_from = self._key_spec
        if self.site.kind != "state":
            raise InterpError("the write-key interchange acts on a recurrent state (rec.state), "
                              f"not on '{self.site.name}'")
        if key_from not in ("base", "source"):
            raise InterpError(f"key_from '{key_from}' is not valid; valid: base, source")
        name = f"blocks.{self.site.layer}.rec.k"
        if name not in self.hm.hook_names:
            raise InterpError(f"the write-key interchange needs the layer's recurrent key '{name}', "
                              "which this model lacks")
        at = resolve_positions(write_at, self.ip, self.site)[:, :1].expand_as(self.pos)
        if bool((at < 0).any()):
            raise InterpError(f"write_at {write_at} is beyond the prompt of {int((at[:, 0] < 0).sum())} padded "
                              "pairs; valid: a position every pair has, or an anchor such as 'write'")
        toks = (self.ip.base if key_from == "base" else self.ip.source).to(self.device)
        mask = None if self.ip.attention_mask is None else self.ip.attention_mask.to(self.device)
        k = _gather(self.hm, toks, name, at.contiguous(), self.batch_size, mask)  # [N, P, H, K] or [N, P, K]
        k = k[:, :, None] if k.dim() == 3 else k
        H = self.src.shape[2]
        if k.shape[2] not in (1, H):
            raise InterpError(f"'{name}' has {k.shape[2]} key heads, the state {H}: cannot pair them")
        self.keys = k
        return k

    def logits(self, R=None, rows=None) -> torch.Tensor:
        """Logits [n, vocab] at the answer of the intervened base runs of ``rows`` (default all), in
        one forward (no batching, gradients flow to R): R [r, width], None (full patch) or
        'write_key' (the rank-1 state form). ``rows`` on a CUDA device index device-resident copies
        of the pair tables (made once), so a step reads nothing from the host (CUDA-graph capture)."""
        rows = torch.arange(len(self.ip)) if rows is None else torch.as_tensor(rows, dtype=torch.long)
        pos, src = self._at(self.pos, rows), self._at(self.src, rows)
        keys = None
        if isinstance(R, str):
            if R != "write_key":
                raise InterpError(f"subspace '{R}' is not valid here; valid: a tensor [rank, width], "
                                  "None (full), write_key")
            keys = self._at(self.write_keys(), rows)
        site = self.site

        def fn(x, name):
            return edit_site(x, site, pos, src, R, keys)
        start = (self.hm.start_at(site.layer, _take_rows(self._prefix_u, self._at(self._base_u, rows)))
                 if self.skips_prefix else nullcontext())
        mask = None if self.ip.attention_mask is None else self._at(self.ip.attention_mask, rows).to(self.device)
        with self.hm.logits_at(self._at(self.ip.answer_pos, rows)), start:
            return self.hm.run_with_hooks(self._at(self.ip.base, rows).to(self.device), hooks=[(site.name, fn)],
                                          attention_mask=mask)[:, 0]

    def _at(self, table: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``table[rows]``: host rows index the table where it lives; CUDA rows index a copy of the
        table on their device (made on first use, kept)."""
        if rows.device == table.device:
            return table[rows]
        if rows.device.type == "cpu":
            return table[rows.to(table.device)]
        key = (id(table), str(rows.device))
        if key not in self._copies:
            self._copies[key] = (table, table.to(rows.device))    # the table is held so its id stays its own
        return self._copies[key][1][rows]

    def switched(self, R=None, rows=None) -> torch.Tensor:
        """bool [n]: the intervened base run's argmax is the source's answer (batched, no grad)."""
        rows = torch.arange(len(self.ip)) if rows is None else torch.as_tensor(rows, dtype=torch.long)
        out = []
        with torch.no_grad():
            for s in range(0, len(rows), self.batch_size):
                r = rows[s:s + self.batch_size]
                out.append(self.logits(R, r).argmax(-1).cpu() == self.ip.source_answer[r])
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)

    def iia(self, R=None, rows=None) -> tuple[float, int]:
        """(IIA, n kept) over ``rows`` (default all) that the model answers correctly on both prompts."""
        rows = torch.arange(len(self.ip)) if rows is None else torch.as_tensor(rows, dtype=torch.long)
        rows = rows[self.correct[rows]]
        if len(rows) == 0:
            return float("nan"), 0
        return float(self.switched(R, rows).float().mean()), int(len(rows))


def describe_positions(positions, site: Site) -> str:
    spec = default_positions(site) if positions is None else positions
    return ",".join(str(p) for p in (spec if isinstance(spec, (list, tuple)) else [spec]))


def result_row(site: Site, ix, model_name, pairs, positions, label, rank, split, seed, iia, n, n_total) -> dict:
    return dict(model=model_name, task=(getattr(pairs, "meta", {}) or {}).get("task", ""), site=site.label(),
                layer=site.layer, head=-1 if site.head is None else site.head, side=site.side or "",
                positions=describe_positions(positions, site), subspace=label, rank=int(rank), split=split,
                seed=int(seed), iia=iia, n=int(n), n_total=int(n_total))
