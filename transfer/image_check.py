"""Every image a COCO-format file lists, checked against the file before training: it exists, and the size
detectron2 will read equals the json's width and height.

detectron2's ``read_image`` applies the EXIF orientation tag and then compares the result with the json
(``check_image_size``), so the json must hold the *displayed* size: a phone photo stored 4032x3024 with tag 6
(rotate 90 degrees) is 3024x4032 to detectron2, and its boxes must be in that frame. Only the image headers
are read (Pillow opens lazily), on a few threads: the files are often on a network filesystem.
"""
from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor

from PIL import Image
from tqdm import tqdm

from transfer.annotations import DatasetError, Summary

EXIF_ORIENTATION = 0x0112
ROTATED = {5, 6, 7, 8}  # orientations that swap width and height (transpose, 90, transverse, 270)
THREADS = 8


def _header(path: str) -> tuple[int, int, int] | None:
    """(stored width, stored height, EXIF orientation), or None when the file is missing."""
    if not os.path.isfile(path):
        return None
    try:
        with Image.open(path) as im:
            orientation = im.getexif().get(EXIF_ORIENTATION, 1)
            return im.width, im.height, orientation
    except Exception:  # noqa: BLE001  undecodable: CheckedMapper names it when it is read
        return -1, -1, 1


def check_images(s: Summary, progress: bool = True) -> None:
    """Refuse missing images and json sizes detectron2 will not read; warn (in s.warnings) about EXIF-rotated
    images whose json size is already the displayed one."""
    paths = s.image_list
    with ThreadPoolExecutor(THREADS) as pool:
        it = pool.map(_header, [p for p, _, _ in paths])
        if progress and len(paths) > 2000:
            it = tqdm(it, total=len(paths), desc=f"checking the images of {s.name}", file=sys.stderr,
                      mininterval=2)
        headers = list(it)
    missing = [p for (p, _, _), h in zip(paths, headers, strict=True) if h is None]
    if missing:
        raise DatasetError(f"dataset {s.name!r}: {len(missing)} of {len(paths)} annotated images are "
                           f"missing, first: {missing[0]}")
    rotated = []
    for (path, w, h), (sw, sh, orientation) in zip(paths, headers, strict=True):
        if sw < 0:
            continue
        shown = (sh, sw) if orientation in ROTATED else (sw, sh)
        if (w, h) == shown:
            if orientation in ROTATED:
                rotated.append(path)
            continue
        if orientation in ROTATED and (w, h) == (sw, sh):
            raise DatasetError(
                f"dataset {s.name!r}: image {path} has EXIF orientation {orientation}, so detectron2 reads "
                f"it rotated, as {shown[0]}x{shown[1]} (width x height); {s.source} gives its stored size "
                f"{w}x{h}. "
                f"The json must hold the displayed size {shown[0]}x{shown[1]} with boxes in that frame (or "
                "strip the EXIF orientation and keep the json)")
        raise DatasetError(f"dataset {s.name!r}: image {path} is {shown[0]}x{shown[1]} (width x height"
                           f"{', after its EXIF orientation' if orientation != 1 else ''}), but {s.source} "
                           f"says {w}x{h}")
    if rotated:
        s.warnings.append(f"{len(rotated)} of {len(paths)} images are stored rotated (EXIF orientation); the "
                          "json holds their displayed size, as detectron2 reads them, so their annotations "
                          f"must be in the displayed frame; first: {rotated[0]}")
