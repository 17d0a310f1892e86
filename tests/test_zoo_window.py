"""The zoo's window forward: a suffix of positions recomputed from what the earlier positions left (attention
keys/values, GDN inputs) equals the whole-sequence forward there, for every split point."""
import pytest
import torch

import hooks
from interp import tasks as T
from interp.zoo import HybridLM, ZooConfig
from interp.zoo.gdn import GatedDeltaNet


@pytest.mark.parametrize("P", [0, 1, 2, 3, 7, 19])
def test_gdn_window_equals_full_forward(P):
    torch.manual_seed(0)
    m = GatedDeltaNet(16, 2, 8).double()
    x = torch.randn(3, 20, 16, dtype=torch.float64)
    with torch.no_grad():
        full = m(x)[:, P:]
        win = m.forward_window(x[:, P:], x[:, :P])
    torch.testing.assert_close(win, full, atol=1e-6, rtol=0)   # the chunked scan runs in float32


@pytest.mark.parametrize("layout,start,offset", [("gdn75", 0, 5), ("gdn75", 1, 11), ("gdn100", 2, 1),
                                                 ("transformer", 1, 6)])
def test_model_window_equals_full_forward(layout, start, offset):
    torch.manual_seed(1)
    m = HybridLM(ZooConfig(vocab_size=len(T.VOCAB), d_model=16, n_layers=4, layout=layout, n_heads=2,
                           head_dim=8)).double().eval()
    tok = T.generate("mqar", 4, seed=0).tokens
    hm = hooks.wrap(m)
    with torch.no_grad():
        full, c = hm.run_with_cache(tok, names=lambda n: n.endswith(("resid_pre", "attn.k", "attn.v")))
        kinds = m.config.layers
        kv = {i: (c[f"blocks.{i}.attn.k"][:, :offset], c[f"blocks.{i}.attn.v"][:, :offset])
              for i in range(start, 4) if kinds[i] == "attn"}
        prev = {i: c[f"blocks.{i}.resid_pre"][:, :offset] for i in range(start, 4) if kinds[i] != "attn"}
        win = m.forward_window(c[f"blocks.{start}.resid_pre"][:, offset:], start, offset, kv, prev=prev)
        at = torch.tensor([0, 3, 5, 2])
        one = m.forward_window(c[f"blocks.{start}.resid_pre"][:, offset:], start, offset, kv, at=at, prev=prev)
    torch.testing.assert_close(win, full[:, offset:], atol=1e-6, rtol=0)
    torch.testing.assert_close(one[:, 0], full[torch.arange(4), offset + at], atol=1e-6, rtol=0)
    assert m.window_ok(start)


def test_window_refuses_other_mixers():
    m = HybridLM(ZooConfig(vocab_size=len(T.VOCAB), d_model=16, n_layers=4, layout="gla75", n_heads=2, head_dim=8))
    assert not m.window_ok(0) and m.window_ok(3)
    with pytest.raises(NotImplementedError, match="attention or GDN"):
        m.forward_window(torch.zeros(1, 2, 16), 0, 1, {})


@pytest.mark.parametrize("layout,start", [("gdn75", 1), ("gdn75", 3), ("transformer", 0)])
def test_model_window_after_a_mixer_equals_full_forward(layout, start):
    """mixer_done: the window starts from block ``start``'s residual after its mixer (resid_pre + mixer_out)."""
    torch.manual_seed(2)
    m = HybridLM(ZooConfig(vocab_size=len(T.VOCAB), d_model=16, n_layers=4, layout=layout, n_heads=2,
                           head_dim=8)).eval()
    tok, offset = T.generate("mqar", 3, seed=1).tokens, 4
    with torch.no_grad():
        full, c = hooks.wrap(m).run_with_cache(tok, names=lambda n: n.endswith(
            ("resid_pre", "mixer_out", "attn.k", "attn.v")))
        kinds, later = m.config.layers, range(start + 1, 4)
        kv = {i: (c[f"blocks.{i}.attn.k"][:, :offset], c[f"blocks.{i}.attn.v"][:, :offset])
              for i in later if kinds[i] == "attn"}
        prev = {i: c[f"blocks.{i}.resid_pre"][:, :offset] for i in later if kinds[i] != "attn"}
        x = (c[f"blocks.{start}.resid_pre"] + c[f"blocks.{start}.mixer_out"])[:, offset:]
        win = m.forward_window(x, start, offset, kv, prev=prev, mixer_done=True)
    torch.testing.assert_close(win, full[:, offset:], atol=1e-5, rtol=0)
