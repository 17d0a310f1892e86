"""Sparse dictionaries (TopK sparse autoencoders) on residual streams, readouts, per-head recurrent
states and factored per-token writes: data streamed from the model's forward (or capture shards),
the coder from eai-sparsify (`sparsify.SparseCoder`), resumable training, and evaluation (FVU,
dead / dense latents, splicing the reconstruction into the run with the recurrence continuing,
ground-truth AUROC per task value, interchange of aligned latents against random ones). docs/sae.md.

    from interp.sae import SaeSite, ModelSource, train, run_eval
    site = SaeSite("blocks.0.rec.state", head=0)
    res = train(model, site, ModelSource(model, site, "mqar"), k=16, features=1024, steps=500, out="runs/sae/x")
    ev = run_eval(model, res.coder, site, "mqar"); ev.plot("sae.png")

Transcoders (`interp.sae.transcode`: predict a later site from an earlier one) and rank-1 write
dictionaries (`interp.sae.rank1`: atoms u v^T over one head's factored writes) train and evaluate the
same way: ``train(..., target=SaeSite("blocks.0.mlp_out"))`` with a `PairSource`; `train_rank1`. Their
ground truth and interchange go through `interp.sae.views` (latents read at one site, decoded at another);
`interp.sae.substitute` is WriteSAE's substitution protocol for write dictionaries.
"""
from interp.sae.coder import dense_latents, fold, load, reconstruct, save
from interp.sae.data import CaptureSource, ModelSource, site_vectors
from interp.sae.evaluate import quality, splice
from interp.sae.groundtruth import best_features, features_needed, groundtruth
from interp.sae.interchange import interchange
from interp.sae.result import SaeEval
from interp.sae.run import run_eval, run_eval_rank1
from interp.sae.sites import SaeSite, splice_hooks, vectors
from interp.sae.train import TrainResult, train
from interp.sae.writes import factored, gdn_delta, outer
from interp.sae.transcode import PairSource, run_eval_transcoder
from interp.sae.rank1 import Rank1Coder, train_rank1
from interp.sae.substitute import substitution
from interp.sae.views import Latents, rank1_view, sae_view, transcoder_view

__all__ = ["SaeSite", "ModelSource", "CaptureSource", "train", "TrainResult", "run_eval", "SaeEval", "quality",
           "splice", "groundtruth", "best_features", "features_needed", "interchange", "splice_hooks", "vectors",
           "site_vectors", "factored", "gdn_delta", "outer", "dense_latents", "reconstruct", "fold", "save", "load",
           "PairSource", "run_eval_transcoder", "Rank1Coder", "train_rank1", "run_eval_rank1", "substitution", "Latents",
           "rank1_view", "sae_view", "transcoder_view"]
