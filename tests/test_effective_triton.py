"""hooks.effective's Triton path (hooks.effective_triton) under the Triton interpreter: pattern, rows=,
heads=, contributions and readout with ``impl="triton"`` equal the pure-torch path (``impl="torch"``, checked
against float64 step loops in tests/test_effective.py) to 1e-4 with "ieee" products, for every family the
kernel serves; T = 130 (three chunks of 64, the last one ragged), B = 2, GVA, beta in (0, 2).
Decays are weak so that the block carried over two chunks is no rounding noise.
Skipped where triton is absent; run with ``TRITON_INTERPRET=1`` (CPU tensors through the interpreter)."""
import os

import pytest
import torch

pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("the Triton path on CPU tensors needs TRITON_INTERPRET=1 (CUDA: tests/gpu/check_effective_gpu.py)",
                allow_module_level=True)

from hooks import effective as E  # noqa: E402
from hooks import recurrence as R  # noqa: E402

B, T = 2, 130
TOL = 1e-4
FAMS = ["gdn", "kda", "gla", "mamba2", "mamba1"]


# GDN's pieces call fla's autotuned solve_tril where fla is installed (`hooks.effective_triton.SOLVE`)
pytestmark = pytest.mark.usefixtures("fla_first_config")   # tests/conftest.py


@pytest.fixture(autouse=True)
def ieee(monkeypatch):
    monkeypatch.setattr(E, "PRECISION", "ieee")


def view(family, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    u = lambda *s: torch.rand(*s, generator=g)   # noqa: E731
    H, K, V = 2, 8, 5
    if family == "gdn":                                      # GVA: one q/k head for the two value heads
        kw = dict(q=r(B, T, 1, K), k=r(B, T, 1, K), v=r(B, T, H, V), g=-u(B, T, H) * 0.02,
                  beta=2 * u(B, T, H), use_qk_l2norm_in_kernel=True, initial_state=r(B, H, K, V))
    elif family == "kda":
        kw = dict(q=r(B, T, H, K), k=torch.nn.functional.normalize(r(B, T, H, K), dim=-1), v=r(B, T, H, V),
                  g=-u(B, T, H, K) * 0.02, beta=2 * u(B, T, H), initial_state=r(B, H, K, V))
    elif family == "gla":
        kw = dict(q=r(B, T, H, K), k=r(B, T, H, K), v=r(B, T, H, V), g=-u(B, T, H, K) * 0.02,
                  initial_state=r(B, H, K, V))
    elif family == "mamba2":
        kw = dict(x=r(B, T, H, V), dt=u(B, T, H) * 0.05, A=-u(H) * 2, B=r(B, T, 1, K), C=r(B, T, 1, K), D=r(H))
    else:
        kw = dict(x=r(B, T, 3), dt=u(B, T, 3) * 0.05, A=-u(3, K) * 2, B=r(B, T, K), C=r(B, T, K), D=r(3))
    return R.canonical(family, kw)


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("family", FAMS)
def test_pattern_and_rows_equal_torch(family):
    c = view(family)
    ref = E.pattern(family, c, impl="torch")
    A = E.pattern(family, c, impl="triton")
    assert A.shape == ref.shape and A.dtype == ref.dtype
    assert rel(A, ref) < TOL
    assert rel(A[..., 128:, :64], ref[..., 128:, :64]) < TOL           # carried over two chunks (weak decays)
    assert A.triu(1).abs().max() == 0                                   # causal: 0 above the diagonal
    # unsorted rows, a repeat, the ragged last chunk, and more than 16 rows of one chunk (two row groups)
    rows = [129, 0, 64, 63, 129, 100] + list(range(70, 90))
    Ar = E.pattern(family, c, rows=rows, impl="triton")
    assert rel(Ar, E.pattern(family, c, rows=rows, impl="torch")) < TOL
    torch.testing.assert_close(Ar, A[:, :, rows], rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", ["gdn", "kda"])
def test_contributions_readout_heads_equal_torch(family):
    c = view(family, seed=1)
    rows = [5, 127, 66]
    assert rel(E.contributions(family, c, rows, impl="triton"), E.contributions(family, c, rows, impl="torch")) < TOL
    o = E.readout(family, c, impl="triton")
    assert rel(o, E.readout(family, c, impl="torch")) < TOL
    Ah = E.pattern(family, c, heads=[1], impl="triton")
    assert rel(Ah, E.pattern(family, c, heads=[1], impl="torch")) < TOL
    n = E.contribution_norms(family, c, rows=rows, impl="triton")
    assert rel(n, E.contribution_norms(family, c, rows=rows, impl="torch")) < TOL


def test_module_default_and_errors(monkeypatch):
    c = view("gdn")
    monkeypatch.setattr(E, "IMPL", "triton")
    assert rel(E.pattern("gdn", c, rows=[100]), E.pattern("gdn", c, rows=[100], impl="torch")) < TOL
    with pytest.raises(ValueError, match="valid: auto, torch, triton"):
        E.pattern("gdn", c, impl="cuda")
    c64 = {k: (v.double() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in c.items()}
    with pytest.raises(ValueError, match="float64"):
        E.pattern("gdn", c64, impl="triton")
    assert E.pattern("gdn", c64, impl="auto").dtype == torch.float64      # CPU: the torch path


@pytest.mark.parametrize("solve", ["fla", "torch", "kernel"])
def test_gdn_pieces_equal_torch_pieces(monkeypatch, solve):
    """GDN's Triton pieces (the triangular solve by fla's solve_tril, torch's, or forward substitution in the
    kernel) equal the torch pieces of every chunk (`_pieces_all`, itself the per-chunk `_pieces_gdn` folded)."""
    from hooks import effective_triton as ET
    if solve == "fla":
        pytest.importorskip("fla")
    monkeypatch.setattr(ET, "SOLVE", solve)
    P = E._prep("gdn", view("gdn", seed=2))
    got = ET.gdn_pieces(P.q, P.k, P.gr(0, P.NT), P.beta, P.NT, "ieee")
    for name, a, b in zip(("Q", "U", "Phi", "own"), got, E._pieces_all(P, P.NT)):
        assert rel(a, b) < TOL, name
    j = 1
    ref = E._pieces_gdn(P, j, True)
    assert rel(got[2][:, :, j], ref["Phi"]) < TOL and rel(got[1][:, :, j], ref["src"]) < TOL
