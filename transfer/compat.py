"""The one place that adapts detectron2 (v0.6 sources, or a full build) to this environment.

Every workaround for detectron2, cityscapesscripts, numpy 2 and Pillow >= 10 lives here, applied once by
`apply()` and only where it is needed. Nothing inside site-packages is edited. Import detectron2 through
this module (``from transfer import compat; compat.apply()``) before the first ``import detectron2``.

What it does, and why:
- ``detectron2._C`` stand-in: the v0.6 sources from the PyPI sdist carry no compiled ops, but detectron2
  imports ``_C`` at import time (deformable conv, rotated boxes, the fast COCO evaluator). None of the
  paper's protocols use those ops; calling one raises an error naming the missing build.
- numpy 2 removed ``np.int``/``np.float``/``np.str``/``np.object`` (detectron2 0.6 ``data/build.py`` uses
  ``np.int`` inside a try block, so the class histogram silently disappears) and ``np.in1d``
  (cityscapesscripts 2.3.0 uses it).
- Pillow >= 10 removed ``Image.LINEAR``, a default argument in detectron2 0.6 ``data/transforms``.
- Fast COCO evaluation: without compiled ops, ``COCOeval_opt`` is replaced by ``faster_coco_eval``'s
  ``COCOeval_faster`` (stats equal pycocotools' to 1e-14; tested in tests/transfer/test_compat.py).
- cityscapesscripts 2.3.0: ``writeDict2JSON`` cannot serialise numpy integers, and the instance evaluator
  writes ``matches.json`` into the current working directory. Its ``evaluateMatches`` crashes with an
  IndexError when a class has ground truth and predictions but every prediction is ignored (``cumsum`` of an
  empty array, then ``[-1]``); seen on weakly trained models.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import types

_APPLIED: list[str] = []
_DONE = False


class MissingCompiledOps(RuntimeError):
    pass


def _stand_in_c() -> types.ModuleType:
    mod = types.ModuleType("detectron2._C")
    mod.__doc__ = "Stand-in for detectron2's compiled ops (installed by transfer.compat)."
    mod.__file__ = __file__
    mod.IS_STAND_IN = True

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise MissingCompiledOps(
            f"detectron2 op '{name}' needs detectron2's compiled extension, which this install lacks "
            "(tier 3: v0.6 Python sources). Build detectron2 from source to use it; "
            "see README 'Troubleshooting'."
        )

    mod.__getattr__ = __getattr__
    # detectron2's collect_env_info (run by default_setup, i.e. by every
    # tools/train_net.py-style trainer) reports the build: answer "not built" instead of raising.
    mod.get_compiler_version = lambda: "not built (transfer.compat stand-in)"
    mod.get_cuda_version = lambda: "not built (transfer.compat stand-in)"
    mod.has_cuda = lambda: False
    return mod


def has_compiled_ops() -> bool:
    """True when a real compiled ``detectron2._C`` exists (tier 1 or 2)."""
    mod = sys.modules.get("detectron2._C")
    if mod is not None:
        return not getattr(mod, "IS_STAND_IN", False)
    spec = importlib.util.find_spec("detectron2")
    if spec is None or not spec.submodule_search_locations:
        return False
    pkg_dir = list(spec.submodule_search_locations)[0]
    return any(f.startswith("_C") and f.endswith((".so", ".pyd")) for f in os.listdir(pkg_dir))


def _patch_numpy() -> None:
    import numpy as np

    for name, value in (("int", int), ("float", float), ("str", str), ("object", object)):
        if name not in np.__dict__:
            setattr(np, name, value)
            _APPLIED.append(f"numpy.{name} alias")
    if "in1d" not in np.__dict__:
        np.in1d = lambda ar1, ar2, assume_unique=False, invert=False: np.isin(
            np.asarray(ar1).ravel(), ar2, assume_unique=assume_unique, invert=invert
        )
        _APPLIED.append("numpy.in1d alias")


def _patch_pillow() -> None:
    from PIL import Image

    if not hasattr(Image, "LINEAR"):
        Image.LINEAR = Image.BILINEAR
        _APPLIED.append("PIL.Image.LINEAR alias")


def fast_cocoeval_class():
    """``faster_coco_eval.COCOeval_faster`` made to accept pycocotools ``COCO`` objects, as detectron2 passes.

    For keypoints it reads ``cocoGt.cat_img_map``, which only its own COCO class has (an alias of
    pycocotools' ``catToImgs``).
    """
    import faster_coco_eval

    class COCOevalFast(faster_coco_eval.COCOeval_faster):
        def __init__(self, cocoGt=None, cocoDt=None, iouType="segm", **kwargs):
            for coco in (cocoGt, cocoDt):
                if coco is not None and not hasattr(coco, "cat_img_map"):
                    coco.cat_img_map = coco.catToImgs
            super().__init__(cocoGt, cocoDt, iouType, **kwargs)

    return COCOevalFast


def _patch_fast_coco_eval() -> None:
    import faster_coco_eval
    from detectron2.evaluation import coco_evaluation

    coco_evaluation.COCOeval_opt = fast_cocoeval_class()
    _APPLIED.append(f"COCOeval_opt -> faster_coco_eval {faster_coco_eval.__version__}")


def _json_default(o):
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return o.__dict__


def _patch_cityscapesscripts() -> None:
    try:
        from cityscapesscripts.evaluation import evalInstanceLevelSemanticLabeling as cs_eval
    except ImportError:
        return

    def write_dict_to_json(data, file_name):
        # The evaluator dumps a debug "matches.json" into the working directory; keep it next to the
        # predictions (the evaluator's temporary folder) instead.
        if not os.path.isabs(file_name):
            file_name = os.path.join(cs_eval.args.predictionPath or ".", file_name)
        tmp = file_name + ".tmp"
        with open(tmp, "w") as f:
            json.dump(data, f, default=_json_default, sort_keys=True, indent=1)
        os.replace(tmp, file_name)

    cs_eval.writeDict2JSON = write_dict_to_json
    _APPLIED.append("cityscapesscripts writeDict2JSON (numpy ints, no matches.json in cwd)")
    if not isinstance(cs_eval.np, _EmptySafeCumsumNumpy):
        cs_eval.np = _EmptySafeCumsumNumpy()
        _APPLIED.append("cityscapesscripts evaluateMatches (classes whose predictions are all ignored)")


class _EmptySafeCumsumNumpy:
    """numpy for cityscapesscripts' instance evaluator, except that the cumsum of an empty array is [0].

    ``evaluateMatches`` calls ``np.cumsum`` once, on the sorted match flags of a class, and then reads
    element -1. With the flags empty (ground truth present, every prediction ignored) a cumsum of [0] makes
    the rest of that code compute a precision-recall curve of one artificial point, i.e. AP 0: the value it
    already assigns to a class with ground truth and no predictions.
    """

    def __getattr__(self, name):
        import numpy

        return getattr(numpy, name)

    @staticmethod
    def cumsum(a, *args, **kwargs):
        import numpy

        a = numpy.asarray(a)
        return numpy.zeros(1) if a.size == 0 else numpy.cumsum(a, *args, **kwargs)


def apply() -> list[str]:
    """Apply every needed fix once; return the list of stand-ins in use. Safe to call repeatedly."""
    global _DONE
    if _DONE:
        return list(_APPLIED)
    _patch_numpy()
    _patch_pillow()
    compiled = has_compiled_ops()
    if not compiled and "detectron2._C" not in sys.modules:
        sys.modules["detectron2._C"] = _stand_in_c()
        _APPLIED.append("detectron2._C stand-in (no compiled ops)")
    if not compiled:
        _patch_fast_coco_eval()
    _patch_cityscapesscripts()
    _DONE = True
    return list(_APPLIED)


def applied() -> list[str]:
    return list(_APPLIED)
