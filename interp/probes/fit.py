"""Probe fitting: standardisation and the two multinomial logistic-regression backends
(`fit_torch`, batched L-BFGS; `fit_sklearn`, the reference), which predict and, on request, return
the fitted class directions (`fit_weights`: one probe's, for the causal check)."""
from __future__ import annotations

import numpy as np
import torch

from interp import InterpError


def _standardize(tr, te):
    mu, sd = tr.mean(-2, keepdim=True), tr.std(-2, keepdim=True).clamp(min=1e-6)
    return (tr - mu) / sd, (te - mu) / sd


def fit_torch(Xtr, ys, Xte, n_classes, C=1.0, max_iter=300, tol=1e-4, device=None, history=10, whiten=None,
              curvature=None, stats=None, return_weights=False):
    """Batched multinomial logistic regression. Xtr [P, N, D]: P feature sets on the same points;
    ys: label vectors [N] (e.g. task and control), each fitted on every feature set: P*len(ys)
    independent problems, solved together. Per problem: mean cross-entropy + ||W||^2 / (2 C N),
    intercept not penalised (sklearn's objective divided by C N).

    Solver: L-BFGS (``history`` pairs) with a backtracking Armijo line search, every problem with
    its own curvature history, step and stopping test (max |gradient| <= ``tol``), so each
    converges as if alone; one batched matmul per evaluation for all of them. ``whiten`` (default:
    D <= 8192) preconditions by an exact change of variables W = V diag(s) W', V, e the eigenvectors
    / values of the train covariance and s = (e + lam / curvature)^-1/2 (curvature: a guess of the
    softmax curvature, default 1 / n_classes): the Hessian in W' is then close to a multiple of the
    identity and L-BFGS converges in tens of iterations instead of hundreds; the penalty is the
    same ||W||^2 written in W'. float32, CUDA if available. Returns predictions on Xte [P, M, D]
    as [P, len(ys), M]; ``stats`` (a dict) receives iterations, evaluations, converged, problems.
    ``return_weights``: also the weights and intercepts in the coordinates of ``Xtr`` (logits =
    x W^T + b), W [P, len(ys), K, D] and b [P, len(ys), K], on the CPU."""
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    X = Xtr.to(dev, torch.float32)
    Xt = Xte.to(dev, torch.float32)
    P, N, D = X.shape
    lam = 1.0 / (C * N)
    if whiten is None:
        whiten = D <= 8192
    X, Xt, reg, Minv, mu, M = _precondition(X, Xt, lam, curvature or 1.0 / n_classes, whiten)
    Y = torch.stack([torch.as_tensor(y) for y in ys]).to(dev).t()          # [N, G]
    obj = _Objective(X, Y, n_classes, lam, reg, Minv)
    W, g, it, n_eval = _lbfgs(obj, max_iter, tol, history)
    G, K = len(ys), n_classes
    if stats is not None:
        stats.update(iterations=it, evaluations=n_eval,
                     converged=int((obj.gmax(g) <= tol).sum()), problems=P * G)
    z = torch.bmm(torch.cat([Xt, Xt.new_ones(P, Xt.shape[1], 1)], -1), W.view(P, D + 1, G * K))
    pred = z.view(P, -1, G, K).argmax(-1).permute(0, 2, 1).cpu()
    if not return_weights:
        return pred
    Wd, b = W[:, :D], W[:, D]                                                # [P, D, G, K], [P, G, K]
    if M is not None:  # back from the whitened coordinates: x' = (x - mu) M
        Wd = torch.einsum("pde,pegk->pdgk", M, Wd)
        b = b - torch.einsum("pd,pdgk->pgk", mu[:, 0], Wd)
    return pred, Wd.permute(0, 2, 3, 1).cpu(), b.cpu()


