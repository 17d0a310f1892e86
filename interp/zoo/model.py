"""HybridLM: the zoo's decoder-only LM. Each layer is ``x + mixer(norm(x))`` then
``x + mlp(norm(x))`` (pre-RMSNorm, SwiGLU MLP); the mixer of layer i is ``config.layers[i]``.

Module tree (what `hooks`' zoo adapter relies on)::

    HybridLM.embed                      nn.Embedding
    HybridLM.blocks[i]                  Block: .norm1 .mixer .norm2 .mlp  (.kind = config.layers[i])
    Block.mixer                         Attention | GatedDeltaNet | GatedLinearAttention | Mamba2
                                        | ParallelMixer(.attn, .rec)  for 'attn+<mixer>'
    HybridLM.norm_f, HybridLM.lm_head
"""
from __future__ import annotations

import torch
import torch.nn as nn

from interp.zoo.attention import Attention
from interp.zoo.common import RMSNorm, SwiGLU
from interp.zoo.config import ZooConfig
from interp.zoo.gdn import GatedDeltaNet
from interp.zoo.gla import GatedLinearAttention
from interp.zoo.mamba2 import Mamba2


def build_mixer(kind: str, cfg: ZooConfig, head_div: int = 1) -> nn.Module:
    """One mixer; ``head_div=2`` builds it with half the heads (for parallel layers)."""
    H = cfg.n_heads // head_div
    if kind == "attn":
        return Attention(cfg.d_model, H, cfg.head_dim, cfg.rope_theta)
    if kind == "gdn":
        return GatedDeltaNet(cfg.d_model, H, cfg.head_dim, cfg.conv_size, cfg.gdn_neg_eig, cfg.norm_eps)
    if kind == "gla":
        return GatedLinearAttention(cfg.d_model, H, cfg.head_dim, cfg.conv_size, cfg.gla_low_rank, cfg.norm_eps)
    if kind == "mamba2":
        mh = cfg.mamba_expand * cfg.d_model // cfg.mamba_head_dim // head_div
        return Mamba2(cfg.d_model, mh, cfg.mamba_head_dim, cfg.mamba_state, cfg.conv_size, cfg.norm_eps)
    if kind.startswith("attn+"):
        return ParallelMixer(build_mixer("attn", cfg, 2), build_mixer(kind[5:], cfg, 2))
    raise ValueError(kind)  # unreachable: ZooConfig.validate checked the kinds


class ParallelMixer(nn.Module):
    """Intra-layer fusion: attention and a recurrent mixer (half the heads each) read the same
    normalised input; their outputs are summed."""
    family = "parallel"

    def __init__(self, attn: nn.Module, rec: nn.Module):
        super().__init__()
        self.attn, self.rec = attn, rec

    def forward(self, x, pad=None):
        return self.attn(x, pad=pad) + self.rec(x)


class Block(nn.Module):
    def __init__(self, kind: str, cfg: ZooConfig):
        super().__init__()
        self.kind = kind
        self.norm1 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer = build_mixer(kind, cfg)
        self.norm2 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.d_model, cfg.ffn_hidden)

    def forward(self, x, pad=None):
        """``pad`` [B, T] bool (True: a real token), for padded batches: the mixer reads zeros at padding tokens
        (so recurrences write nothing there and short convolutions see zeros, as before a sequence starts), and
        attention positions and keys count real tokens only."""
        if pad is None:
            x = x + self.mixer(self.norm1(x))
        else:
            h = torch.where(pad[..., None], self.norm1(x), 0.0)
            x = x + (self.mixer(h, pad=pad) if self.mixer.family in ("attn", "parallel") else self.mixer(h))
        return x + self.mlp(self.norm2(x))


