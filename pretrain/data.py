"""Pretraining data: recursive image-folder scan, safe decoding, bad-file handling, deterministic batches.

Every random choice comes from (seed, epoch, index) or (seed, epoch, iteration), never from process state, so
a run resumed from a mid-epoch checkpoint sees exactly the batches and crops an uninterrupted run would have
seen.

Bad files (zero bytes, not an image, truncated JPEG, header larger than max_image_pixels) are found by a
header scan before training and skipped with one warning each; a file that goes bad later is replaced at
__getitem__ time by a deterministic other index and reported, so training never crashes on one JPEG in a
million.
"""
from __future__ import annotations

import io
import os
import re
import signal
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # ImageFolder
JPEG_MAGIC = b"\xff\xd8\xff"
JPEG_EOI = b"\xff\xd9"


class BadImage(Exception):
    """The file cannot be used; str(e) is the reason."""


class DataError(ValueError):
    """The data folder cannot be used at all (missing, empty, every image bad): one line, exit status 2."""


def derive_seed(*values: int) -> int:
    """A well-mixed 64-bit seed from a tuple such as (seed, epoch, index): independent streams per sample."""
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1, dtype=np.uint64)[0])


def generator(*values: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*values))


# ------------------------------------------------------------------------------------------------- decoding

def _open(source, max_pixels: int) -> Image.Image:
    """Parse only the header (PIL reads no pixel data here) and refuse unknown or huge images."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(source)
    except Image.DecompressionBombError:
        raise BadImage("image too large (decompression bomb?)") from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for garbage input
        raise BadImage(f"not a readable image ({type(e).__name__})") from None
    w, h = img.size
    if w <= 0 or h <= 0:
        raise BadImage(f"invalid size {w}x{h}")
    if w * h > max_pixels:
        raise BadImage(f"{w}x{h} pixels exceeds max_image_pixels={max_pixels} (decompression bomb?)")
    return img


# In entropy-coded data 0xFF is always followed by 0x00 (a stuffed byte) or a restart marker 0xD0-0xD7; the
# first 0xFF followed by anything else (0xFF fill bytes aside) is the next marker (ITU-T T.81, Annex B.1.1).
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def jpeg_end(data: bytes) -> int | None:
    """Offset just past the main image's end-of-image marker (EOI, 0xFFD9), or None if the data ends first.

    libjpeg pads a truncated scan with grey and carries on, so a cut-off JPEG would train as a half-grey
    image: we refuse a JPEG whose marker sequence does not reach its EOI. The walk follows the segment lengths
    (so an EOI inside an EXIF thumbnail does not count) and jumps over each scan's entropy-coded data with one
    regex search (C speed); bytes after the EOI (camera trailers, appended data) are allowed, as libjpeg
    ignores them.
    Stray bytes between segments are skipped to the next marker, as libjpeg does ("extraneous bytes").
    """
    pos, n = 2, len(data)  # after SOI
    while pos < n:
        if data[pos] != 0xFF:  # stray bytes: resynchronise on the next marker
            m = _NEXT_MARKER.search(data, pos)
            if m is None:
                return None
            pos = m.start()
        while pos < n and data[pos] == 0xFF:  # a marker may be preceded by any number of 0xFF fill bytes
            pos += 1
        if pos >= n:
            return None
        marker = data[pos]
        pos += 1
        if marker == 0xD9:
            return pos
        if marker == 0x01 or 0xD0 <= marker <= 0xD7 or marker == 0x00:  # no length field
            continue
        if pos + 2 > n:
            return None
        pos += int.from_bytes(data[pos:pos + 2], "big")  # the length counts itself, not the marker
        if marker == 0xDA:  # start of scan: entropy-coded data up to the next real marker
            m = _NEXT_MARKER.search(data, pos)
            if m is None:
                return None
            pos = m.start()
    return None


def _header(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise BadImage("empty file")
    if data.startswith(JPEG_MAGIC) and jpeg_end(data) is None:
        raise BadImage("truncated JPEG (no end-of-image marker)")
    return _open(io.BytesIO(data), max_pixels)


def decode(data: bytes, max_pixels: int) -> torch.Tensor:
    """Image bytes -> uint8 3 x H x W RGB. JPEGs via torchvision.io (libjpeg-turbo), anything else via PIL."""
    img = _header(data, max_pixels)
    if data.startswith(JPEG_MAGIC):
        try:
            from torchvision.io import ImageReadMode, decode_jpeg

            with warnings.catch_warnings():
                # torchvision 0.29 deprecates its decoders in favour of torchcodec (not a dependency here);
                # this one still works and is libjpeg-turbo, so the per-call warning is noise
                warnings.simplefilter("ignore", DeprecationWarning)
                raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
                return decode_jpeg(raw, mode=ImageReadMode.RGB)
        except RuntimeError:
            pass  # e.g. an unusual JPEG flavour: let PIL try, it raises on truncation too
    # 3 x H x W with channels-last strides, as decode_jpeg returns: cpu_views' fastest resize path
    return torch.from_numpy(np.array(_pil_rgb(img))).permute(2, 0, 1)


def decode_pil(data: bytes, max_pixels: int) -> Image.Image:
    return _pil_rgb(_header(data, max_pixels))


def _pil_rgb(img: Image.Image) -> Image.Image:
    try:
        img.load()  # raises on truncated data (ImageFile.LOAD_TRUNCATED_IMAGES stays False)
        return img.convert("RGB")
    except Exception as e:  # noqa: BLE001
        raise BadImage(f"corrupt image data ({type(e).__name__}: {str(e)[:80]})") from None


def read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise BadImage(f"cannot read ({e.strerror})") from None


# ---------------------------------------------------------------------------------------------- folder scan

def list_images(root: str) -> list[str]:
    """Image files under root (recursively, following symlinks once), as sorted paths relative to root."""
    found, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink cycle
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        for name in filenames:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(name if rel == "." else os.path.join(rel, name))
    return sorted(found)


def _check_file(args: tuple[str, int]) -> str | None:
    """None if the file's header is usable, else the reason.

    Reads the header and the last two bytes. A JPEG that ends with its EOI marker is taken as complete without
    reading the rest: a cut-off file ends inside entropy-coded data, where 0xFFD9 cannot occur (only a cut
    exactly after a thumbnail's EOI would pass, and the decode path, which always walks the markers, still
    refuses it at load time). Any other JPEG (truncated, or with bytes after its EOI) is read whole and its
    markers walked (`jpeg_end`).
    """
    path, max_pixels = args
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "empty file"
        with open(path, "rb") as f:
            head = f.read(3)
            f.seek(max(0, size - 2))
            if head == JPEG_MAGIC and f.read() != JPEG_EOI:
                f.seek(0)
                if jpeg_end(f.read()) is None:
                    return "truncated JPEG (no end-of-image marker)"
            f.seek(0)
            _open(f, max_pixels)
    except OSError as e:
        return f"cannot read ({e.strerror})"
    except BadImage as e:
        return str(e)
    return None


def scan(root: str, max_pixels: int, max_images: int = 0,
         processes: int = 0) -> tuple[list[str], list[tuple[str, str]]]:
    """(usable relative paths, [(relative path, reason)] skipped). Raises DataError if nothing is usable."""
    if not os.path.isdir(root):
        raise DataError(f"data folder {root} does not exist or is not a directory")
    files = list_images(root)
    if max_images:
        files = files[:max_images]
    if not files:
        raise DataError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found under {root}")
    jobs = [(os.path.join(root, f), max_pixels) for f in files]
    if processes > 1 and len(files) > 5000:  # header checks are CPU-bound Python: spread them over processes
        with ProcessPoolExecutor(processes) as pool:
            reasons = list(pool.map(_check_file, jobs, chunksize=512))
    else:
        reasons = [_check_file(j) for j in jobs]
    good = [f for f, r in zip(files, reasons, strict=True) if r is None]
    bad = [(f, r) for f, r in zip(files, reasons, strict=True) if r is not None]
    if not good:
        raise DataError(f"none of the {len(files)} image files under {root} is readable "
                        f"(first: {bad[0][0]}: {bad[0][1]})")
    return good, bad


# -------------------------------------------------------------------------------------- dataset and batches

class MultiViewDataset(torch.utils.data.Dataset):
    """Item (epoch, index) -> (views, bad_index, reason).

    views: uint8 V x 3 x S x S (augment="fast": crops only, colour ops later on the device) or float32
    normalised V x 3 x S x S (augment="reference"). bad_index is -1, or the index that was unreadable and was
    replaced by the next
    readable one (reason says why), so the main process can warn once per file and count it.
    """

    def __init__(self, root: str, files: list[str], num_views: int, size: int, scale: tuple[float, float],
                 augment: str = "fast", blur: bool = True, seed: int = 0, max_pixels: int = 89_478_485):
        self.root = root
        # numpy bytes, not a list of str: workers do not copy the pages by touching refcounts
        self.files = np.array([f.encode() for f in files])
        self.num_views, self.size, self.scale = num_views, size, scale
        self.augment, self.blur, self.seed, self.max_pixels = augment, blur, seed, max_pixels

    def __len__(self) -> int:
        return len(self.files)

    def path(self, index: int) -> str:
        return os.path.join(self.root, self.files[index].decode())

    def views(self, epoch: int, index: int) -> torch.Tensor:
        from pretrain import augment  # imported lazily: workers only

        g = generator(self.seed, epoch, index)
        data = read_bytes(self.path(index))
        if self.augment == "reference":
            img = decode_pil(data, self.max_pixels)
            return augment.reference_views(img, self.num_views, self.size, self.scale, self.blur, generator=g)
        img = decode(data, self.max_pixels)  # 3 x H x W uint8
        return augment.cpu_views(img, self.num_views, self.size, self.scale, generator=g)  # V x 3 x S x S

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        bad, reason = -1, ""
        for attempt in range(min(len(self), 100)):
            i = (index + attempt) % len(self)
            try:
                return self.views(epoch, i), bad, reason
            except BadImage as e:
                if bad < 0:
                    bad, reason = i, str(e)
        raise RuntimeError(f"100 consecutive unreadable images from {self.path(index)} on: "
                           f"is {self.root} still there?")


class EpochBatches:
    """Batch sampler: a (seed, epoch) permutation cut into global batches (drop_last, as SimSiam); rank r gets
    rows r*b .. (r+1)*b of every global batch, so the union over ranks does not depend on the number of GPUs.
    set_epoch(epoch, start) skips the first `start` batches (mid-epoch resume)."""

    def __init__(self, num_items: int, global_batch: int, rank: int = 0, world: int = 1, seed: int = 0):
        assert global_batch % world == 0
        self.n, self.global_batch, self.rank, self.world = num_items, global_batch, rank, world
        self.seed = seed
        self.per_rank = global_batch // world
        self.iters_per_epoch = num_items // global_batch
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.iters_per_epoch - self.start

    def __iter__(self):
        # index 2**31 (no image has it) names the order stream, apart from every per-image stream
        perm = torch.randperm(self.n, generator=generator(self.seed, self.epoch, 2**31))
        lo = self.rank * self.per_rank
        for it in range(self.start, self.iters_per_epoch):
            batch = perm[it * self.global_batch:(it + 1) * self.global_batch][lo:lo + self.per_rank]
            yield [(self.epoch, int(i)) for i in batch]


def _worker_init(_):
    # Ctrl-C / SIGTERM go to the main process, which writes a checkpoint; workers must not die under it first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def build_loader(dataset: MultiViewDataset, batches: EpochBatches, workers: int, pin_memory: bool):
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, num_workers=workers, pin_memory=pin_memory,
        persistent_workers=workers > 0, worker_init_fn=_worker_init if workers > 0 else None,
        prefetch_factor=4 if workers > 0 else None,
    )


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)
