"""rec.pattern of a padded batch: every entry whose query or key is padding is exactly 0 (as attn.pattern), for
left and right padding alike; entries between real tokens equal the unpadded run."""
import pytest
import torch

import hooks
from test_adapters_hf import make as hf_make
from test_hooks_zoo import make as zoo_make

MODELS = {"zoo_gdn75": lambda: zoo_make("gdn75"), "zoo_mamba275": lambda: zoo_make("mamba275"),
          "qwen3_next": lambda: hf_make("qwen3_next")}


@pytest.fixture(scope="module", params=list(MODELS))
def wrapped(request):
    torch.manual_seed(0)
    return hooks.wrap(MODELS[request.param]().eval())


@pytest.mark.parametrize("side", ["left", "right"])
def test_rec_pattern_zero_at_padding(wrapped, side):
    hm = wrapped
    layer = next(L.index for L in hm.layers if L.rec is not None)
    name = f"blocks.{layer}.rec.pattern"
    V = hm.model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    long, short = torch.randint(2, V, (10,), generator=g), torch.randint(2, V, (6,), generator=g)
    pad = torch.zeros(4, dtype=torch.long)
    row = torch.cat([pad, short]) if side == "left" else torch.cat([short, pad])
    real = torch.tensor([0] * 4 + [1] * 6 if side == "left" else [1] * 6 + [0] * 4).bool()
    toks, mask = torch.stack([long, row]), torch.stack([torch.ones(10, dtype=torch.long), real.long()])
    with torch.no_grad():
        _, c = hm.run_with_cache(toks, names=[name], attention_mask=mask)
        _, alone = hm.run_with_cache(short[None], names=[name])
        _, full = hm.run_with_cache(long[None], names=[name])
        rows = [0, 7, 9] if side == "right" else [1, 5, 9]   # pad and real query rows
        _, cp = hm.run_with_cache(toks, names=[name], attention_mask=mask, positions=rows)
    A = c[name][1]
    assert A[:, ~real].abs().max().item() == 0 and A[:, :, ~real].abs().max().item() == 0
    torch.testing.assert_close(A[:, real][:, :, real], alone[name][0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(c[name][0], full[name][0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(cp[name], c[name][:, :, rows], atol=0, rtol=0)
