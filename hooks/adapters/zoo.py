"""Adapter for hybrid-interp's own zoo models (`interp.zoo.HybridLM`).

Recognised structurally (hooks never imports interp): ``model.blocks[i]`` with ``.mixer`` and
``.mlp``; attention mixers expose ``attn_fn(q, k, v)``, recurrent mixers ``scan_fn(**kwargs)``
with ``family`` a recurrence family of ``hooks.scan.FAMILIES`` (the zoo has gdn, gla, mamba2); parallel
layers hold ``.attn`` and ``.rec`` and return ``attn(x) + rec(x)``: those two modules' outputs are the
branch names ``attn.out`` / ``rec.out`` (a forward hook's replacement enters the sum).
"""
from __future__ import annotations

from contextlib import contextmanager

from hooks.adapters.base import Adapter, HeadProjection, LayerInfo, swap_attr
from hooks.scan import FAMILIES


class ZooAdapter(Adapter):
    family = "zoo"

    @classmethod
    def matches(cls, model) -> bool:
        blocks = getattr(model, "blocks", None)
        return (blocks is not None and hasattr(model, "embed") and len(blocks) > 0
                and all(hasattr(b, "mixer") and hasattr(b, "mlp") for b in blocks))

    def layers(self, model):
        out = []
        for i, b in enumerate(model.blocks):
            m = b.mixer
            attn = m if getattr(m, "family", None) == "attn" else getattr(m, "attn", None)
            rec = m if getattr(m, "family", None) in FAMILIES else getattr(m, "rec", None)
            meta = {"scale": attn.head_dim ** -0.5, "sliding_window": None} if attn is not None else {}
            par = attn is not None and rec is not None and attn is not m  # ParallelMixer: attn(x) + rec(x)
            out.append(LayerInfo(index=i, block=b, mixer_out=m, mlp_out=b.mlp, attn=attn, rec=rec,
                                 rec_family=getattr(rec, "family", None), attn_meta=meta,
                                 branches={"attn": attn, "rec": rec} if par else {}))
        return out

    def embed(self, model):
        return model.embed

    padding = True   # HybridLM.forward takes a padding attention_mask

    def forward(self, model, tokens, attention_mask=None):
        return model(tokens) if attention_mask is None else model(tokens, attention_mask=attention_mask)

    def final_norm(self, model):
        return model.norm_f

    def head_projection(self, model, layer, kind):
        """Attention: ``o_proj`` of the cached ``attn.head_out``. GDN / GLA: ``o_proj`` of the gated
        per-head norm's output; Mamba2: ``out_proj`` of its gated norm's output (one RMSNorm over
        all heads: its scale is the layer's own, shared by the heads)."""
        m = layer.attn if kind == "attn" else layer.rec
        proj = m.o_proj if hasattr(m, "o_proj") else m.out_proj
        return HeadProjection(proj, m.n_heads, input_is_cached=kind == "attn")

    @contextmanager
    def patch_attention(self, layer, wrapper):
        orig = layer.attn.attn_fn
        # a padded batch's key mask (``mask=``) stays with the layer's own op
        with swap_attr(layer.attn, "attn_fn",
                       lambda q, k, v, **kw: wrapper(q, k, v, lambda q_, k_, v_: orig(q_, k_, v_, **kw))):
            yield

    @contextmanager
    def patch_scan(self, layer, wrapper):
        orig = layer.rec.scan_fn
        with swap_attr(layer.rec, "scan_fn", lambda **kw: wrapper(kw, orig)):
            yield