def _precondition(X, Xt, lam, curvature, whiten):
    """The intercept column and, with ``whiten``, the exact change of variables W = V diag(s) W'
    of `fit_torch` (centring only moves the intercept). Returns (X [P, N, D+1], Xt [P, M, D], the
    per-coordinate penalty weights reg [P, D+1, 1, 1] (0 on the intercept), Minv [P, D, D] mapping
    a gradient in W' to one in W, for the stopping test, the mean mu [P, 1, D] and M [P, D, D] of
    x' = (x - mu) M; the last three None without ``whiten``)."""
    P, N, D = X.shape
    reg = torch.ones(P, D + 1, 1, 1, device=X.device)
    Minv = mu = M = None
    if whiten:
        mu = X.mean(1, keepdim=True)
        e, V = torch.linalg.eigh(((X - mu).transpose(1, 2) @ (X - mu)).double() / N)
        scale = (e.clamp(min=0) + lam / curvature).rsqrt()
        M = (V * scale[:, None]).float()                                     # [P, D, D]
        Minv = (V / scale[:, None]).float()      # gradient in W = Minv @ gradient in W' (for the stopping test)
        X, Xt = torch.bmm(X - mu, M), torch.bmm(Xt - mu, M)
        reg[:, :D] = scale.square().float()[:, :, None, None]
    X = torch.cat([X, X.new_ones(P, N, 1)], -1)                              # intercept column
    reg[:, D] = 0
    return X, Xt, reg, Minv, mu, M


def _dot(a, b):
    return (a * b).sum((1, 3))                                              # [P, G]


def _ex(v):
    return v[:, None, :, None]


class _Objective:
    """The P*G problems of `fit_torch`: X [P, N, D+1] (with the intercept column), labels Y [N, G],
    K classes, penalty lam/2 * sum(reg * W^2)."""

    def __init__(self, X, Y, K, lam, reg, Minv):
        self.X, self.lam, self.reg, self.Minv = X, lam, reg, Minv
        self.P, self.N, D1 = X.shape
        self.D, self.G, self.K = D1 - 1, Y.shape[1], K
        self.Yx = Y.unsqueeze(0).expand(self.P, self.N, self.G).unsqueeze(-1)

    def __call__(self, W):
        """Per-problem objective [P, G] and its gradient [P, D+1, G, K]."""
        X, P, N, D, G, K, Yx = self.X, self.P, self.N, self.D, self.G, self.K, self.Yx
        z = torch.bmm(X, W.view(P, D + 1, G * K)).view(P, N, G, K)
        lse = z.logsumexp(-1, keepdim=True)
        Wr = W * self.reg
        f = (lse.squeeze(-1) - z.gather(-1, Yx).squeeze(-1)).mean(1) + 0.5 * self.lam * (W * Wr).sum((1, 3))
        p = (z - lse).exp_()
        p.scatter_add_(-1, Yx, torch.full(Yx.shape, -1.0, device=X.device))
        return f, torch.bmm(X.transpose(1, 2), p.view(P, N, G * K)).view(P, D + 1, G, K) / N + self.lam * Wr

    def gmax(self, g):
        """Max |gradient| in the original coordinates (sklearn's stopping test), per problem [P, G]."""
        if self.Minv is not None:
            P, D, G, K = self.P, self.D, self.G, self.K
            g = torch.cat([torch.bmm(self.Minv, g[:, :D].reshape(P, D, G * K)).view(P, D, G, K), g[:, D:]], 1)
        return g.abs().amax((1, 3))


def _lbfgs(fg, max_iter, tol, history):
    """L-BFGS on every problem of ``fg`` (an `_Objective`) at once, each with its own history, step
    and stopping test. Returns (W, its gradient, the last iteration, objective evaluations)."""
    W = torch.zeros(fg.P, fg.D + 1, fg.G, fg.K, device=fg.X.device)
    f, g = fg(W)
    hist = []                                                                # (s, y, 1 / s.y)
    active = torch.ones(fg.P, fg.G, dtype=torch.bool, device=fg.X.device)
    n_eval, it = 1, 0
    for it in range(max_iter):
        active &= fg.gmax(g) > tol
        if not active.any():
            break
        d, gd = _direction(g, hist, active)
        Wn, fn, gn, todo, evals = _line_search(fg, W, f, g, d, gd, active)
        n_eval += evals
        active &= ~todo                                                      # no decrease found: stop there
        s, y = Wn - W, gn - g
        sy = _dot(s, y)
        good = _ex((sy > 1e-10).float())
        hist.append((s * good, y * good, torch.where(sy > 1e-10, 1.0 / sy.clamp(min=1e-10), 0.0)))
        hist = hist[-history:]
        W, f, g = Wn, fn, gn
    return W, g, it, n_eval


