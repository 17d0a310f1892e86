"""ActivationCache-like mapping from hook names to tensors, movable to CPU and disk, with the analysis
methods a TransformerLens user reaches for: the residual stream stacked by layer or decomposed into its
terms, per-head results (attention and recurrent heads), the model's final norm applied to a stack, the
logit lens and direct logit attribution.

The analysis methods need the model's pieces (final norm, unembedding, out-projections); a cache made by
`hooks.HookedModel.run_with_cache` knows its model (``cache.model``), one loaded from disk gets it with
``cache.attach(hm)``. Names a method needs and the cache lacks are named in its error.
"""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from hooks import names as N

_DECOMPOSE = "names=lambda n: n == 'embed' or n.endswith(('mixer_out', 'mlp_out'))"


class Cache(dict):
    """name -> tensor (shapes: see hooks.names). ``positions`` records the token positions kept
    when a capture selected some (per-token names then have P instead of T entries). ``model``: the
    `hooks.HookedModel` that filled it; ``head_inputs``: out-projection inputs recorded by
    ``run_with_cache(heads=True)``; ``grad``: a Cache of gradients at the same names
    (``run_with_cache(backward=...)``). ``cache['resid_pre', 3]`` (TransformerLens style) is
    ``cache['blocks.3.resid_pre']``.

    Stacks are ``[components, B, T(P), D]``; ``pos_slice`` (an index, a slice, or a list of indices
    into the cached positions) selects positions as in TransformerLens. Where a method applies
    model weights (norm, unembedding, out-projections) it computes in float32."""

    def __init__(self, *a, positions=None, model=None, **kw):
        super().__init__(*a, **kw)
        self.positions = positions
        self.model = model
        self.head_inputs = {}
        self.grad = None

    def to(self, device=None, dtype=None) -> "Cache":
        move = lambda v: v.to(device=device, dtype=dtype if v.is_floating_point() else None)  # noqa: E731
        out = Cache({k: move(v) for k, v in self.items()}, positions=self.positions, model=self.model)
        out.head_inputs = {k: move(v) for k, v in self.head_inputs.items()}
        out.grad = None if self.grad is None else self.grad.to(device, dtype)
        return out

    def cpu(self) -> "Cache":
        return self.to("cpu")

    def attach(self, hm) -> "Cache":
        """Give the cache its model (a `hooks.HookedModel`), e.g. after `load`; returns the cache."""
        self.model = hm
        return self

    def save(self, path, meta: dict | None = None) -> Path:
        """Write the layout ``interp capture`` writes (`ShardWriter`, `shard_entry`): ``path/manifest.json``
        (names, shapes, dtypes, positions, meta, one shard) and ``path/units/shard-00000.safetensors``."""
        path, tensors = Path(path), {k: v.detach().cpu() for k, v in self.items()}
        rows = {int(v.shape[0]) if v.dim() else None for v in tensors.values()}
        if len(rows) > 1 or None in rows:
            raise N.HookError(f"save needs tensors with one batch dimension; these have {sorted(rows, key=str)} rows")
        n = rows.pop() if rows else 0
        (path / "units").mkdir(parents=True, exist_ok=True)
        with open(path / "units" / "shard-00000.safetensors", "wb") as fh:
            ShardWriter(fh, tensors).write(tensors)
        m = {"names": list(self), "positions": None if self.positions is None else [int(p) for p in self.positions],
             "n_examples": n, "meta": meta or {}, "shards": [shard_entry(fh.name, path, 0, n, tensors)]}
        (path / "manifest.json").write_text(json.dumps(m, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path, device="cpu", names=None, lazy=False) -> "Cache":
        """A cache saved by `save` or written by ``interp capture`` (and the older single-file layout):
        every shard's rows concatenated (``names``: only these). ``lazy``: see `LazyCache`."""
        path = Path(path)
        m = json.loads((path / "manifest.json").read_text())
        pos = m.get("positions")
        if "shards" not in m:  # the older layout: one activations.safetensors
            return cls({k: v for k, v in load_file(str(path / "activations.safetensors"), device=device).items()
                        if names is None or k in names}, positions=pos)
        held = m["shards"][0].get("shapes") or safe_open(str(path / m["shards"][0]["file"]), "pt").keys() \
            if m["shards"] else {}
        views = {k: ShardedView(path, m["shards"], k) for k in held if names is None or k in names}
        if lazy:
            return LazyCache(views, positions=pos)
        return cls({k: v.load(device) for k, v in views.items()}, positions=pos)

    def __repr__(self):
        body = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in self.items())
        return f"Cache({body})"

    def __missing__(self, key):
        if isinstance(key, tuple) and 1 <= len(key) <= 2:
            name = self.model.name(*key) if self.model is not None else N.name(*key)
            if name in self:
                return dict.__getitem__(self, name)
            key = name
        held = ", ".join(list(self)[:8]) + (", ..." if len(self) > 8 else "")
        raise N.HookNameError(f"'{key}' is not in this cache (it holds {held or 'nothing'}); cache it with "
                              f"run_with_cache(tokens, names=[...])")

    # --- model pieces ---------------------------------------------------------------------------
    def _hm(self, what: str):
        if self.model is None:
            raise N.HookError(f"{what} needs the model and this cache has none (loaded from disk?): "
                              "cache.attach(hooks.wrap(model))")
        return self.model

    def _need(self, names, what: str, hint: str = "") -> list:
        missing = [n for n in names if n not in self]
        if missing:
            more = f" (and {len(missing) - 6} more)" if len(missing) > 6 else ""
            raise N.HookNameError(f"{what} needs {', '.join(missing[:6])}{more}, which this cache does not hold; "
                                  f"run_with_cache(tokens, {hint or 'names=[...]'}) caches them")
        return [dict.__getitem__(self, n) for n in names]

    def _layer(self, layer, what: str) -> int:
        """TransformerLens' layer argument: None / -1 / n_layers = after the last block, else 0..n_layers."""
        n = self._hm(what).n_layers
        if layer is None or layer == -1:
            return n
        i = N.as_int(layer, "layer")
        if not 0 <= i <= n:
            raise N.HookError(f"{what}: layer {i} out of range (valid: 0..{n}, or -1 / None for all {n} layers)")
        return i

    def _resid_in(self, layer: int, what: str):
        """The residual stream entering block ``layer`` (after the last block for n_layers)."""
        n = self._hm(what).n_layers
        name = f"blocks.{n - 1}.resid_post" if layer == n else f"blocks.{layer}.resid_pre"
        return self._need([name], what)[0]

    def unembed(self, x):
        """Logits [..., vocab] of final-norm outputs x [..., D] (the model's unembedding with its bias)."""
        hm = self._hm("unembed")
        W, b = hm.adapter.unembed_weight(hm.model)
        y = x.float() @ W.detach().to(x.device).float().T
        return y if b is None else y + b.detach().to(x.device).float()

    def final_norm(self, x):
        """The model's own final norm applied to x [..., D] (statistics of x itself)."""
        hm = self._hm("final_norm")
        norm = hm.adapter.final_norm(hm.model)
        dev = _device_of(norm, x)
        with torch.no_grad():
            return norm(x.to(dev)).to(x.device)

    # --- the residual stream --------------------------------------------------------------------
    def accumulated_resid(self, layer=None, incl_mid=False, apply_ln=False, pos_slice=None, mlp_input=False,
                          return_labels=False):
        """The residual stream entering blocks 0..layer (``layer`` None / -1: and after the last block,
        label ``final_post``): ``[layer + 1 (+ mids), B, T, D]``, labels ``{l}_pre`` / ``{l}_mid``.
        ``incl_mid``: ``resid_mid`` of the blocks before ``layer``; ``mlp_input``: ``resid_mid`` of
        ``layer``. ``apply_ln``: each entry through the model's final norm with its own statistics
        (the logit lens' input; TransformerLens applies layer ``layer``'s pre-norm for inner layers)."""
        L = self._layer(layer, "accumulated_resid")
        n = self.model.n_layers
        names, labels = [], []
        for i in range(L + 1):
            if i == n:
                names.append(f"blocks.{n - 1}.resid_post")
                labels.append("final_post")
                continue
            names.append(f"blocks.{i}.resid_pre")
            labels.append(f"{i}_pre")
            if (incl_mid and i < L) or (mlp_input and i == L):
                names.append(f"blocks.{i}.resid_mid")
                labels.append(f"{i}_mid")
        hint = "names=lambda n: n.endswith(('resid_pre', 'resid_mid', 'resid_post'))"
        stack = torch.stack([_pos(t, pos_slice) for t in self._need(names, "accumulated_resid", hint)])
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, pos_slice=pos_slice, recompute_ln=True)
        return (stack, labels) if return_labels else stack

    def decompose_resid(self, layer=None, mlp_input=False, mode="all", apply_ln=False, pos_slice=None,
                        incl_embeds=True, return_labels=False):
        """The residual stream entering block ``layer`` as the terms that add up to it: ``embed`` and
        each earlier block's ``mixer_out`` (attention and recurrent mixers alike) and ``mlp_out``
        (``mlp_input``: also block ``layer``'s ``mixer_out``); labels ``embed``, ``{l}_mixer_out``,
        ``{l}_mlp_out``. ``mode``: 'all', 'mixer', 'mlp', or 'attn' / 'rec' (the mixer outputs of the
        blocks with attention / a recurrent mixer). They sum to ``resid_pre`` of ``layer`` (with
        ``mode='all'``). ``apply_ln``: through the final norm, scale frozen (`apply_ln_to_stack`)."""
        modes = ("all", "mixer", "mlp", "attn", "rec")
        if mode not in modes:
            raise N.HookError(f"decompose_resid: mode {mode!r} is not one of {', '.join(modes)}")
        L = self._layer(layer, "decompose_resid")
        layers = self.model.layers
        if mlp_input and L == len(layers):
            raise N.HookError("decompose_resid: mlp_input needs a block (layer < n_layers)")
        names, labels = (["embed"], ["embed"]) if incl_embeds and mode == "all" else ([], [])

        def mixer(i):
            m = {"attn": layers[i].attn, "rec": layers[i].rec}.get(mode, True)
            if mode in ("all", "mixer") or (mode in ("attn", "rec") and m is not None):
                names.append(f"blocks.{i}.mixer_out")
                labels.append(f"{i}_mixer_out")
        for i in range(L):
            mixer(i)
            if mode in ("all", "mlp"):
                names.append(f"blocks.{i}.mlp_out")
                labels.append(f"{i}_mlp_out")
        if mlp_input:
            mixer(L)
        terms = [_pos(t, pos_slice) for t in self._need(names, "decompose_resid", _DECOMPOSE)]
        stack = torch.stack(terms) if terms else _pos(self._resid_in(L, "decompose_resid"), pos_slice)[None][:0]
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    # --- heads ------------------------------------------------------------------------------------
    def head_results(self, layer: int, kind: str = "attn"):
        """What each head of layer ``layer``'s attention (``kind='attn'``) or recurrent mixer
        (``'rec'``) adds to the residual stream: ``[B, T(P), H, D]``, its per-head readout pushed
        through the layer's out-projection (TransformerLens' ``hook_result``). Attention: the cached
        ``attn.head_out``; recurrent heads (and gated attention): the out-projection's input that
        ``run_with_cache(heads=True)`` records (the readout after the layer's per-head output gate /
        norm; Mamba2's group norm keeps the layer's own scale). A norm applied after the projection
        (post-norm layers) keeps the layer's own scale, so the heads plus the projection's bias sum to
        ``mixer_out`` (both kinds of a parallel layer together). Families where this is not exact
        raise NotImplementedError saying why (Mamba1: no heads; zamba2's shared attention)."""
        hm = self._hm("head_results")
        i = N.as_int(layer, "layer")
        if not -hm.n_layers <= i < hm.n_layers:
            raise N.HookError(f"layer {i} out of range (valid: 0..{hm.n_layers - 1})")
        L = hm.layers[i % hm.n_layers]
        if kind not in ("attn", "rec") or (L.attn if kind == "attn" else L.rec) is None:
            have = [k for k, m in (("attn", L.attn), ("rec", L.rec)) if m is not None]
            raise N.HookError(f"layer {L.index} has no heads of kind {kind!r} (it has: {', '.join(have) or 'none'})")
        spec = hm.adapter.head_projection(hm.model, L, kind)
        name = f"blocks.{L.index}.{'attn.head_out' if kind == 'attn' else 'rec.readout'}"
        if spec.input_is_cached:
            z = self._need([name], "head_results", "heads=True").pop()
            z = z.flatten(-2)
        else:
            z = self.head_inputs.get((L.index, kind))
            if z is None:
                raise N.HookError(f"per-head results of layer {L.index} ({kind}) need its out-projection's input, "
                                  "which run_with_cache(tokens, heads=True) records")
        W = spec.proj.weight.detach().to(z.device).float()
        H = spec.n_heads
        out = torch.einsum("...hv,dhv->...hd", z.float().unflatten(-1, (H, -1)), W.unflatten(1, (H, -1)))
        out = out * spec.multiplier
        if spec.post_norm is not None:
            b = getattr(spec.proj, "bias", None)
            o = out.sum(-2) + (0 if b is None else b.detach().to(z.device).float() * spec.multiplier)
            out = frozen_norm(spec.post_norm, o)(out.movedim(-2, 0)).movedim(0, -2)
        return out

    def stack_head_results(self, layer=None, return_labels=False, incl_remainder=False, pos_slice=None,
                           apply_ln=False, kinds=("attn", "rec")):
        """Every head's result (`head_results`) of the blocks before ``layer``: ``[heads, B, T, D]``,
        labels ``L{l}H{h}`` (attention) and ``L{l}R{h}`` (recurrent heads). ``incl_remainder``: one
        more term, the residual stream entering ``layer`` minus the heads (embeddings, MLPs, biases).
        ``kinds``: which heads ('attn', 'rec'). ``apply_ln``: through the final norm, scale frozen."""
        L = self._layer(layer, "stack_head_results")
        parts, labels = [], []
        for i in range(L):
            Li = self.model.layers[i]
            for kind, mod, tag in (("attn", Li.attn, "H"), ("rec", Li.rec, "R")):
                if mod is None or kind not in kinds:
                    continue
                try:
                    r = _pos(self.head_results(i, kind), pos_slice, dim=-3)
                except NotImplementedError as e:
                    raise NotImplementedError(f"{e}; stack_head_results(kinds=...) can leave these heads out") from None
                parts.append(r.movedim(-2, 0))
                labels += [f"L{i}{tag}{h}" for h in range(r.shape[-2])]
        resid = _pos(self._resid_in(L, "stack_head_results"), pos_slice).float() if incl_remainder or not parts \
            else None
        stack = torch.cat(parts) if parts else resid[None][:0]
        if incl_remainder:
            stack = torch.cat([stack, (resid - stack.sum(0))[None]])
            labels.append("remainder")
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    # --- the final norm, logit lens, direct logit attribution -------------------------------------
    def apply_ln_to_stack(self, residual_stack, layer=None, pos_slice=None, recompute_ln=False):
        """The model's own final norm applied to each entry of ``residual_stack`` ``[n, B, T(P), D]``.
        Default: its scale (1/RMS; LayerNorm: 1/std, after centering each entry) frozen at the
        residual stream that actually entered it (``resid_post`` of the last block, at ``pos_slice``),
        and its weight applied, its bias not (TransformerLens' cached-scale treatment; it folds the
        weight into W_U): the map is linear, so the entries of a decomposition still sum to the final
        norm's output minus its bias. ``recompute_ln``: each entry normalised with its own statistics
        (the logit lens). Only the final norm (``layer`` None, -1 or n_layers)."""
        hm = self._hm("apply_ln_to_stack")
        if layer not in (None, -1, hm.n_layers):
            raise N.HookError(f"apply_ln_to_stack applies the model's final norm (layer=None); layer {layer}'s "
                              "pre-norm is not supported")
        if recompute_ln:
            return self.final_norm(residual_stack).float()
        x = _pos(self._resid_in(hm.n_layers, "apply_ln_to_stack"), pos_slice)
        return frozen_norm(hm.adapter.final_norm(hm.model), x)(residual_stack)

    def logit_lens(self, layer=None, incl_mid=False, pos_slice=None, return_labels=False):
        """Logits ``[n, B, T(P), vocab]`` read from the residual stream entering each block (and after
        the last, which gives the model's logits): the final norm with each entry's own statistics,
        then the unembedding (`accumulated_resid` with ``apply_ln``)."""
        stack, labels = self.accumulated_resid(layer, incl_mid, apply_ln=True, pos_slice=pos_slice,
                                               return_labels=True)
        logits = self.unembed(stack)
        return (logits, labels) if return_labels else logits

    def tokens_to_residual_directions(self, tokens):
        """The unembedding rows of ``tokens`` (an id, a single-token string, or ids [B] / [B, P]):
        ``[..., D]``, float32; a token's logit is the final norm's output dotted with its row (plus
        the unembedding's bias)."""
        hm = self._hm("tokens_to_residual_directions")
        if isinstance(tokens, str):
            tokens = hm.to_single_token(tokens)
        elif isinstance(tokens, (list, tuple)):
            tokens = [hm.to_single_token(t) if isinstance(t, str) else t for t in tokens]
        ids = torch.as_tensor(tokens)
        if ids.is_floating_point() or ids.dtype == torch.bool:
            raise N.HookError(f"answer tokens must be integer ids or single-token strings, got dtype {ids.dtype}")
        W, _ = hm.adapter.unembed_weight(hm.model)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= W.shape[0]):
            raise N.HookError(f"answer token ids must lie in 0..{W.shape[0] - 1}, got {ids.tolist()}")
        return W.detach().float()[ids.to(W.device)]

    def logit_attrs(self, residual_stack, tokens, incorrect_tokens=None, pos_slice=None):
        """Direct logit attribution: each entry of ``residual_stack`` ``[n, B, T(P), D]`` through the
        final norm with its scale frozen (`apply_ln_to_stack`), dotted with the answer direction (the
        unembedding row of ``tokens``, minus that of ``incorrect_tokens``): ``[n, B, T(P)]``. Tokens
        [B] give one answer per example. For a decomposition (`decompose_resid`) the entries sum to
        the logit (difference) minus the unembedding's bias (difference), and minus the final norm's
        bias term for a norm with a bias."""
        d = self.tokens_to_residual_directions(tokens)
        if incorrect_tokens is not None:
            bad = self.tokens_to_residual_directions(incorrect_tokens)
            if bad.shape != d.shape:
                raise N.HookError(f"tokens and incorrect_tokens must have one shape, got {tuple(d.shape[:-1])} "
                                  f"and {tuple(bad.shape[:-1])}")
            d = d - bad
        scaled = self.apply_ln_to_stack(residual_stack, pos_slice=pos_slice)
        d = d.to(scaled.device)
        if d.dim() == 2 and scaled.dim() == 4 and d.shape[0] == scaled.shape[1]:
            d = d.unsqueeze(-2)  # one answer per example, for every position
        return (scaled * d).sum(-1)


