"""Report what is installed and which detectron2 tier is active.

    python -m transfer.doctor

Tiers (tools/install_detectron2.sh): 1 = detectron2 was already importable, 2 = built from source,
3 = the v0.6 Python sources from the PyPI sdist without compiled ops (stand-ins from transfer/compat.py).
A full build (tier 1 or 2) is reported as "compiled ops present".
"""
from __future__ import annotations

import importlib
import sys


def _version(name: str) -> str:
    try:
        mod = importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 - report any import failure, that is the point of a doctor
        return f"not importable ({type(e).__name__}: {e})"
    return getattr(mod, "__version__", "installed")


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
    info["detectron2"] = _version("detectron2")
    tier = "1 or 2 (compiled ops present)" if compiled else "3 (v0.6 sources, no compiled ops)"
    info["detectron2_tier"] = tier
    info["compiled_ops"] = compiled
    info["stand_ins"] = stand_ins
    return info


def main() -> int:
    info = report()
    width = max(len(k) for k in info)
    for key, value in info.items():
        if isinstance(value, list):
            value = "; ".join(map(str, value)) or "none"
        print(f"{key:<{width}}  {value}")
    return 0 if not str(info["detectron2"]).startswith("not importable") else 1


if __name__ == "__main__":
    sys.exit(main())
