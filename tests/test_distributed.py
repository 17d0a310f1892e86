"""Scale out (#7): data-parallel patching sweeps and captures on torch.distributed (gloo, 2 CPU
processes) equal single-process runs exactly (also through the CLI under torchrun, and after a
resume, also after a rank is killed inside a write); HF models dispatched by accelerate (device_map)
give the same hooks, captures and sweeps; sharding and errors. A 2-GPU check runs where two GPUs are present."""
import json
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import hooks
from interp import InterpError, distributed, patching
from interp import tasks as T
from interp.capture import capture, load_capture
from interp.distributed import shard
from interp.tasks import VOCAB
from interp.zoo import HybridLM, ZooConfig, load_model, save_model

ROOT = Path(__file__).resolve().parents[1]
SWEEP = dict(sites=["resid_pre", "rec.state", "mixer_out"], positions=None, batch_size=4,
             model_name="m", keep_all=True)               # 6 pairs -> 2 pair chunks; layer 3 = KV-window path
NAMES = ["blocks.0.rec.state", "blocks.3.attn.pattern", "blocks.2.resid_post"]
PATCH_CLI = ["patch", "--task", "mqar", "--knob", "n_pairs=4", "--n", "6", "--site", "resid_pre",
             "--site", "rec.state", "--batch-size", "4", "--keep-all"]
CAPTURE_CLI = ["capture", "--task", "mqar", "--n", "7", "--names", ",".join(NAMES), "--positions", "2,5,9",
               "--batch-size", "2", "--shard-size", "30000"]


def make_model(path):
    torch.manual_seed(0)
    cfg = ZooConfig(vocab_size=len(VOCAB), d_model=32, n_layers=4, layout="gdn75", n_heads=2, head_dim=16)
    m = HybridLM(cfg).eval()
    with torch.no_grad():  # random init is near-uniform; make answers depend on the prompt
        for p in m.parameters():
            p.mul_(4.0) if p.dim() > 1 else None
    save_model(m, path)
    return load_model(path)


def pairs():
    return T.make_pairs("mqar", 6, seed=0, n_pairs=4)


def tokens():
    return T.generate("mqar", 7, seed=3, n_pairs=4).tokens


def batch():
    return T.generate("mqar", 7, seed=3, n_pairs=4)


LINES = ["<bos> x0 = 3 ;", "<bos> x0 = 3 ; x1 = 5 ; x0 += x1 ;", "<bos> x1 = 2 ;", "<bos> x1 = 2 ; x1 += x1 ;",
         "<bos> x0 = 1 ; x1 = 5 ;"]
LINES_CLI = ["capture", "--lines", "--batch-size", "2", "--names", ",".join(NAMES)]


