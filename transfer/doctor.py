"""Report what is installed and which detectron2 is in use.

    python -m transfer.doctor                      # versions; detectron2 tier, commit, ops, stand-ins
    python -m transfer.doctor --summary            # one line (make test prints it first)
    python -m transfer.doctor --expect compiled    # exit 1 unless detectron2's compiled ops are present
    python -m transfer.doctor --expect sources     # exit 1 unless it is tier 3 (v0.6 sources + stand-ins)

Tiers (tools/install/detectron2.sh): 1 = detectron2 was already importable, 2 = built from source (a local
DETECTRON2_SOURCE archive or folder, or the official repository) with compiled ops, 3 = the v0.6 Python
sources from the PyPI sdist without compiled ops (stand-ins from transfer/compat.py). The install script
records tiers 2 and 3, the source, its sha256 and the commit in ``sys.prefix/fastsiam-detectron2.json``;
without that record (tier 1, or a detectron2 installed by hand) the commit is read from a git checkout
holding the package (an editable install) where there is one, else it is unknown.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import subprocess
import sys

PROVENANCE = "fastsiam-detectron2.json"


def _version(name: str) -> str:
    try:
        mod = importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 - report any import failure, that is the point of a doctor
        return f"not importable ({type(e).__name__}: {e})"
    return getattr(mod, "__version__", "installed")


def provenance() -> dict:
    """What tools/install/detectron2.sh recorded for this environment ({} when it recorded nothing)."""
    path = os.path.join(sys.prefix, PROVENANCE)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _package_dir() -> str | None:
    spec = importlib.util.find_spec("detectron2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def _git_commit(package_dir: str | None) -> str | None:
    """The commit of a detectron2 git checkout whose package this is (an editable install), if any; a git
    repository that merely contains the virtualenv does not count."""
    if not package_dir:
        return None
    source = os.path.dirname(os.path.realpath(package_dir))
    try:
        top = subprocess.run(["git", "-C", source, "rev-parse", "--show-toplevel", "HEAD"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = top.stdout.split()
    if top.returncode != 0 or len(lines) != 2 or os.path.realpath(lines[0]) != source:
        return None
    return lines[1]


def detectron2_info(compiled: bool) -> dict:
    """detectron2's version, tier, commit (if known), source and compiled-ops file."""
    record, package_dir = provenance(), _package_dir()
    if record.get("tier") == 3 and compiled:
        record = {}  # the record predates a detectron2 installed over it by hand: trust what is there
    if record.get("tier") in (2, 3):
        what = "built from source, compiled ops" if record["tier"] == 2 else "v0.6 sources"
        tier = f"{record['tier']} ({what})"
    else:
        tier = "1 or 2 (compiled ops present)" if compiled else "3 (v0.6 sources, no compiled ops)"
    ops = None
    if package_dir:
        ops = next((f for f in sorted(os.listdir(package_dir))
                    if f.startswith("_C") and f.endswith((".so", ".pyd"))), None)
    return {"detectron2": _version("detectron2"), "detectron2_tier": tier,
            "detectron2_commit": record.get("commit") or _git_commit(package_dir) or "unknown",
            "detectron2_source": record.get("source") or (package_dir or "none"),
            "compiled_ops": f"yes ({ops})" if compiled and ops else ("yes" if compiled else "no")}


def report() -> dict:
    import torch

    from transfer import compat

    info = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cuda": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "torchvision": _version("torchvision"),
        "numpy": _version("numpy"),
        "pillow": _version("PIL"),
        "pycocotools": _version("pycocotools"),
        "faster_coco_eval": _version("faster_coco_eval"),
        "cityscapesscripts": _version("cityscapesscripts"),
    }
    compiled = compat.has_compiled_ops()
    stand_ins = compat.apply()
    info.update(detectron2_info(compiled))
    info["stand_ins"] = stand_ins
    return info


def summary(info: dict) -> str:
    commit = info["detectron2_commit"]
    return (f"detectron2 {info['detectron2']}, tier {info['detectron2_tier']}, commit "
            f"{commit[:12] if commit != 'unknown' else commit}, compiled ops {info['compiled_ops']}, "
            f"torch {info['torch']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m transfer.doctor", description=__doc__.split("\n")[0])
    ap.add_argument("--summary", action="store_true", help="one line: detectron2 version, tier, commit, ops")
    ap.add_argument("--expect", choices=("compiled", "sources"),
                    help="exit 1 unless this detectron2 world is installed")
    args = ap.parse_args(argv)
    info = report()
    if args.summary:
        print(summary(info))
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            if isinstance(value, list):
                value = "; ".join(map(str, value)) or "none"
            print(f"{key:<{width}}  {value}")
    if str(info["detectron2"]).startswith("not importable"):
        return 1
    compiled = info["compiled_ops"].startswith("yes")
    if args.expect and compiled != (args.expect == "compiled"):
        print(f"error: expected the {args.expect} detectron2 world, found compiled ops: "
              f"{info['compiled_ops']} (a build that failed falls back to tier 3: see the install log, then "
              f"remove the virtualenv and run make again)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
