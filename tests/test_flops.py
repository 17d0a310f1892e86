"""interp.flops: per-length FLOPs scale with the batch, and a run's cumulative FLOPs equal the sum over the batches
the trainer really drew (recorded during training), warm-up included."""
import torch

from interp import flops as F
from interp import train as TR
from interp.tasks.vocab import VOCAB
from interp.zoo import HybridLM, ZooConfig

MODEL = dict(d_model=32, n_layers=2, n_heads=2, head_dim=16, layout="gdn50")


def test_step_flops_scales_with_tokens_and_leaves_no_grad():
    torch.manual_seed(0)
    m = HybridLM(ZooConfig(vocab_size=len(VOCAB), **MODEL)).eval()
    f10, f20 = F.step_flops(m, 10), F.step_flops(m, 20)
    assert 0 < f10 < f20   # (not proportional: the GDN scan pads its chunks, so both lengths cost one chunk)
    assert all(p.grad is None for p in m.parameters()) and not m.training
    from torch.utils.flop_counter import FlopCounterMode
    x = torch.zeros(2, 10, dtype=torch.long)
    with FlopCounterMode(display=False) as fc:
        m(x).float().logsumexp(-1).mean().backward()
    assert fc.get_total_flops() == 2 * f10


def test_run_flops_equal_the_batches_trained_on(tmp_path, monkeypatch):
    seen = []
    orig = TR._optimizer_step

    def record(opt, batch, *rest):
        seen.append(tuple(batch.tokens.shape))
        return orig(opt, batch, *rest)
    monkeypatch.setattr(TR, "_optimizer_step", record)
    cfg = TR.TrainConfig(out=str(tmp_path / "run"), model=MODEL, tasks=["mqar", "state_recall"], steps=12,
                         batch_size=3, eval_every=4, eval_n=4, induction_steps=5, induction_until=2.0, device="cpu")
    m = TR.train(cfg, progress=False)
    assert len(seen) == 12 and len({s[1] for s in seen}) > 1    # lengths vary from batch to batch
    cache = {}
    want = {k: sum(B * F.step_flops(m, T_, cache) for B, T_ in seen[:k]) for k in (4, 8, 12)}
    assert F.run_flops(m, cfg, [4, 8, 12]) == want