def unit_files(d):
    """The unit files (not baselines) of a sweep folder, by key order."""
    return sorted(Path(d).glob("units/*.unit=*.safetensors"), key=lambda f: [int(x) for x in
                  f.name.split(".chunk=")[1].split(".safetensors")[0].split(".unit=")])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, tmp):
    """One rank: the distributed sweep, a resumed sweep, the distributed capture and both CLI
    commands with --distributed (the process group set up here, as torchrun's env would)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    tmp = Path(tmp)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    ctx = distributed.init()
    assert (ctx.rank, ctx.world_size, ctx.backend) == (rank, world, "gloo")
    m = load_model(tmp / "model")
    res = distributed.sweep(m, pairs(), out=tmp / "sweep", **SWEEP)
    assert (res is None) == (rank != 0)
    ran = len(unit_files(tmp / "sweep" / f"rank{rank}"))
    cost = {1: 0}
    # interrupted run: the merged units are lost and rank 1 lost its last unit; the rerun runs only that
    ctx.barrier()
    if rank == 0:
        for f in unit_files(tmp / "sweep"):
            f.unlink()
        unit_files(tmp / "sweep" / "rank1")[-1].unlink()
    ctx.barrier()
    before = [len(unit_files(tmp / "sweep" / f"rank{r}")) for r in range(world)]
    res2 = distributed.sweep(m, pairs(), out=tmp / "sweep", **SWEEP)
    after = [len(unit_files(tmp / "sweep" / f"rank{r}")) for r in range(world)]
    cost[1] = sum(after) - sum(before)
    distributed.capture(m, tokens(), NAMES, tmp / "cap", batch_size=2, positions=[2, 5, 9], shard_size=30000,
                        meta={"x": 1}, inputs=batch())   # each rank stores its own rows of the labels
    distributed.capture(m, tokens(), NAMES, tmp / "cap1", batch_size=8, inputs=batch())   # one batch: a rank idles
    from interp.cli import main
    assert main(PATCH_CLI + ["--model", str(tmp / "model"), "--out", str(tmp / "cli_patch_dist"), "--distributed"]) == 0
    assert main(CAPTURE_CLI + ["--model", str(tmp / "model"), "--out", str(tmp / "cli_cap_dist"), "--distributed"]) == 0
    assert main(LINES_CLI + ["--model", str(tmp / "model"), "--text", str(tmp / "lines.txt"), "--out",
                             str(tmp / "cli_lines_dist"), "--distributed"]) == 0
    if rank == 0:
        (tmp / "dist.pkl").write_bytes(pickle.dumps(dict(res=res, res2=res2, ran=ran, rerun_rows=cost[1])))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def dist_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    make_model(tmp / "model")
    (tmp / "lines.txt").write_text("\n".join(LINES) + "\n")
    torch.multiprocessing.spawn(_worker, args=(2, free_port(), str(tmp)), nprocs=2, join=True)
    return tmp, pickle.loads((tmp / "dist.pkl").read_bytes())


def test_distributed_sweep_equals_single_process(dist_run, one_thread):
    tmp, got = dist_run
    ref = patching.sweep(load_model(tmp / "model"), pairs(), progress=False, **SWEEP)
    assert len(ref) > 50 and {"resid_pre", "rec.state", "mixer_out"} == set(ref.site)
    pd.testing.assert_frame_equal(got["res"], ref, check_exact=True)
    assert got["res"].attrs == ref.attrs
    assert got["ran"] > 0  # rank 0 did part of the work, rank 1 the rest
    # the merged unit sums are what a single process writes: a single-process run resumes from them
    again = patching.sweep(load_model(tmp / "model"), pairs(), out=tmp / "sweep", progress=False, **SWEEP)
    pd.testing.assert_frame_equal(again, ref, check_exact=True)


def test_distributed_resume_runs_only_missing_units(dist_run, one_thread):
    tmp, got = dist_run
    pd.testing.assert_frame_equal(got["res2"], got["res"], check_exact=True)
    n_units = len(unit_files(tmp / "sweep"))
    assert n_units == 2 * 11 and got["rerun_rows"] == 1    # one unit re-run, not the sweep
    keys = [{f.name for f in unit_files(d)} for d in sorted((tmp / "sweep").glob("rank*"))]
    assert not keys[0] & keys[1] and len(keys[0] | keys[1]) == n_units  # no unit ran twice


def test_single_process_resumes_from_rank_parts(dist_run, one_thread, monkeypatch, tmp_path):
    """Without the merged files, a single process merges the ranks' parts and runs nothing."""
    import shutil
    tmp, got = dist_run
    d = tmp_path / "sweep"
    shutil.copytree(tmp / "sweep", d)
    for f in (d / "units").iterdir():
        f.unlink()

    def no_forward(*a, **k):
        raise AssertionError("a finished unit was run again")
    monkeypatch.setattr(hooks.HookedModel, "__call__", no_forward)
    again = distributed.sweep(load_model(tmp / "model"), pairs(), out=d, ctx=distributed.Context(), **SWEEP)
    pd.testing.assert_frame_equal(again, got["res"], check_exact=True)


