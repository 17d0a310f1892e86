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
import os
import shutil
import uuid
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from hooks import names as N
from hooks.shards import (ShardedView, check_extent, check_names, damaged, read_manifest, save_target, shard_entry,
                          swap_in, write_synced)
from hooks.shards import ShardWriter  # noqa: F401 (interp.capture imports it from here)

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
        self.head_inputs, self.grad, self.attention_mask = {}, None, None

    def to(self, device=None, dtype=None) -> "Cache":
        move = lambda v: v.to(device=device, dtype=dtype if v.is_floating_point() else None)  # noqa: E731
        out = Cache({k: move(v) for k, v in self.items()}, positions=self.positions, model=self.model)
        out.head_inputs = {k: move(v) for k, v in self.head_inputs.items()}
        out.grad = None if self.grad is None else self.grad.to(device, dtype)
        out.attention_mask = None if self.attention_mask is None else self.attention_mask.to(device)
        return out

    def cpu(self) -> "Cache":
        return self.to("cpu")

    def attach(self, hm) -> "Cache":
        """Give the cache its model (a `hooks.HookedModel`), e.g. after `load`; returns the cache."""
        self.model = hm
        return self

    def save(self, path, meta: dict | None = None, overwrite: bool = False) -> Path:
        """Write the layout ``interp capture`` writes (`ShardWriter`, `shard_entry`): ``path/manifest.json``
        (names, shapes, dtypes, positions, meta, one shard), ``path/units/shard-00000.safetensors`` and, where the
        cache has them, ``units/extras.safetensors`` (``attention_mask``, ``head_inputs``, ``grad``). ``path``: a
        new or empty folder; ``overwrite=True`` also replaces a saved cache or capture there (a folder holding only
        what those write: other files are refused, never deleted). Written into a temporary sibling folder and
        renamed into place, so a crash leaves the old folder or the new one, never a mix of both."""
        path, tensors = Path(path), {k: self[k].detach().cpu() for k in self}
        rows = {int(v.shape[0]) if v.dim() else None for v in tensors.values()}
        if len(rows) > 1 or None in rows:
            raise N.HookError(f"save needs tensors with one batch dimension; these have {sorted(rows, key=str)} rows")
        n, dest = rows.pop() if rows else 0, save_target(path, overwrite)
        tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            (tmp / "units").mkdir(parents=True)
            f = write_synced(tmp / "units" / "shard-00000.safetensors", tensors)
            m = {"names": list(self), "positions": None if self.positions is None else [int(p) for p in self.positions],
                 "n_examples": n, "meta": meta or {}, "shards": [shard_entry(f, tmp, 0, n, tensors)]}
            if extras := self._extras():  # attention_mask, head_inputs, grad: units/extras.safetensors
                m["extras"] = write_synced(tmp / "units" / "extras.safetensors", extras).relative_to(tmp).as_posix()
            write_synced(tmp / "manifest.json", (json.dumps(m, indent=2) + "\n").encode())
            swap_in(tmp, dest, overwrite)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # what a failed save left (gone after a swap)
        return path

    def _extras(self) -> dict:
        """The attention mask, head inputs and gradients `save` keeps beside the activations, by file key."""
        x = {} if self.attention_mask is None else {"attention_mask": self.attention_mask}
        x.update({f"head_inputs.{i}.{kind}": v for (i, kind), v in self.head_inputs.items()})
        x.update({f"grad.{k}": self.grad[k] for k in (self.grad or {})})
        return {k: v.detach().cpu() for k, v in x.items()}

    @classmethod
    def load(cls, path, device="cpu", names=None, lazy=False, partial=False) -> "Cache":
        """A cache saved by `save` or written by ``interp capture`` (and the older single-file layout):
        every shard's rows concatenated (``names``: only these; a name the folder lacks is refused, naming
        close matches), with the ``attention_mask``, ``head_inputs`` and ``grad`` `save` kept (read at once,
        lazy or not). ``lazy``: see `LazyCache`. A missing folder or a damaged manifest raises HookError;
        so does an unfinished capture, unless ``partial`` (then the rows its shards hold are read)."""
        path, names = Path(path), [names] if isinstance(names, str) else names
        m = read_manifest(path)
        pos = m.get("positions")
        if "shards" not in m:  # the older layout: one activations.safetensors
            held = load_file(str(path / "activations.safetensors"), device=device)
            check_names(names, list(held), path)
            return cls({k: v for k, v in held.items() if names is None or k in names}, positions=pos)
        check_extent(path, m, partial)
        try:
            sh = m["shards"]
            held = list(sh[0].get("shapes") or safe_open(str(path / sh[0]["file"]), "pt").keys()) if sh else []
            views = {k: ShardedView(path, sh, k) for k in held if names is None or k in names}
        except (KeyError, TypeError, AttributeError) as e:  # a manifest missing its fields
            raise damaged(path, f"manifest.json lacks {e}") from None
        check_names(names, held, path)
        cache = LazyCache(views, positions=pos) if lazy else cls({k: v.load(device) for k, v in views.items()},
                                                                  positions=pos)
        return _load_extras(cache, path, m.get("extras"), device, names)

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


def _load_extras(cache, path: Path, file, device, names):
    """Give ``cache`` the attention mask, head inputs and gradients `Cache.save` kept in ``file``."""
    try:
        t = load_file(str(path / file), device=device) if file else {}
    except Exception as e:  # a file cut short, overwritten or missing
        raise damaged(path / str(file), e) from None
    cache.attention_mask = t.get("attention_mask")
    cache.head_inputs = {(int(k.split(".")[1]), k.split(".")[2]): v for k, v in t.items() if k.startswith("head_in")}
    grad = {k[5:]: v for k, v in t.items() if k.startswith("grad.") and (names is None or k[5:] in names)}
    cache.grad = Cache(grad, positions=cache.positions) if grad else None
    return cache


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
