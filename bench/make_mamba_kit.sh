#!/usr/bin/env bash
# Assemble .mamba/, the offline build kit that bench/build_mamba_ssm.sh carries to a GPU host (run on a machine with
# PyPI access, from the repo root):  bash bench/make_mamba_kit.sh
# = mamba-ssm 2.3.2.post1's sdist from PyPI (sha256 checked), stripped of tests, README, egg-info and the Mamba-3
# tilelang / cute ops, plus bench/mamba_ssm_kit.patch (sm_90-only setup.py, pyproject without [project], Mamba2's
# unfused path when causal-conv1d is missing; every change marked "[kit]"), plus the einops and ninja wheels.
set -euo pipefail
VER=2.3.2.post1
SHA=104cc47e9101e5401a675fa2b784f2952b9b037f3b1dd83b5ac544394e95d028
K=.mamba
rm -rf "$K" && mkdir -p "$K/wheels"
python3 - "$VER" "$SHA" "$K/sdist.tar.gz" <<'PY'
import hashlib, json, sys, urllib.request
ver, sha, out = sys.argv[1:]
rel = json.load(urllib.request.urlopen("https://pypi.org/pypi/mamba-ssm/json"))["releases"][ver]
url = next(f["url"] for f in rel if f["packagetype"] == "sdist")
data = urllib.request.urlopen(url).read()
if hashlib.sha256(data).hexdigest() != sha:
    sys.exit(f"sha256 mismatch for {url}")
open(out, "wb").write(data)
PY
tar xzf "$K/sdist.tar.gz" -C "$K" && rm "$K/sdist.tar.gz"
S=$K/mamba_ssm-$VER
rm -rf "$S/tests" "$S/README.md" "$S/PKG-INFO" "$S/setup.cfg" "$S"/*.egg-info "$S/mamba_ssm/ops/tilelang" "$S/mamba_ssm/ops/cute"
patch -s -d "$S" -p1 < bench/mamba_ssm_kit.patch
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform any einops==0.8.2 -d "$K/wheels"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
  ninja==1.13.2 -d "$K/wheels"
grep -q '^\.mamba$' .git/info/exclude 2>/dev/null || echo .mamba >> .git/info/exclude
du -sh "$K"