def _kill_worker(rank, world, port, tmp, kill):
    """One rank of a distributed sweep into ``tmp/killed``; rank 1 SIGKILLs itself at ``kill``."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    if kill and rank == 1:
        os.environ["INTERP_STORE_KILL"] = kill
    torch.set_num_threads(1)
    tmp = Path(tmp)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    res = distributed.sweep(load_model(tmp / "model"), pairs(), out=tmp / "killed", ctx=distributed.init(), **SWEEP)
    if rank == 0:
        (tmp / "killed.pkl").write_bytes(pickle.dumps(res))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    distributed.shutdown()


def test_killed_distributed_sweep_resumes_bit_for_bit(dist_run, one_thread):
    """Rank 1 SIGKILLed inside the spec write of its part, then (resumed) inside its first baseline
    write, inside a unit write, between two units (the other rank is stopped with it each time);
    the last resume equals the single-process sweep exactly, with every unit once in the merged
    folder."""
    tmp, got = dist_run
    for kill in ("write:spec.json:1", "write:base.chunk=*:1", "write:denoise.chunk=*:2", "after:denoise.chunk=*:1"):
        with pytest.raises(Exception):
            torch.multiprocessing.spawn(_kill_worker, args=(2, free_port(), str(tmp), kill), nprocs=2, join=True)
        assert not (tmp / "killed.pkl").exists()
    torch.multiprocessing.spawn(_kill_worker, args=(2, free_port(), str(tmp), ""), nprocs=2, join=True)
    res = pickle.loads((tmp / "killed.pkl").read_bytes())
    pd.testing.assert_frame_equal(res, got["res"], check_exact=True)
    assert [f.name for f in unit_files(tmp / "killed")] == [f.name for f in unit_files(tmp / "sweep")]


def test_distributed_capture_equals_single_process(dist_run, one_thread, tmp_path):
    tmp, _ = dist_run
    m = load_model(tmp / "model")
    capture(m, tokens(), NAMES, tmp_path / "one", batch_size=2, positions=[2, 5, 9], shard_size=30000,
            meta={"x": 1}, progress=False, inputs=batch())
    a, b = load_capture(tmp / "cap"), load_capture(tmp_path / "one")
    assert a.keys() == b.keys() == set(NAMES)
    assert sorted(a.labels) == sorted(b.labels) == ["answer_pos", "answers", "labels.bound_value",
                                                    "labels.write_distance"]
    assert all(torch.equal(a.labels[k], b.labels[k]) for k in b.labels)
    idle = load_capture(tmp / "cap1")   # the process given no batch wrote no inputs: the others' are read
    assert torch.equal(idle.tokens, tokens()) and all(torch.equal(idle.labels[k], b.labels[k]) for k in b.labels)
    for k in NAMES:
        assert a[k].shape[0] == 7 and torch.equal(a[k], b[k]), k
    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (tmp / "cap", tmp_path / "one"))
    assert ma["ranks"] == 2 and {s["file"].split("/")[0] for s in ma["shards"]} == {"rank0", "rank1"}
    assert [s["start"] for s in ma["shards"]][0] == 0 and ma["shards"][-1]["stop"] == 7
    assert {k: v for k, v in ma.items() if k not in ("shards", "ranks")} == \
        {k: v for k, v in mb.items() if k != "shards"}
    # a single-process resume on the merged directory has nothing left to do
    capture(m, tokens(), NAMES, tmp / "cap", batch_size=2, positions=[2, 5, 9], shard_size=30000, meta={"x": 1},
            progress=False, inputs=batch())
    assert json.loads((tmp / "cap" / "manifest.json").read_text()) == ma


def test_merge_captures_checks_rank_specs_and_process_counts(tmp_path, one_thread):
    """Rank folders captured alone merge into what one process writes; a rank captured with other
    settings is named by the merge; rank folders cut for another number of processes, or an
    unfinished distributed capture resumed by one process, are refused."""
    from interp.capture import OWNS, capture_spec
    from interp.store import Store, part_folder
    m, x, out = make_model(tmp_path / "model"), tokens(), tmp_path / "cap"
    kw = dict(batch_size=2, positions=[2, 5, 9], shard_size=30000, progress=False)
    ranges = [(0, 4), (4, 7)]
    spec = capture_spec(m, x, NAMES, positions=[2, 5, 9], shard_size=30000, batch_size=2, meta={"x": 1})
    Store(out, "capture", spec, owns=OWNS).open().close()     # what rank 0 does first
    for r, (a, b) in enumerate(ranges):
        capture(m, x[a:b], NAMES, part_folder(out, r), meta={"x": 1, "range": [a, b]}, **kw)
    distributed.merge_captures(out, ranges, meta={"x": 1})
    one = load_capture(capture(m, x, NAMES, tmp_path / "one", meta={"x": 1}, **kw))
    assert all(torch.equal(load_capture(out)[k], one[k]) for k in NAMES)
    (out / "manifest.json").unlink()
    with pytest.raises(InterpError, match=r"rank0 holds examples \[0, 4\], but with 3 processes rank 0 captures \[0, 2\]"):
        distributed._capture_state(out, 7, [(0, 2), (2, 4), (4, 7)])
    with pytest.raises(InterpError, match="holds an unfinished distributed capture"):
        capture(m, x, NAMES, out, meta={"x": 1}, **kw)
    capture(m, x[4:7], NAMES, out / "rank1", meta={"x": 1, "range": [4, 7]}, overwrite=True,
            **{**kw, "positions": [2, 5, 8]})
    with pytest.raises(InterpError, match=r"rank1 was captured with other settings than .*rank0: "
                                          r"positions: \[2, 5, 9\] -> \[2, 5, 8\]"):
        distributed.merge_captures(out, ranges)


def test_cli_distributed_equals_single(dist_run, one_thread, tmp_path):
    from interp.cli import main
    tmp, _ = dist_run
    assert main(PATCH_CLI + ["--model", str(tmp / "model"), "--out", str(tmp_path / "p")]) == 0
    assert main(CAPTURE_CLI + ["--model", str(tmp / "model"), "--out", str(tmp_path / "c")]) == 0
    a = patching.read_csv_exact(tmp / "cli_patch_dist" / "model_mqar.csv")
    b = patching.read_csv_exact(tmp_path / "p" / "model_mqar.csv")
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert list((tmp / "cli_patch_dist" / ".units").glob("*/rank1/units/*.safetensors"))
    ca, cb = load_capture(tmp / "cli_cap_dist"), load_capture(tmp_path / "c")
    assert all(torch.equal(ca[k], cb[k]) for k in NAMES)
    assert main(LINES_CLI + ["--model", str(tmp / "model"), "--text", str(tmp / "lines.txt"), "--out",
                             str(tmp_path / "l")]) == 0   # padded lines over two processes: as one process
    la, lb = load_capture(tmp / "cli_lines_dist"), load_capture(tmp_path / "l")
    assert torch.equal(la.labels["attention_mask"], lb.labels["attention_mask"]) and la.tokens.shape[0] == 5
    assert all(torch.equal(la[k], lb[k]) for k in NAMES)


def test_torchrun_cli_patch(tmp_path, one_thread):
    """The documented invocation: torchrun --nproc-per-node 2 -m interp.cli -- patch ... --distributed
    (the `--` keeps torchrun's parser off our options: it would take `--n` for an abbreviation)."""
    from interp.cli import main
    make_model(tmp_path / "model")
    args = ["--task", "state_recall", "--n", "4", "--site", "resid_pre", "--positions", "3:9",
            "--model", str(tmp_path / "model"), "--keep-all"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "interp.cli", "--", "patch", *args, "--out", str(tmp_path / "d"), "--distributed"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("logit diff clean") == 1  # rank 0 reports, rank 1 stays quiet
    assert main(["patch", *args, "--out", str(tmp_path / "s")]) == 0
    a, b = (patching.read_csv_exact(tmp_path / d / "model_state_recall.csv") for d in "ds")
    pd.testing.assert_frame_equal(a, b, check_exact=True)


# --- sharding ----------------------------------------------------------------------------------
def test_shard_partitions_in_order_and_balances_cost():
    items = [(c, u) for c in range(3) for u in range(5)]
    for W in (1, 2, 3, 4, 7, 20):
        parts = [shard(items, r, W) for r in range(W)]
        assert sum(parts, []) == items                         # contiguous, ordered, complete
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    costs = {it: (5 - it[1]) * 10 for it in items}             # early units cost more
    parts = [shard(items, r, 3, costs) for r in range(3)]
    assert sum(parts, []) == items
    tot = [sum(costs[i] for i in p) for p in parts]
    assert max(tot) - min(tot) <= 50                           # balanced to within one item
    assert parts == [shard(items, r, 3, costs) for r in range(3)]  # deterministic
    with pytest.raises(InterpError, match="rank 2 out of range 0..1"):
        shard(items, 2, 2)
    with pytest.raises(InterpError, match="3 costs for 15 items"):
        shard(items, 0, 2, [1, 2, 3])


def test_single_process_context_and_errors(tmp_path, monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(distributed, "_CTX", None)
    ctx = distributed.init()
    assert (ctx.rank, ctx.world_size, ctx.distributed) == (0, 1, False)
    assert ctx.device("cpu") == torch.device("cpu")
    assert ctx.on_main(lambda: 5) == 5
    m = make_model(tmp_path / "model")
    res = distributed.sweep(m, pairs(), out=tmp_path / "s", sites=["resid_pre"], layers=[1], positions=[2, 3],
                            keep_all=True)
    assert len(res) == 2 and (tmp_path / "s" / "spec.json").is_file()   # one process: a plain sweep
    assert not list((tmp_path / "s").glob("rank*"))
    with pytest.raises(InterpError, match="needs an output directory"):
        distributed.sweep(m, pairs(), out=None)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed, "_CTX", None)
    with pytest.raises(InterpError, match="LOCAL_RANK, MASTER_ADDR, MASTER_PORT not set"):
        distributed.init()
    monkeypatch.setattr(distributed, "_CTX", None)


def test_merge_refuses_mixed_settings(tmp_path):
    m = make_model(tmp_path / "model")
    patching.sweep(m, pairs(), out=tmp_path / "a", sites=["resid_pre"], layers=[1], positions=[2], progress=False,
                   keep_all=True)
    patching.sweep(m, pairs(), out=tmp_path / "b", sites=["resid_pre"], layers=[2], positions=[2], progress=False,
                   keep_all=True)
    with pytest.raises(InterpError, match=r"different settings than .*a: layers: \[1\] -> \[2\]"):
        patching.merge_units([tmp_path / "a", tmp_path / "b"])
    with pytest.raises(InterpError, match="nothing to merge"):
        patching.merge_units([tmp_path / "empty"])


# --- models spread over devices (accelerate) -------------------------------------------------------
def _hf_checkpoint(path, kind="qwen3_next"):
    from test_adapters_hf import CONFIGS, COMMON
    from transformers import AutoConfig, AutoModelForCausalLM
    mt, kw = CONFIGS[kind]
    torch.manual_seed(0)
    cfg = AutoConfig.for_model(mt, **{**COMMON, **kw, "vocab_size": len(VOCAB), "initializer_range": 0.2})
    AutoModelForCausalLM.from_config(cfg).float().eval().save_pretrained(path)
    return path


def test_accelerate_dispatched_hf_model_hooks_capture_sweep(tmp_path, kind="qwen3_next"):
    """A HF hybrid loaded with a device map (half its layers offloaded to disk, run through
    accelerate's hooks) gives exactly the plain model's caches (every hook name), states,
    patched runs, captures and patching sweep."""
    pytest.importorskip("accelerate")
    from transformers import AutoModelForCausalLM
    from interp.models import device_summary, load_any
    ck = _hf_checkpoint(tmp_path / "hf", kind)
    plain, _ = load_any(str(ck))
    dmap = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    dmap.update({f"model.layers.{i}": ("disk" if i % 2 else "cpu") for i in range(4)})
    disp = AutoModelForCausalLM.from_pretrained(str(ck), device_map=dmap, offload_folder=str(tmp_path / "off"),
                                                dtype=torch.float32).eval()
    assert hasattr(disp.model.layers[1], "_hf_hook") and "meta" in device_summary(disp)
    hp, hd = hooks.wrap(plain), hooks.wrap(disp)
    x = pairs().clean
    with torch.no_grad():
        lp, cp = hp.run_with_cache(x, names=hp.hook_names)
        ld, cd = hd.run_with_cache(x, names=hd.hook_names, device="cpu")
    assert torch.equal(lp, ld)
    for k in cp:
        assert torch.equal(cp[k], cd[k]), k
    i = next(L.index for L in hp.layers if L.rec is not None and L.index % 2)   # an offloaded GDN layer
    name = f"blocks.{i}.rec.state"

    def put(S, _):  # a patch value held on the CPU: moved to where the state lives
        S = S.clone()
        S[:, 5] = cp[name][:, 5].flip(0)
        return S
    with torch.no_grad():
        assert torch.equal(hp.run_with_hooks(x, hooks=[(name, put)]), hd.run_with_hooks(x, hooks=[(name, put)]))
    names = [name, f"blocks.{i}.resid_mid", "blocks.3.resid_post"]
    capture(plain, x, names, tmp_path / "cp", batch_size=4, progress=False)
    capture(disp, x, names, tmp_path / "cd", batch_size=4, progress=False)
    a, b = load_capture(tmp_path / "cp"), load_capture(tmp_path / "cd")
    assert all(torch.equal(a[k], b[k]) for k in names)
    kw = dict(sites=["resid_mid", "rec.state"], layers=[i], positions=[5, 12], batch_size=64, progress=False,
              keep_all=True)
    ra, rb = patching.sweep(hp, pairs(), **kw), patching.sweep(hd, pairs(), **kw)
    assert ra.logit_diff.abs().max() > 0.01
    pd.testing.assert_frame_equal(ra, rb, check_exact=True)
    # load_any with a device map on this CPU-only host: every layer on the CPU, same logits
    auto, _ = load_any(str(ck), device_map="auto")
    with torch.no_grad():
        assert torch.equal(auto(x).logits, lp)


def test_load_any_device_map_errors(tmp_path):
    from interp.models import load_any, parse_max_memory
    make_model(tmp_path / "zoo")
    with pytest.raises(InterpError, match="zoo model, which loads on one device"):
        load_any(str(tmp_path / "zoo"), device_map="auto")
    with pytest.raises(InterpError, match="device map 'everywhere' is not valid; valid: auto, balanced"):
        load_any("gdn75", device_map="everywhere")
    with pytest.raises(InterpError, match="only with a device map"):
        load_any("gdn75", max_memory="1GiB")
    with pytest.raises(InterpError, match="dtype 'int8' is not valid; valid: float32, bfloat16, float16"):
        load_any("gdn75", dtype="int8")
    with pytest.raises(InterpError, match="dtype 'torch.int64' is not valid; .*or a floating torch dtype"):
        load_any("gdn75", dtype=torch.int64)       # was a raw TypeError from nn.Module.to
    assert next(load_any("gdn75", dtype=torch.float64)[0].parameters()).dtype == torch.float64
    assert parse_max_memory("0=20GiB,1=30GiB,cpu=64GiB") == {0: "20GiB", 1: "30GiB", "cpu": "64GiB"}
    with pytest.raises(InterpError, match="max memory device 'gpu7' is not valid"):
        parse_max_memory("gpu7=3GiB")
    with pytest.raises(InterpError, match="invalid memory size 'lots'"):
        parse_max_memory("0=lots")
    from interp.cli import main
    assert main(["patch", "--model", str(tmp_path / "zoo"), "--distributed", "--device-map", "auto"]) == 2


# --- two GPUs: layers on different devices -----------------------------------------------------------
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
@pytest.mark.parametrize("kind", ["qwen3_next", "olmo_hybrid"])
def test_two_gpu_split_equals_one_gpu(tmp_path, kind):
    """Layers alternate between cuda:0 and cuda:1: caches (all names, landing on the device
    asked for), state patching with a CPU-held value, start_at / logits_at sweeps and captures
    equal the same model on one GPU."""
    from transformers import AutoModelForCausalLM
    ck = _hf_checkpoint(tmp_path / "hf", kind)
    one = AutoModelForCausalLM.from_pretrained(str(ck), dtype=torch.float32).to("cuda:0").eval()
    dmap = {"model.embed_tokens": 0, "model.rotary_emb": 0, "model.norm": 1, "lm_head": 1}
    dmap.update({f"model.layers.{i}": i % 2 for i in range(4)})
    two = AutoModelForCausalLM.from_pretrained(str(ck), device_map=dmap, dtype=torch.float32).eval()
    assert {p.device.index for p in two.parameters()} == {0, 1}
    h1, h2 = hooks.wrap(one), hooks.wrap(two)
    x = pairs().clean.cuda()
    with torch.no_grad():
        l1, c1 = h1.run_with_cache(x, names=h1.hook_names, device="cpu")
        l2, c2 = h2.run_with_cache(x, names=h2.hook_names, device="cpu")
    rel = lambda a, b: float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp(min=1e-6))  # noqa
    assert rel(l2.cpu(), l1.cpu()) < 1e-4
    assert all(c2[k].device.type == "cpu" and rel(c2[k], c1[k]) < 1e-3 for k in c1)
    i = next(L.index for L in h1.layers if L.rec is not None and L.index % 2)
    name = f"blocks.{i}.rec.state"

    def put(S, _):
        S = S.clone()
        S[:, 5] = c1[name][:, 5].flip(0)   # on the CPU
        return S
    with torch.no_grad():
        assert rel(h2.run_with_hooks(x, hooks=[(name, put)]).cpu(), h1.run_with_hooks(x, hooks=[(name, put)]).cpu()) < 1e-4
    kw = dict(sites=["resid_pre", "resid_mid", "rec.state"], layers=[i], positions=[2, 5, 9, 12], progress=False,
              keep_all=True)
    a, b = patching.sweep(h1, pairs(), **kw), patching.sweep(h2, pairs(), **kw)
    assert (a.logit_diff - b.logit_diff).abs().max() < 1e-3
    capture(two, x.cpu(), [name, "blocks.3.resid_post"], tmp_path / "c2", batch_size=4, progress=False)
    got = load_capture(tmp_path / "c2")
    assert rel(got[name], c1[name]) < 1e-3


def test_a_sweep_root_as_model_names_its_runs(tmp_path):
    from interp.models import load_any
    (tmp_path / "seed0").mkdir()
    (tmp_path / "seed0" / "config.json").write_text("{}")
    with pytest.raises(InterpError, match=r"no config.json in '.*' \(it holds the runs seed0: name one, e.g. "
                                          r"'.*seed0'\); valid: a zoo model directory"):
        load_any(str(tmp_path))
