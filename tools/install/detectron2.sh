#!/usr/bin/env bash
# Provision detectron2 into the given Python environment, in tiers (see README "Troubleshooting"):
#   1. detectron2 already importable: use it.
#   2. Built from source at commit c69939aa (Nov 2024, the last commit before its Cityscapes code imports an
#      internal module, detectron2 issue #5436), with its compiled ops:
#      a. offline, from DETECTRON2_SOURCE=PATH (a source archive such as `git archive` output, or a source
#         folder), tried first: many GPU clusters have no internet access;
#      b. else from its official repository, when reachable.
#      The built wheel is cached outside the repository (FASTSIAM_CACHE, default ~/.cache/fastsiam), keyed by the
#      source's sha256 and the Python/torch it was built against, so a second clone does not compile again.
#   3. Otherwise, or when a build fails (the reason is printed): the detectron2 v0.6 Python sources from the
#      PyPI sdist pb1-detectron2==0.6, installed as a plain package without compiled ops;
#      transfer/compat.py supplies the stand-ins.
# Each tier records what it installed in PYTHON's sys.prefix/fastsiam-detectron2.json (python -m
# transfer.doctor reports it). FASTSIAM_D2_TIER=3 skips tier 2 (both routes).
# Usage: [DETECTRON2_SOURCE=PATH] bash tools/install/detectron2.sh PYTHON
set -euo pipefail
PY=${1:?usage: [DETECTRON2_SOURCE=PATH] install_detectron2.sh PYTHON}
D2_COMMIT=c69939aa85460e8135f40bce908a6cddaa73065f
D2_REPO=https://github.com/facebookresearch/detectron2.git
# sha256 of `git archive --format=tar.gz` of $D2_COMMIT (../shared/vendor/detectron2-c69939aa.tar.gz)
D2_ARCHIVE_SHA256=2ebea26e35d3d88b0cd1a8f0fa9fa174bbe7edc740151b99791f7a5c20472dd4
SDIST_SHA256=5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29
CACHE=${FASTSIAM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fastsiam}/detectron2
PREFIX=$("$PY" -c "import sys; print(sys.prefix)")

record() {  # record TIER SOURCE SHA256 COMMIT: what is installed, for transfer.doctor
    "$PY" - "$PREFIX/fastsiam-detectron2.json" "$@" <<'EOF'
import json, os, sys
path, tier, source, sha, commit = sys.argv[1:]
with open(path + ".tmp", "w") as f:
    json.dump({"tier": int(tier), "source": source, "sha256": sha or None, "commit": commit or None}, f, indent=1)
os.replace(path + ".tmp", path)
EOF
}

if "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('detectron2') is None)" 2>/dev/null; then
    echo "detectron2: tier 1 (already importable)"
    exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# build_and_install SOURCE_DIR KEY: the cached wheel for KEY if there is one, else build one, cache it, install it.