class HybridLM(nn.Module):
    def __init__(self, config: ZooConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(k, config) for k in config.layers)
        self.norm_f = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.apply(self._init)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, tokens: torch.Tensor, attention_mask=None) -> torch.Tensor:
        """tokens: [B, T] LongTensor -> logits [B, T, vocab] (float32). ``attention_mask`` [B, T] (1: a real
        token, 0: padding; left or right): each row gives at its real tokens what it gives alone (`Block`)."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [B, T], got shape {tuple(tokens.shape)}")
        pad = None if attention_mask is None else attention_mask.to(tokens.device).bool()
        if pad is not None and bool(pad.all()):
            pad = None
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x) if pad is None else block(x, pad=pad)
        return self.lm_head(self.norm_f(x)).float()

    def window_ok(self, start: int) -> bool:
        """Whether `forward_window` can run blocks ``start ..``: attention and Gated DeltaNet layers only."""
        return all(k in ("attn", "gdn") for k in self.config.layers[start:])

    def forward_window(self, x, start: int, offset: int, kv: dict, at=None, prev: dict | None = None,
                       mixer_done: bool = False):
        """Blocks ``start ..`` on hidden states x [B, W, D] of positions ``offset ..``, given what the
        earlier positions left: for attention layers their keys/values (``kv[i] = (k, v)``, [B, offset,
        H, D], after RoPE, as `hooks` captures ``blocks.{i}.attn.k/v``), for GDN layers their block inputs
        (``prev[i]`` [B, offset, D], ``blocks.{i}.resid_pre``: the layer resumes from the state they
        leave, `GatedDeltaNet.forward_window`; or ``prev[i] = (the last conv_size - 1 of them, that state
        [B, H, K, V] or None at offset 0)``, so the prefix is not scanned again). Other layers are refused
        (`window_ok`). ``at`` [B]: window index per row whose logits to return ([B, 1, vocab]); default all
        positions. ``mixer_done``: x is
        block ``start``'s residual after its mixer (resid_pre + mixer_out), so that block runs its MLP only.
        Used by activation patching to recompute only what a patch at position >= offset can change."""
        if not self.window_ok(start + mixer_done):
            raise NotImplementedError("forward_window needs attention or GDN in every layer from `start` on")
        last, rows = len(self.blocks) - 1, torch.arange(x.shape[0], device=x.device)
        for i in range(start, last + 1):
            b, only = self.blocks[i], i == last and at is not None   # the last layer: only the query at `at`
            if i == start and mixer_done:
                x = x[rows, at].unsqueeze(1) if only else x
            elif b.kind == "attn":
                y = b.mixer.forward_window(b.norm1(x), offset, *kv[i], at=at if only else None)
                x = (x[rows, at].unsqueeze(1) if only else x) + y
            elif isinstance(prev[i], tuple):  # (the prefix's last inputs, the state it leaves)
                x = x + b.mixer.forward_window(b.norm1(x), b.norm1(prev[i][0]), prev[i][1], tail_only=True)
                x = x[rows, at].unsqueeze(1) if only else x
            else:
                x = x + b.mixer.forward_window(b.norm1(x), b.norm1(prev[i]))
                x = x[rows, at].unsqueeze(1) if only else x
            x = x + b.mlp(b.norm2(x))
        return self.lm_head(self.norm_f(x)).float()

    def set_scan_backend(self, backend: str = "auto") -> "HybridLM":
        """Choose how recurrent mixers run their scan: ``auto`` (fla kernels for CUDA tensors,
        pure-torch chunked reference otherwise), ``reference`` (pure-torch chunked, any device)
        or ``naive`` (step-by-step loop; slow, for checks). The gated output norms follow: fla's kernel under
        ``auto`` on CUDA (`interp.zoo.common.norm_impl`), torch's composite otherwise."""
        fn = {"auto": "scan", "reference": "chunk_torch", "naive": "naive"}
        if backend not in fn:
            raise ValueError(f"unknown scan backend '{backend}'; valid: {', '.join(fn)}")
        from hooks.scan import FAMILIES
        for m in self.modules():
            fam = getattr(m, "family", None)
            if fam in FAMILIES and hasattr(m, "scan_fn"):
                m.scan_fn = getattr(FAMILIES[fam], fn[backend])
            if hasattr(m, "kernels"):
                m.kernels = backend == "auto"
        return self

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def device(self):
        return self.embed.weight.device
