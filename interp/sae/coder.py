"""The coder: EleutherAI's `sparsify.SparseCoder` (TopK sparse autoencoder / transcoder, fused TopK
encoder), made, scaled, encoded densely and saved in sparsify's own format.

Training runs on inputs divided by one scalar ``scale`` (their RMS over the first batch, so a
site's raw magnitude, tiny for states, does not set the learning rate's meaning). `fold` moves the
scale into the weights (encoder / scale, decoder and b_dec * scale): the folded coder acts on raw
activations with the same TopK choice and returns the same reconstruction, so the dictionaries
saved by `save` are plain sparsify coders (``SparseCoder.load_from_disk(path)``) for raw activations.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from interp.store import atomic_write_json, save_safetensors


def _sparsify():
    """sparsify prints a banner on import without Triton; keep our output clean."""
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):
        import sparsify
    return sparsify


DECODERS = ("auto", "triton", "eager")


def use_decoder(impl: str = "auto") -> str:
    """Choose sparsify's sparse decoder for every coder: ``triton`` (its xformers embedding-bag kernels, the
    default where Triton imports), ``eager`` (torch's ``embedding_bag``) or ``auto`` (sparsify's own choice).
    Which is faster depends on the size (``bench/sae_decoder_speed.py``; on an H200, BENCHMARKS.md section 26:
    eager as fast or faster for dictionaries of 1024-4096 latents on narrow inputs, Triton 1.8x faster for a
    residual-sized one). Returns the decoder now in use."""
    from interp import InterpError
    if impl not in DECODERS:
        raise InterpError(f"decoder '{impl}' is not valid; valid: {', '.join(DECODERS)}")
    _sparsify()
    from sparsify import sparse_coder, utils
    triton_ok = "xformers_embedding_bag" in vars(utils)          # sparsify imported its Triton kernels
    if impl == "triton" and not triton_ok:
        raise InterpError("decoder 'triton' is not available here (Triton does not import); valid: eager, auto")
    fn = {"auto": utils.decoder_impl, "eager": utils.eager_decode, "triton": utils.triton_decode}[impl]
    sparse_coder.decoder_impl = fn
    return "eager" if fn is utils.eager_decode else "triton"


def new(d_in: int, k: int, features: int, seed: int = 0, transcode: bool = False):
    """A fresh TopK SparseCoder (sparsify's initialisation: decoder = encoder^T, unit-norm rows), seeded."""
    sp = _sparsify()
    torch.manual_seed(seed)
    cfg = sp.SparseCoderConfig(activation="topk", num_latents=int(features), k=int(k), transcode=transcode)
    return sp.SparseCoder(int(d_in), cfg, device="cpu", dtype=torch.float32)


def dense_latents(coder, x):
    """All latent activations ``[N, features]`` (zeros except each row's top k)."""
    acts, idx, _ = coder.encode(x.to(coder.dtype))
    z = x.new_zeros(x.shape[0], coder.num_latents, dtype=coder.dtype)
    return z.scatter_(1, idx, acts)


def decode_dense(coder, z):
    """Reconstruction from dense latents ``[N, features]``: z W_dec + b_dec."""
    return z.to(coder.dtype) @ coder.W_dec + coder.b_dec


def reconstruct(coder, x):
    """The coder's reconstruction of ``x`` [N, d]."""
    acts, idx, _ = coder.encode(x.to(coder.dtype))
    return coder.decode(acts, idx)


def pad(x, width: int):
    """``x`` [N, d] with zero columns appended up to ``width`` (sparsify's coders have one width for input and
    output: a transcoder between widths reads and writes the wider one, the narrower side zero-padded)."""
    return x if x.shape[-1] >= width else torch.nn.functional.pad(x, (0, width - x.shape[-1]))


def fold(coder, scale: float, out_scale: float | None = None):
    """A copy of ``coder`` (trained on x / scale, with targets y / out_scale; default out_scale = scale) that
    acts on raw x: same top-k choice and latents, output times out_scale."""
    out_scale = scale if out_scale is None else out_scale
    sp = _sparsify()
    out = sp.SparseCoder(coder.d_in, coder.cfg, device="cpu", dtype=coder.dtype)
    with torch.no_grad():
        out.encoder.weight.copy_(coder.encoder.weight / scale)
        out.encoder.bias.copy_(coder.encoder.bias)
        out.W_dec.copy_(coder.W_dec * out_scale)
        out.b_dec.copy_(coder.b_dec * out_scale)
    return out


def save(coder, path, meta: dict | None = None) -> Path:
    """sparsify's layout (``cfg.json`` + ``sae.safetensors``), written atomically; ``meta`` (site, model,
    scale, ...) goes to ``interp.json`` beside them (sparsify ignores it)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_safetensors(path / "sae.safetensors", {k: v.detach().contiguous() for k, v in coder.state_dict().items()})
    atomic_write_json(path / "cfg.json", {**coder.cfg.to_dict(), "d_in": coder.d_in})
    if meta is not None:
        atomic_write_json(path / "interp.json", meta)
    return path


def load(path):
    """(SparseCoder, interp meta or {}) from a folder `save` wrote (or any sparsify coder folder)."""
    path = Path(path)
    coder = _sparsify().SparseCoder.load_from_disk(path)
    m = path / "interp.json"
    return coder, (json.loads(m.read_text()) if m.is_file() else {})