def _direction(g, hist, active):
    """The L-BFGS two-loop recursion per problem (zero where not ``active``); steepest descent for
    a problem where that is not a descent direction. Returns (d, g.d)."""
    q, alphas = -g, []
    for s, y, r in reversed(hist):
        a = r * _dot(s, q)
        alphas.append(a)
        q = q - _ex(a) * y
    if hist:
        s, y, _ = hist[-1]
        q = q * _ex(_dot(s, y) / _dot(y, y).clamp(min=1e-30))
    else:
        q = q * _ex((1.0 / g.abs().sum((1, 3)).clamp(min=1e-30)).clamp(max=1.0))
    for (s, y, r), a in zip(hist, reversed(alphas)):
        q = q + _ex(a - r * _dot(y, q)) * s
    d = q * _ex(active.float())
    gd = _dot(g, d)
    if (gd >= 0).any():  # not a descent direction there: steepest descent
        d = torch.where(_ex(gd >= 0), -g * _ex(active.float()), d)
        gd = _dot(g, d)
    return d, gd


def _line_search(fg, W, f, g, d, gd, active):
    """Backtracking Armijo line search per problem: halve each active problem's step (from 1) until
    its objective decreases enough, at most 40 evaluations. Returns (W, f, g after the step, the
    problems where no step was accepted, evaluations)."""
    t = torch.ones_like(f)
    todo = active.clone()
    Wn, fn, gn = W, f, g
    n_eval = 0
    for _ in range(40):
        ft, gt = fg(W + _ex(t) * d)
        n_eval += 1
        ok = todo & (ft <= f + 1e-4 * t * gd)
        Wn = torch.where(_ex(ok), W + _ex(t) * d, Wn)
        fn, gn = torch.where(ok, ft, fn), torch.where(_ex(ok), gt, gn)
        todo &= ~ok
        if not todo.any():
            break
        t = torch.where(todo, t * 0.5, t)
    return Wn, fn, gn, todo, n_eval


def fit_sklearn(Xtr, ys, Xte, n_classes, C=1.0, max_iter=1000, tol=1e-4, return_weights=False, **_):
    """The reference: one scikit-learn LogisticRegression(lbfgs) per problem and label set.
    ``return_weights``: as `fit_torch` (a class absent from the training labels gets weight 0 and
    intercept -inf; two classes: sklearn's one direction w as -w/2, +w/2)."""
    import warnings
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    P, D = Xtr.shape[0], Xtr.shape[2]
    out = torch.empty(P, len(ys), Xte.shape[1], dtype=torch.long)
    W = torch.zeros(P, len(ys), n_classes, D)
    b = torch.full((P, len(ys), n_classes), float("-inf"))
    for p in range(P):
        for g, y in enumerate(ys):
            clf = LogisticRegression(C=C, max_iter=max_iter, tol=tol)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf.fit(Xtr[p].double().numpy(), np.asarray(y))
            out[p, g] = torch.as_tensor(clf.predict(Xte[p].double().numpy()))
            coef, icpt = torch.as_tensor(clf.coef_).float(), torch.as_tensor(clf.intercept_).float()
            if len(clf.classes_) == 2:
                coef, icpt = torch.cat([-coef / 2, coef / 2]), torch.cat([-icpt / 2, icpt / 2])
            cls = torch.as_tensor(clf.classes_, dtype=torch.long)
            W[p, g, cls], b[p, g, cls] = coef, icpt
    return (out, W, b) if return_weights else out


BACKENDS = {"torch": fit_torch, "sklearn": fit_sklearn}


def check_backend(backend):
    if backend not in BACKENDS:
        raise InterpError(f"unknown probe backend '{backend}'; valid: {', '.join(BACKENDS)}")


def fit_weights(Xtr, y, n_classes, backend="torch", C=1.0, **fit_kw) -> torch.Tensor:
    """One probe on standardised features Xtr [N, D], labels y [N] in 0..n_classes-1: the class
    directions W [k, D] of the k classes present in ``y`` (an absent class's row says nothing about
    the features)."""
    check_backend(backend)
    _, W, _ = BACKENDS[backend](Xtr[None], [y], Xtr[None, :1], n_classes, C=C, return_weights=True, **fit_kw)
    return W[0, 0][torch.bincount(torch.as_tensor(y), minlength=n_classes) > 0]
