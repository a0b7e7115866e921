"""Datasets for transfer: users' own COCO-format data, and checks that turn bad data into one-line errors.

detectron2 registers its builtin splits (coco_2017_*, keypoints_coco_2017_*, cityscapes_fine_instance_seg_*)
under $DETECTRON2_DATASETS itself. This module adds
- ``inspect_coco_json(name, json_file, image_dir)`` then ``register(summary)``: any COCO-format json + image
  folder (instances, polygon or RLE masks, keypoints), checked before it is registered
  (transfer/annotations.py; train_net's ``--dataset-train NAME=JSON:IMAGE_DIR``); ``summary(name)`` for
  builtin and user datasets alike (transfer/data_checks.py checks them against each other and the config);
- ``check_dataset(name)``: the name is registered and its files exist, and loading it (later, in detectron2's
  data loaders) reports a malformed annotation file or an annotation whose image is missing;
- ``CheckedMapper``: an image that cannot be decoded is reported by its path.
Each problem is a ``DatasetError`` whose message is one line meant for the user; train_net prints it and exits
with status 2.
"""
from __future__ import annotations

import difflib
import os
import re

from transfer import compat

compat.apply()  # before the first detectron2 import

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data.datasets import register_coco_instances  # noqa: E402
from detectron2.data.detection_utils import SizeMismatchError  # noqa: E402
from PIL import Image  # noqa: E402

from transfer import annotations  # noqa: E402
from transfer.annotations import DatasetError, Summary, keypoint_flip_map  # noqa: E402,F401

SPEC_RE = re.compile(r"^(?P<name>[\w.\-]+)=(?P<json>.+?\.json):(?P<image_dir>.+)$")
# errors a loader raises on a malformed annotation file (json syntax, missing fields, wrong types, bad ids)
LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError, IndexError, AssertionError)
# errors decoding an image: unreadable/truncated (OSError), broken PNG chunks (SyntaxError), a size that
# differs from the annotation (SizeMismatchError), a decompression bomb
DECODE_ERRORS = (OSError, SyntaxError, SizeMismatchError, Image.DecompressionBombError)
README_OWN_DATA = "README 'Your own COCO-format data'"
USER: dict[str, Summary] = {}  # datasets registered from --dataset-train/--dataset-test, by name
LOADED: dict[str, int] = {}  # images each dataset's loader returned (builtin splits' counts, for provenance)


def one_line(e: BaseException) -> str:
    """The user-facing line of an error, also when a DataLoader worker re-raised it with the worker's
    traceback in its message (torch puts the original ``DatasetError: <line>`` last)."""
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    return re.sub(r"^[\w.]*DatasetError: ", "", lines[-1]) if lines else type(e).__name__


def parse_spec(spec: str) -> tuple[str, str, str]:
    """``NAME=JSON:IMAGE_DIR`` -> (name, json_file, image_dir)."""
    m = SPEC_RE.match(spec)
    if not m:
        raise DatasetError(f"dataset spec {spec!r} is not NAME=ANNOTATIONS.json:IMAGE_DIR")
    return m["name"], m["json"], m["image_dir"]


def read_coco_json(path: str) -> dict:
    """Parse a COCO-format annotation file and check its top-level structure."""
    return annotations.read(path)[0]


def inspect_coco_json(name: str, json_file: str, image_dir: str) -> tuple[Summary, dict]:
    """Read and check a user's COCO-format file (not yet registered): its Summary and the parsed data."""
    if name in DatasetCatalog.list():
        raise DatasetError(f"dataset name {name!r} is taken (a detectron2 builtin?); choose another NAME")
    data, sha256 = annotations.read(json_file)
    if not os.path.isdir(image_dir):
        raise DatasetError(f"image folder {image_dir} (for {json_file}) does not exist")
    return annotations.summarize(name, json_file, image_dir, data, sha256), data


def register(s: Summary, json_file: str | None = None) -> None:
    """Register an inspected dataset with detectron2 (evaluated by COCOEvaluator), reading `json_file` (a
    completed copy, see annotations.complete) or the user's file."""
    metadata = {}
    if s.keypoint_names:  # detectron2 flips keypoints in training augmentation and needs to know the pairs
        metadata = {"keypoint_names": list(s.keypoint_names),
                    "keypoint_flip_map": keypoint_flip_map(s.keypoint_names)}
    register_coco_instances(s.name, metadata, os.path.abspath(json_file or s.json_file), s.image_root)
    USER[s.name] = s