def _pos(x, pos_slice, dim: int = -2):
    """``x`` at ``pos_slice`` along ``dim`` (None: all; an int drops the dim; a slice; a list of indices)."""
    if pos_slice is None:
        return x
    if isinstance(pos_slice, (list, tuple)):
        pos_slice = [N.as_int(p, "pos_slice entry") for p in pos_slice]
    elif not isinstance(pos_slice, (slice, torch.Tensor)):
        pos_slice = N.as_int(pos_slice, "pos_slice")
    n = x.shape[dim]
    try:
        idx = torch.arange(n)[pos_slice]
    except IndexError:
        raise N.HookError(f"pos_slice {pos_slice!r} out of range for {n} positions") from None
    return x.select(dim, int(idx)) if idx.dim() == 0 else x.index_select(dim, idx.to(x.device))


def _device_of(module, x):
    p = next(module.parameters(), None)
    return x.device if p is None else p.device


def frozen_norm(norm, x):
    """The linear map c -> norm's output for c with norm's statistics frozen at its input x [..., D]
    (float32; its weight applied, its bias left out): for c = x it gives norm(x) minus the bias. The
    norm's kind (RMSNorm with weight w or (1 + w), LayerNorm) is checked against norm(x) itself; an
    unknown kind raises NotImplementedError."""
    dev = _device_of(norm, x)
    with torch.no_grad():
        y = norm(x.to(dev))
    exact, y = y.dtype in (torch.float32, torch.float64) and x.dtype in (torch.float32, torch.float64), y.float()
    xf, eps = x.to(dev).float(), float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-5)))
    w, b = getattr(norm, "weight", None), getattr(norm, "bias", None)
    rest = y - (0 if b is None else b.detach().float())
    best = None
    for center in ((True, False) if "LayerNorm" in type(norm).__name__ else (False, True)):
        xc = xf - xf.mean(-1, keepdim=True) if center else xf
        r = torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + eps)
        for weff in ([None] if w is None else [w.detach().float(), 1 + w.detach().float()]):
            f = r if weff is None else r * weff
            err = float((xc * f - rest).abs().max() / rest.abs().max().clamp_min(1e-30))
            if best is None or err < best[0]:
                best = (err, center, f)
    err, center, f = best
    if err > (1e-4 if exact else 3e-2):
        raise NotImplementedError(f"cannot freeze the scale of {type(norm).__name__}: its output is not an RMSNorm "
                                  f"or LayerNorm of its input (relative error {err:.1e})")

    def apply(c):
        cf = c.float()
        return ((cf - cf.mean(-1, keepdim=True)) if center else cf) * f.to(cf.device)
    return apply