build_and_install() {
    local src=$1 key=$2 tag dir wheel
    # compiled ops are tied to the Python and torch they were built against, and to CUDA or not
    tag=$("$PY" -c "if True:
        import os, sys, torch
        from torch.utils.cpp_extension import CUDA_HOME
        cuda = os.environ.get('FORCE_CUDA') == '1' or (torch.cuda.is_available() and CUDA_HOME is not None)
        print(f'py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}-{\"cuda\" if cuda else \"cpu\"}')
    " 2>/dev/null) || { echo "detectron2: cannot build: torch is not importable in $PY"; return 1; }
    dir=$CACHE/$key/$tag
    wheel=$(ls "$dir"/detectron2-*.whl 2>/dev/null | head -n 1 || true)
    if [ -n "$wheel" ]; then
        echo "detectron2: using the cached wheel $wheel (no compile)"
    else
        echo "detectron2: compiling (several minutes on a few cores; MAX_JOBS=${MAX_JOBS:-all cores}) ..."
        local start=$SECONDS
        if ! "$PY" -m pip wheel --no-build-isolation --no-deps -w "$tmp/wheel" "$src" >"$tmp/build.log" 2>&1; then
            echo "detectron2: the build failed; the end of its log:"
            grep -iE "error|fatal" "$tmp/build.log" | tail -n 8 | sed 's/^/    /'
            tail -n 4 "$tmp/build.log" | sed 's/^/    /'
            return 1
        fi
        echo "detectron2: compiled in $((SECONDS - start)) s; caching the wheel in $dir"
        mkdir -p "$dir"
        for w in "$tmp"/wheel/detectron2-*.whl; do  # copy, then rename: no half wheel in the cache
            cp "$w" "$dir/.$(basename "$w").partial" && mv "$dir/.$(basename "$w").partial" "$dir/$(basename "$w")"
            wheel=$dir/$(basename "$w")
        done
    fi
    "$PY" -m pip install -q --no-deps --no-index "$wheel"
}

# ---------------------------------------------------------------- tier 2a: a local source
if [ "${FASTSIAM_D2_TIER:-}" != 3 ] && [ -n "${DETECTRON2_SOURCE:-}" ]; then
    src=$DETECTRON2_SOURCE
    echo "detectron2: tier 2 (building from DETECTRON2_SOURCE=$src, offline)"
    ok=1 sha="" commit="" dir=""
    if [ -f "$src" ]; then
        sha=$(sha256sum "$src" | cut -d' ' -f1)
        # `git archive` writes the commit into the archive's pax header; the pinned commit's archive must be
        # exactly the one whose sha256 is known
        commit=$("$PY" -c "import sys, tarfile; print(tarfile.open(sys.argv[1]).pax_headers.get('comment', ''))" \
                 "$src" 2>/dev/null || true)
        if { [ "$commit" = "$D2_COMMIT" ] || [[ "$(basename "$src")" == *"${D2_COMMIT:0:8}"* ]]; } \
                && [ "$sha" != "$D2_ARCHIVE_SHA256" ]; then
            echo "detectron2: $src claims commit ${D2_COMMIT:0:8} but its sha256 is $sha, not $D2_ARCHIVE_SHA256" \
                 "(damaged or altered); not building it"
            ok=0
        elif ! "$PY" -c "import shutil, sys; shutil.unpack_archive(sys.argv[1], sys.argv[2])" "$src" "$tmp/src" \
                2>"$tmp/unpack.log"; then
            echo "detectron2: cannot unpack $src: $(tail -n 1 "$tmp/unpack.log")"
            ok=0
        else
            dir=$(dirname "$(find "$tmp/src" -maxdepth 2 -name setup.py | head -n 1)")
        fi
    elif [ -d "$src" ]; then
        commit=$(git -C "$src" rev-parse HEAD 2>/dev/null || true)
        # a folder's key: the sha256 of its files (names and contents), build outputs left out
        sha=$(cd "$src" && find . -type f ! -path "./.git/*" ! -path "./build/*" ! -path "*/__pycache__/*" \
              ! -name "*.so" ! -path "*.egg-info/*" -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum \
              | cut -d' ' -f1)
        cp -r "$src" "$tmp/src"  # build in a copy: the user's folder stays as it was
        dir=$tmp/src
    else
        echo "detectron2: DETECTRON2_SOURCE=$src is neither a file nor a folder"
        ok=0
    fi
    if [ "$ok" = 1 ] && [ ! -f "$dir/setup.py" ]; then
        echo "detectron2: no setup.py in $src: not a detectron2 source tree"
        ok=0
    fi
    if [ "$ok" = 1 ] && build_and_install "$dir" "sha256-$sha"; then
        record 2 "$src" "$sha" "$commit"
        exit 0
    fi
    echo "detectron2: tier 2 from DETECTRON2_SOURCE failed (reason above)"
fi

# ---------------------------------------------------------------- tier 2b: the official repository
if [ "${FASTSIAM_D2_TIER:-}" != 3 ] && [ "${FASTSIAM_D2_SKIP_SOURCE:-0}" != 1 ] \
        && timeout 8 git ls-remote --heads "$D2_REPO" >/dev/null 2>&1; then
    echo "detectron2: tier 2 (building $D2_REPO@${D2_COMMIT:0:8})"
    if git clone -q "$D2_REPO" "$tmp/clone" && git -C "$tmp/clone" checkout -q "$D2_COMMIT" \
            && build_and_install "$tmp/clone" "commit-$D2_COMMIT"; then
        record 2 "$D2_REPO" "" "$D2_COMMIT"
        exit 0
    fi
    echo "detectron2: tier 2 from $D2_REPO failed (reason above)"
fi

echo "detectron2: tier 3 (v0.6 Python sources from the PyPI sdist pb1-detectron2==0.6, no compiled ops)"
# --no-build-isolation: its setup.py imports torch, which only the target environment has.
"$PY" -m pip download -q --no-deps --no-binary :all: --no-build-isolation pb1-detectron2==0.6 -d "$tmp/sdist"
echo "$SDIST_SHA256  $tmp/sdist/pb1-detectron2-0.6.tar.gz" | sha256sum -c --quiet -
tar xzf "$tmp/sdist/pb1-detectron2-0.6.tar.gz" -C "$tmp/sdist"
site=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# Copy to a temporary name, then rename: an interrupted install never leaves a half package behind.
rm -rf "$site/detectron2.partial"
cp -r "$tmp/sdist/pb1-detectron2-0.6/detectron2" "$site/detectron2.partial"
mv "$site/detectron2.partial" "$site/detectron2"
record 3 "PyPI sdist pb1-detectron2==0.6" "$SDIST_SHA256" ""
echo "detectron2: installed v0.6 sources into $site/detectron2"
