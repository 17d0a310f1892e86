"""hooks.scan.mamba2 on CPU: the SSD scan in Mamba2's own parameters vs an independent step loop,
fla's simple-GLA naive.py through the mapping (q=C, k=B, v=dt*x, g=dt*A, scale 1), and states.

Tolerances (float32, |inputs| ~ 1): within 2e-5 absolute + 2e-5 relative; gradcheck (fast mode)
in float64 at its defaults."""
import pytest
import torch

from hooks.scan import mamba2
from hooks.scan._common import fla_reference

TOL = dict(atol=2e-5, rtol=2e-5)


def inputs(T, groups=1, seed=3, B=2, H=4, P=6, N=5, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    return dict(x=r(B, T, H, P), dt=torch.nn.functional.softplus(r(B, T, H)), A=-torch.rand(H, generator=gen, dtype=dtype) * 2,
                B=r(B, T, groups, N), C=r(B, T, groups, N), D=r(H), h0=r(B, H, N, P))


def ssd_steps(x, dt, A, Bm, Cm, D, h0):
    """Independent SSD loop, one head at a time with explicit group indexing: (y, per-token states)."""
    b, T, H, P = x.shape
    G, N = Bm.shape[2], Bm.shape[3]
    ys = torch.zeros(b, T, H, P)
    hs = torch.zeros(b, T, H, N, P)
    for hd in range(H):
        grp = hd // (H // G)
        h = torch.zeros(b, N, P) if h0 is None else h0[:, hd].clone()
        for t in range(T):
            h = torch.exp(dt[:, t, hd] * A[hd])[:, None, None] * h \
                + dt[:, t, hd, None, None] * torch.einsum("bn,bp->bnp", Bm[:, t, grp], x[:, t, hd])
            hs[:, t, hd] = h
            ys[:, t, hd] = torch.einsum("bnp,bn->bp", h, Cm[:, t, grp]) + (0 if D is None else D[hd] * x[:, t, hd])
    return ys, hs


@pytest.mark.parametrize("T", [1, 7, 64, 90])
@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("init", [False, True])
def test_scan_equals_step_loops_and_simple_gla(T, groups, init):
    m = inputs(T, groups)
    h0 = m["h0"] if init else None
    a = (m["x"], m["dt"], m["A"], m["B"], m["C"], m["D"])
    y0, hs = ssd_steps(*a, h0)
    y1, h1 = mamba2.naive(*a, initial_state=h0, output_final_state=True)
    y2, h2 = mamba2.chunk_torch(*a, initial_state=h0, output_final_state=True)
    y3, h3 = mamba2.scan(*a, initial_state=h0, output_final_state=True)
    for y, h in ((y1, h1), (y2, h2), (y3, h3)):
        torch.testing.assert_close(y, y0, **TOL)
        torch.testing.assert_close(h, hs[:, -1], **TOL)
    q, k, v, g = mamba2.to_gla_inputs(*a[:5])
    assert q.shape == k.shape == (2, T, 4, 5) and v.shape == (2, T, 4, 6) and g.shape == (2, T, 4)
    y4, h4 = fla_reference("simple_gla").naive_recurrent_simple_gla(q, k, v, g, initial_state=h0, output_final_state=True,
                                                                     scale=1.0)
    torch.testing.assert_close(y4.float() + m["x"] * m["D"].view(1, 1, -1, 1), y0, **TOL)
    torch.testing.assert_close(h4.float(), hs[:, -1], **TOL)


@pytest.mark.parametrize("T", [5, 64, 100])
def test_states(T):
    m = inputs(T, groups=2)
    a = (m["x"], m["dt"], m["A"], m["B"], m["C"])
    st = mamba2.states(*a, initial_state=m["h0"])
    assert st.shape == (2, T, 4, 5, 6) and st.dtype == torch.float32
    torch.testing.assert_close(st, ssd_steps(*a, None, m["h0"])[1], **TOL)
    pos = [T - 1, 1 % T, 0]
    torch.testing.assert_close(mamba2.states(*a, initial_state=m["h0"], positions=pos), st[:, pos], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(mamba2.states(*a), ssd_steps(*a, None, None)[1], **TOL)
    # y_t = h_t^T C_t (+ D x_t): the states read out give the scan output
    y = torch.einsum("bthnp,bthn->bthp", st, m["C"].repeat_interleave(2, 2))
    torch.testing.assert_close(y, mamba2.naive(*a, initial_state=m["h0"])[0], **TOL)


def test_no_skip_and_dtype():
    m = inputs(20)
    a = (m["x"], m["dt"], m["A"], m["B"], m["C"])
    y, h = mamba2.scan(*a)
    assert h is None
    torch.testing.assert_close(y, ssd_steps(*a, None, None)[0], **TOL)
    yb, hb = mamba2.scan(m["x"].bfloat16(), m["dt"], m["A"], m["B"].bfloat16(), m["C"].bfloat16(), m["D"],
                         output_final_state=True)
    assert yb.dtype == torch.bfloat16 and hb.dtype == torch.float32


def test_gradcheck():
    m = inputs(66, groups=1, B=1, H=2, P=2, N=2, dtype=torch.float64)
    names = ("x", "dt", "A", "B", "C", "D", "h0")
    leaves = tuple(m[n].clone().requires_grad_() for n in names)

    def f(x, dt, A, B, C, D, h0):
        y, h = mamba2.chunk_torch(x, dt, A, B, C, D, initial_state=h0, output_final_state=True)
        return y, h, mamba2.states(x, dt, A, B, C, initial_state=h0, positions=[3, 65], out_dtype=torch.float64)
    assert torch.autograd.gradcheck(f, leaves, fast_mode=True)


def test_bad_inputs():
    m = inputs(4, groups=2)
    x, dt, A, B, C = m["x"], m["dt"], m["A"], m["B"], m["C"]
    with pytest.raises(ValueError, match="groups, which must divide"):
        mamba2.scan(x[:, :, :3], dt[:, :, :3], A[:3], B, C)
    with pytest.raises(ValueError, match=r"dt has shape \[2, 4, 4, 1\], expected \[2, 4, 4\]"):
        mamba2.scan(x, dt[..., None], A, B, C)
    with pytest.raises(ValueError, match=r"A has shape \[2\], expected \[4\]"):
        mamba2.naive(x, dt, A[:2], B, C)
    with pytest.raises(ValueError, match=r"C has shape \[2, 4, 2, 3\], expected \[2, 4, 2, 5\]"):
        mamba2.chunk_torch(x, dt, A, B, C[..., :3])
    with pytest.raises(ValueError, match=r"D has shape \[3\], expected \[4\]"):
        mamba2.scan(x, dt, A, B, C, m["D"][:3])
    with pytest.raises(ValueError, match=r"initial_state has shape \[2, 4, 6, 5\], expected \[2, 4, 5, 6\]"):
        mamba2.states(x, dt, A, B, C, initial_state=m["h0"].transpose(-1, -2))