def register_coco_json(name: str, json_file: str, image_dir: str) -> Summary:
    """Inspect and register a COCO-format dataset under `name` in one step (no completed copy)."""
    s, _ = inspect_coco_json(name, json_file, image_dir)
    register(s)
    return s


def summary(name: str) -> Summary:
    """The Summary of a registered dataset: the user's from its inspection, a builtin's from detectron2's
    metadata (its builtin splits are the published COCO and Cityscapes files, with masks)."""
    if name in USER:
        return USER[name]
    meta = MetadataCatalog.get(name)
    classes = meta.get("thing_classes")
    if not classes:
        raise DatasetError(f"dataset {name!r} has no thing_classes: not an instance detection dataset")
    id_of = {v: k for k, v in (meta.get("thing_dataset_id_to_contiguous_id") or {}).items()}
    json_file = meta.get("json_file")
    return Summary(name, json_file, meta.get("image_root") or meta.get("image_dir"), None, None,
                   [(id_of.get(i), c) for i, c in enumerate(classes)],
                   list(meta.get("keypoint_names") or []), builtin=True, polygon=1, objects=1)


def check_dataset(name: str) -> None:
    """Fail now, with one line, if `name` is unknown or its files are missing; make its later loading report a
    malformed annotation file or a missing image as a DatasetError."""
    registered = DatasetCatalog.list()
    if name not in registered:
        close = difflib.get_close_matches(name, registered, n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise DatasetError(f"unknown dataset {name!r}: not a detectron2 builtin split, and not given with "
                           f"--dataset-train/--dataset-test NAME=JSON:IMAGE_DIR{hint} ({README_OWN_DATA})")
    meta = MetadataCatalog.get(name)
    for key in ("json_file", "image_root", "image_dir", "gt_dir"):
        path = meta.get(key)
        if path and not os.path.exists(path):
            root = os.getenv("DETECTRON2_DATASETS", "datasets")
            raise DatasetError(f"dataset {name!r}: {key} {path} does not exist (detectron2's builtin "
                               f"datasets are read from $DETECTRON2_DATASETS, now {root!r}; see README "
                               "'Full-scale recipe' for the layout, or give your own files with "
                               f"--dataset-train/--dataset-test: {README_OWN_DATA})")
    _guard(name, meta.get("json_file") or meta.get("gt_dir") or name)


def _guard(name: str, source: str) -> None:
    """Re-register `name`'s loader wrapped: load errors and missing images become DatasetErrors."""
    loader = DatasetCatalog[name]
    if getattr(loader, "checked", False):
        return

    def load():
        try:
            dicts = loader()
        except LOAD_ERRORS as e:
            raise DatasetError(f"dataset {name!r}: malformed annotations in {source}: "
                               f"{type(e).__name__}: {one_line(e)}") from None
        if not dicts:
            raise DatasetError(f"dataset {name!r}: no images in {source}")
        for d in dicts:  # detectron2's COCO loader copies annotations as they are; a bad one fails much later
            for a in d.get("annotations", []):
                if len(a.get("bbox") or ()) != 4 or "category_id" not in a:
                    raise DatasetError(f"dataset {name!r}: malformed annotations in {source}: an annotation "
                                       f"of {d['file_name']} lacks a 4-number bbox or a category_id")
        files = sorted({d["file_name"] for d in dicts})
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise DatasetError(f"dataset {name!r}: {len(missing)} of {len(files)} annotated images are "
                               f"missing, first: {missing[0]}")
        LOADED[name] = len(dicts)
        return dicts

    load.checked = True
    DatasetCatalog.remove(name)
    DatasetCatalog.register(name, load)


class CheckedMapper:
    """Wraps a detectron2 dataset mapper: an image that cannot be decoded is a DatasetError naming it."""

    def __init__(self, mapper):
        self.mapper = mapper

    def __call__(self, dataset_dict: dict) -> dict:
        try:
            return self.mapper(dataset_dict)
        except SizeMismatchError as e:  # builtin datasets' images are not checked up front (image_check.py)
            raise DatasetError(f"{one_line(e)} detectron2 reads an image after its EXIF orientation, so the "
                               "json's width/height must be the displayed size") from None
        except DECODE_ERRORS as e:
            raise DatasetError(f"cannot read image {dataset_dict.get('file_name')}: {type(e).__name__}: "
                               f"{one_line(e)}; fix or remove it (and its annotations)") from None
