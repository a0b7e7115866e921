#!/usr/bin/env bash
# Provision detectron2 into the given Python environment, in tiers (see README "Troubleshooting"):
#   1. detectron2 already importable: use it.
#   2. Its official repository reachable: build from source at commit c69939aa (Nov 2024, the last commit
#      before its Cityscapes code imports an internal module, detectron2 issue #5436).
#   3. Otherwise: the detectron2 v0.6 Python sources from the PyPI sdist pb1-detectron2==0.6, installed as a
#      plain package without compiled ops; transfer/compat.py supplies the stand-ins.
# Usage: bash tools/install_detectron2.sh PYTHON
set -euo pipefail
PY=${1:?usage: install_detectron2.sh PYTHON}
D2_COMMIT=c69939aa
D2_REPO=https://github.com/facebookresearch/detectron2.git
SDIST_SHA256=5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29

if "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('detectron2') is None)" 2>/dev/null; then
    echo "detectron2: tier 1 (already importable)"
    exit 0
fi

if [ "${FASTSIAM_D2_SKIP_SOURCE:-0}" != 1 ] && timeout 8 git ls-remote --heads "$D2_REPO" >/dev/null 2>&1; then
    echo "detectron2: tier 2 (building $D2_REPO@$D2_COMMIT)"
    tmp=$(mktemp -d)
    if git clone -q "$D2_REPO" "$tmp/detectron2" && git -C "$tmp/detectron2" checkout -q "$D2_COMMIT" \
        && "$PY" -m pip install --no-build-isolation "$tmp/detectron2"; then
        rm -rf "$tmp"; exit 0
    fi
    rm -rf "$tmp"
    echo "detectron2: tier 2 failed; falling back to tier 3"
fi

echo "detectron2: tier 3 (v0.6 Python sources from the PyPI sdist pb1-detectron2==0.6, no compiled ops)"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# --no-build-isolation: its setup.py imports torch, which only the target environment has.
"$PY" -m pip download -q --no-deps --no-binary :all: --no-build-isolation pb1-detectron2==0.6 -d "$tmp"
echo "$SDIST_SHA256  $tmp/pb1-detectron2-0.6.tar.gz" | sha256sum -c --quiet -
tar xzf "$tmp/pb1-detectron2-0.6.tar.gz" -C "$tmp"
site=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# Copy to a temporary name, then rename: an interrupted install never leaves a half package behind.
rm -rf "$site/detectron2.partial"
cp -r "$tmp/pb1-detectron2-0.6/detectron2" "$site/detectron2.partial"
mv "$site/detectron2.partial" "$site/detectron2"
echo "detectron2: installed v0.6 sources into $site/detectron2"