# --- the on-disk layout, shared with interp.capture: manifest.json + shards (`shard_entry`) ------------------
_ST = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64", torch.int64: "I64",
       torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}


class ShardWriter:
    """A safetensors file written batch by batch into open file ``fh``: the header (shapes ``[rows, ...]``
    from ``first`` {name: [b, ...]}; rows default b), then each `write` puts a batch's rows at their offsets."""

    def __init__(self, fh, first: dict, rows: int | None = None, metadata: dict | None = None):
        header, off, self.slots = {}, 0, {}
        for k in sorted(first):
            t = first[k]
            shape = [int(t.shape[0] if rows is None else rows), *t.shape[1:]]
            nbytes = math.prod(shape) * t.element_size()
            header[k] = {"dtype": _ST[t.dtype], "shape": shape, "data_offsets": [off, off + nbytes]}
            self.slots[k] = (off, nbytes // max(1, shape[0]), t.dtype, shape)
            off += nbytes
        meta = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}} if metadata else {}
        h = json.dumps({**header, **meta}, separators=(",", ":")).encode()
        h += b" " * (-len(h) % 8)
        fh.write(struct.pack("<Q", len(h)) + h)
        self.fh, self.base, self.row = fh, 8 + len(h), 0
        fh.truncate(self.base + off)

    def write(self, batch: dict):
        for k, (off, row_bytes, dtype, shape) in self.slots.items():
            t = batch[k].detach().cpu().contiguous()
            n = t.shape[0]
            if t.dtype != dtype or list(t.shape[1:]) != shape[1:] or self.row + n > shape[0]:
                raise N.HookError(f"'{k}': {list(t.shape)} {t.dtype} does not fit rows {self.row}.. of {shape} {dtype}")
            self.fh.seek(self.base + off + self.row * row_bytes)
            self.fh.write(t.reshape(-1).view(torch.uint8).numpy())
        self.row += n


