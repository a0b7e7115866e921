"""The datasets of a run checked against each other and against the config, before anything is trained:
the classes the model learns on are the classes every test set is scored on, a Mask R-CNN has masks to
learn, a keypoint R-CNN has named keypoints of the right count; and the mask format detectron2 needs.

detectron2 numbers the classes by sorted category id (``load_coco_json``), and COCOEvaluator maps a predicted
class back through the *test* set's own ids: a test set whose sorted (id, name) list differs from the
training set's scores every detection against another class, without an error. Each problem is a
DatasetError (one line, train_net exits 2); the fix is named in the message.
"""
from __future__ import annotations

from transfer.annotations import DatasetError, Summary

README = "README 'Your own COCO-format data'"


def _describe(cat: tuple[int | None, str]) -> str:
    return f"{cat[1]!r}" if cat[0] is None else f"id {cat[0]} {cat[1]!r}"


def check_categories(ref: Summary, other: Summary, role: str) -> None:
    """`other`'s classes must be `ref`'s: same count, and id for id, name for name in class-index order
    (where one side is a builtin without ids, Cityscapes, names only)."""
    a, b = ref.categories, other.categories
    fix = "use one category list in both files"
    if other.builtin and not ref.builtin:
        fix = f"give your test set with --dataset-test NAME=JSON:IMAGE_DIR ({other.name} is the config's)"
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        same = x[1] == y[1] and (x[0] is None or y[0] is None or x[0] == y[0])
        if not same:
            raise DatasetError(
                f"{role} {other.name!r} ({other.source}) has other categories than {ref.name!r} "
                f"({ref.source}), whose classes the model learns: class {i} is {_describe(y)} there and "
                f"{_describe(x)} here (classes are the categories sorted by id); {fix} ({README})")
    if len(a) != len(b):
        extra, where = (b[len(a)], other) if len(b) > len(a) else (a[len(b)], ref)
        raise DatasetError(
            f"{role} {other.name!r} ({other.source}) has {len(b)} categories and {ref.name!r} ({ref.source}) "
            f"has {len(a)}: the first without a match is {_describe(extra)} in {where.name!r}; {fix} "
            f"({README})")


def check_masks(s: Summary, train: bool) -> None:
    """MODEL.MASK_ON: every training object needs a mask (detectron2 takes the mask field of an image's
    first object for all of them); a test set's crowd objects too (COCOeval scores masks against them)."""
    missing = s.no_mask + (0 if train else s.crowd_no_mask)
    if missing:
        kind = "training" if train else "test"
        raise DatasetError(
            f"{kind} set {s.name!r} ({s.source}): {missing} of {s.objects + s.crowd_no_mask} objects have no "
            f"mask ('segmentation' empty or absent), but the config trains a Mask R-CNN (MODEL.MASK_ON): add "
            f"MODEL.MASK_ON False for box AP only ({README})")


def check_keypoints(s: Summary, num_keypoints: int, train: bool) -> None:
    """MODEL.KEYPOINT_ON: named keypoints (their flip pairs come from left/right names), as many as
    MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS, and a keypoints list on every training object."""
    if not s.keypoint_names:
        raise DatasetError(
            f"dataset {s.name!r} ({s.source}) has no keypoint names (no category with a 'keypoints' list), "
            f"but the config trains a keypoint R-CNN (MODEL.KEYPOINT_ON): use a person_keypoints-style file, "
            f"or a detection config ({README})")
    if len(s.keypoint_names) != num_keypoints:
        raise DatasetError(
            f"dataset {s.name!r} ({s.source}) names {len(s.keypoint_names)} keypoints, but "
            f"MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS is {num_keypoints}: drop the override, the trainer takes "
            f"the count from the training file ({README})")
    if s.bad_keypoints:
        raise DatasetError(f"dataset {s.name!r} ({s.source}): {s.bad_keypoints} ({README})")
    if train and s.no_keypoints:
        raise DatasetError(
            f"training set {s.name!r} ({s.source}): {s.no_keypoints} of {s.objects} objects have no "
            f"'keypoints' list (COCO writes [0, 0, 0] * K and num_keypoints 0 for an object without visible "
            f"keypoints) ({README})")


def check_run(cfg, train: list[Summary], test: list[Summary]) -> str:
    """All checks of one run's datasets against each other and the (final) config; returns the
    INPUT.MASK_FORMAT the training data needs: bitmask where any non-crowd mask is RLE (detectron2's
    polygon format cannot hold one), else the config's."""
    ref = (train or test)[0]
    for s in train[1:]:
        check_categories(ref, s, "training set")
    for s in test:
        check_categories(ref, s, "test set")
    if cfg.MODEL.ROI_HEADS.NUM_CLASSES != len(ref.categories):
        raise DatasetError(
            f"MODEL.ROI_HEADS.NUM_CLASSES is {cfg.MODEL.ROI_HEADS.NUM_CLASSES}, but {ref.name!r} "
            f"({ref.source}) has {len(ref.categories)} categories: drop the override, the trainer takes the "
            f"count from the training file ({README})")
    for s in train + test:
        if cfg.MODEL.MASK_ON:
            check_masks(s, s in train)
        if cfg.MODEL.KEYPOINT_ON:
            check_keypoints(s, cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS, s in train)
    if cfg.MODEL.MASK_ON and any(s.rle for s in train):
        return "bitmask"
    return cfg.INPUT.MASK_FORMAT


def provenance(train: list[Summary], test: list[Summary], mask_format: str) -> dict:
    """What the run was trained and tested on, for OUTPUT_DIR/provenance.json (results.json stays task ->
    metric -> value)."""
    return {"train": [s.record() for s in train], "test": [s.record() for s in test],
            "mask_format": mask_format}
