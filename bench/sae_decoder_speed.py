"""Times one TopK coder training step with eai-sparsify's Triton sparse decoder against its eager
``embedding_bag`` decoder, at the sizes `bench/sae_figures.py` and `bench/bench_sae.py` train.

    python bench/sae_decoder_speed.py [--device cuda] [--out FILE.json]

Each row: rows per step x input width, latents, k; median seconds per step (after warm-up) for each decoder,
their ratio, and the faster one. The step is `interp.sae.train`'s (`_one_step`: forward, FVU + AuxK loss,
backward, Adam, decoder renormalisation) on random inputs, with every latent marked dead for AuxK (the
worst case of the AuxK decode; sparsify decodes the auxiliary latents with the same decoder)."""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time

import torch

from interp.experiment import git_commit
from interp.sae import coder as C
from interp.sae.train import _one_step

SIZES = [  # (what, rows per step, input width, latents, k)
    ("sae_figures readout (gdn75/gdn100, d=128)", 6400, 128, 1024, 16),
    ("sae_figures readout, wider", 6400, 256, 1024, 16),
    ("bench_sae state (K*V)", 32, 4096, 4096, 32),
    ("residual d=768", 4096, 768, 4096, 32),
]


def step_time(device, decoder, rows, width, features, k, steps, warm=3) -> float:
    """Median seconds of one training step with ``decoder``."""
    C.use_decoder(decoder)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, width, generator=g).to(device)
    coder = C.new(width, k, features, 0).to(device)
    opt = torch.optim.Adam(coder.parameters(), lr=1e-3)
    dead = torch.ones(features, dtype=torch.bool, device=device)
    times = []
    for i in range(warm + steps):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        _one_step(coder, opt, x, None, dead, 1 / 32)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= warm:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    a = ap.parse_args(argv)
    decoders = ["eager", "triton"] if C.use_decoder("auto") == "triton" else ["eager"]
    rows = []
    for what, n, w, f, k in SIZES:
        r = {"what": what, "rows": n, "width": w, "latents": f, "k": k}
        for d in decoders:
            r[f"{d}_s"] = step_time(a.device, d, n, w, f, k, a.steps)
        if "triton_s" in r:
            r["triton_over_eager"] = r["triton_s"] / r["eager_s"]
        r["faster"] = min(decoders, key=lambda d: r[f"{d}_s"])
        rows.append(r)
        print(json.dumps(r), flush=True)
    dev = torch.cuda.get_device_name() if a.device.startswith("cuda") else "CPU"
    res = {"device": dev, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
           "commit": git_commit(), "command": "python bench/sae_decoder_speed.py", "rows": rows,
           "faster_at_figures": rows[0]["faster"]}
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(res, fh, indent=1)
    return res


if __name__ == "__main__":
    main()