def shard_entry(file, root, start, stop, tensors: dict) -> dict:
    """The manifest's entry for shard ``file`` (named relative to ``root``) holding rows start..stop."""
    return {"file": Path(file).relative_to(root).as_posix(), "start": start, "stop": stop,
            "shapes": {k: [stop - start, *t.shape[1:]] if t.dim() else [] for k, t in sorted(tensors.items())},
            "dtypes": {k: str(t.dtype).replace("torch.", "") for k, t in sorted(tensors.items())}}


class ShardedView:
    """One name across a saved folder's shards, memory-mapped (safetensors' ``safe_open``): ``shape``,
    ``dtype``; ``view[i]`` / ``view[a:b]`` (rows) reads only the shards holding those rows, ``load()``
    all of them into one tensor. Shard shapes are checked against the manifest; a damaged shard is named."""

    def __init__(self, root, shards, name):
        self.root, self.shards, self.name = Path(root), shards, name
        self.rows = [(s["start"], s["stop"]) for s in shards]
        self.dtype, shape = self._read(0)
        self.shape = torch.Size([self.rows[-1][1], *shape[1:]])

    def _read(self, i, a=None, b=None, device="cpu"):
        """Rows a..b of shard i (a None: its (dtype, shape)), its shape checked against the manifest."""
        f, want = self.root / self.shards[i]["file"], self.shards[i].get("shapes", {}).get(self.name)
        try:
            with safe_open(str(f), "pt", device=str(device)) as h:
                s = h.get_slice(self.name)
                dtype, shape = {v: k for k, v in _ST.items()}[s.get_dtype()], list(s.get_shape())
                out = None if a is None or shape != (want or shape) else s[a:b]
        except Exception as e:  # a file cut short, overwritten or missing
            msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise N.HookError(f"{f} is damaged ({msg}); delete it and re-run to recompute it") from None
        if shape != (want or shape):
            raise N.HookError(f"{f}: '{self.name}' has shape {shape}, the manifest lists {want}; the file is not this "
                              "folder's: capture again (--overwrite) or into a new --out")
        return (dtype, shape) if a is None else out

    def load(self, device="cpu") -> torch.Tensor:
        out = torch.empty(self.shape, dtype=self.dtype, device=device)
        for i, (a, b) in enumerate(self.rows):
            out[a:b] = self._read(i, 0, b - a, device)
        return out

    def __getitem__(self, idx):
        one = not isinstance(idx, slice)
        lo, hi, step = (slice(idx, idx + 1 if idx != -1 else None) if one else idx).indices(self.shape[0])
        parts = [self._read(i, max(lo, a) - a, min(hi, b) - a) for i, (a, b) in enumerate(self.rows) if lo < b > a < hi]
        got = torch.cat(parts)[::step] if parts else torch.empty(0, *self.shape[1:], dtype=self.dtype)
        return got[0] if one else got


class LazyCache(Cache):
    """A `Cache` loaded with ``lazy=True``: nothing is read at load, the shards are memory-mapped.
    ``cache[name]`` (and the analysis methods) reads that name's shards and concatenates them at each
    access (nothing is kept); ``cache.view(name)[rows]`` reads only the shards holding those rows; the
    dict's own ``values()`` / ``items()`` give these `ShardedView` s (``shape``, ``dtype``)."""

    def view(self, name) -> ShardedView:
        return dict.__getitem__(self, name)

    def __getitem__(self, key):
        v = super().__getitem__(key)
        return v.load() if isinstance(v, ShardedView) else v

    def _need(self, names, what: str, hint: str = "") -> list:
        return [v.load() if isinstance(v, ShardedView) else v for v in super()._need(names, what, hint)]
