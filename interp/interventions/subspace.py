"""Subspaces and the interchange operation on vectors: bases (given, identity, random, a probe's class
directions), checks, and h <- h + R^T (R h_src - R h_base) (docs/interventions.md states it precisely).

A subspace of R^d is given by a matrix R [r, d] with orthonormal rows (R R^T = I_r); its orthogonal
projector is P = R^T R. A basis that is not orthonormal is orthonormalised (`orthonormalize`), which
keeps its row space and so the same projector.
"""
from __future__ import annotations

import numpy as np
import torch

from interp import InterpError

ORTHO_TOL = 1e-4   # max |R R^T - I| accepted as orthonormal (float32 QR / parametrisations reach ~1e-6)


def orthonormalize(M: torch.Tensor, what: str = "subspace") -> torch.Tensor:
    """R [r, d] with orthonormal rows spanning the row space of ``M`` [r, d] (QR of M^T, signs fixed
    so that diag(R M^T) > 0; an orthonormal M comes back unchanged up to rounding). A rank-deficient
    ``M`` raises an InterpError."""
    if not isinstance(M, torch.Tensor) or M.dim() != 2:
        raise InterpError(f"{what} must be a 2-d matrix [rank, width], got "
                          f"{tuple(M.shape) if isinstance(M, torch.Tensor) else type(M).__name__}")
    r, d = M.shape
    if r < 1 or r > d:
        raise InterpError(f"{what} has rank {r} but its width is {d}: the rank must be 1..{d}")
    Mf = M.detach().double()
    Q, U = torch.linalg.qr(Mf.T)                      # Mf^T = Q U, Q [d, r]
    diag = torch.diagonal(U)
    if bool((diag.abs() <= 1e-8 * max(1.0, float(Mf.abs().max()))).any()):
        raise InterpError(f"{what} [{r}, {d}] is rank-deficient: its rows must be linearly independent")
    return (Q * diag.sign()).T.to(M.dtype if M.is_floating_point() else torch.float32)


def is_orthonormal(R: torch.Tensor, tol: float = ORTHO_TOL) -> bool:
    I = torch.eye(R.shape[0], dtype=torch.float64, device=R.device)
    return bool(((R.double() @ R.double().T) - I).abs().max() <= tol)


def check_basis(R: torch.Tensor, width: int, what: str = "subspace") -> torch.Tensor:
    """``R`` as a [r, width] float matrix with orthonormal rows: shape checked against the site's
    ``width`` (clear errors for a wrong width or a rank above it), finite, orthonormalised if it is not; a numpy
    array is taken as the tensor it converts to."""
    if isinstance(R, np.ndarray) and R.dtype.kind in "biufc":
        R = torch.as_tensor(R)
    if not isinstance(R, torch.Tensor):
        raise InterpError(f"{what} must be a tensor [rank, {width}], got {type(R).__name__}")
    if R.dim() == 1:
        R = R[None]
    if R.dim() != 2:
        raise InterpError(f"{what} must be a 2-d matrix [rank, {width}], got shape {tuple(R.shape)}")
    if R.shape[1] != width:
        raise InterpError(f"{what} has width {R.shape[1]} but the site has width {width} "
                          f"(expected shape [rank, {width}], got {tuple(R.shape)})")
    check_rank(R.shape[0], width)
    if R.is_complex() or not bool(torch.isfinite(R).all()):
        raise InterpError(f"{what} {tuple(R.shape)} has NaN or inf entries; valid: a finite real [rank, {width}]")
    R = R.float()
    return R if is_orthonormal(R) else orthonormalize(R, what)


def check_rank(rank: int, width: int):
    if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= width:
        raise InterpError(f"rank {rank} is not valid for a site of width {width}: the rank must be 1..{width}")


def identity_basis(width: int) -> torch.Tensor:
    """R = I_width: the whole site (the interchange is then a full patch)."""
    return torch.eye(width)


def random_basis(width: int, rank: int, seed: int = 0) -> torch.Tensor:
    """A uniformly random rank-``rank`` subspace: R = W^T with W [width, rank] from
    ``torch.nn.init.orthogonal_`` under a generator seeded with ``seed`` (the same draw DAS starts
    from with that seed, and the one pyvene's LowRankRotateLayer makes after torch.manual_seed(seed))."""
    check_rank(rank, width)
    W = torch.empty(width, rank)
    torch.nn.init.orthogonal_(W, generator=torch.Generator().manual_seed(int(seed)))
    return W.T.contiguous()


def probe_basis(W: torch.Tensor, scale=None, center: bool = True, tol: float = 1e-6) -> torch.Tensor:
    """The subspace a linear probe reads: the row space of its class directions ``W`` [C, d].

    ``scale`` [d]: the per-feature standard deviations when the probe was fitted on standardised
    features x' = (x - mu) / scale (then the directions in the site's own coordinates are W / scale).
    ``center``: subtract the mean class direction first (softmax is unchanged by adding one vector to
    every class, so only differences between classes matter; a C-class probe then spans at most C-1
    dimensions). Directions with singular value below ``tol`` x the largest are dropped."""
    if not isinstance(W, torch.Tensor) or W.dim() != 2:
        raise InterpError(f"probe directions must be a matrix [n_classes, width], got "
                          f"{tuple(W.shape) if isinstance(W, torch.Tensor) else type(W).__name__}")
    D = W.detach().double()
    if scale is not None:
        scale = torch.as_tensor(scale, dtype=torch.float64)
        if scale.shape != (D.shape[1],):
            raise InterpError(f"probe scale has shape {tuple(scale.shape)}, expected ({D.shape[1]},)")
        D = D / scale
    if center:
        D = D - D.mean(0, keepdim=True)
    _, s, Vh = torch.linalg.svd(D, full_matrices=False)
    keep = s > tol * (float(s.max()) if len(s) else 0.0)
    if not bool(keep.any()):
        raise InterpError("probe directions span no subspace (all equal after centring, or zero)")
    return Vh[keep].float()


def interchange(base: torch.Tensor, source: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """base + (source - base) R^T R along the last dim (R [r, d] orthonormal rows): the component of
    ``base`` in the row space of R replaced by that of ``source``, the rest kept."""
    R = R.to(base.dtype)
    return base + ((source.to(base.dtype) - base) @ R.T) @ R


def write_key_interchange(base: torch.Tensor, source: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """The rank-1 state interchange along a write key: states [..., K, V], key [..., K] (broadcast
    over the leading dims). With u = key / |key| and v_x = S_x^T u (what the state retrieves with
    u): S_base + u (v_src - v_base)^T."""
    u = key.to(base.dtype)
    u = u / u.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    dv = torch.einsum("...k,...kv->...v", u, source.to(base.dtype) - base)
    return base + u[..., :, None] * dv[..., None, :]
