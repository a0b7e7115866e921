"""The "ImageNet" baseline: torchvision's supervised ResNet-50 (IMAGENET1K_V1), hash-checked, then converted.

    python -m transfer.imagenet_weights weights/imagenet.pth          # download (where allowed), convert
    python -m transfer.imagenet_weights weights/imagenet.pth --from-file resnet50-0676ba61.pth

IMAGENET1K_V1 are the weights the MoCo and InfoMin detection protocols compare against. They go through the
same converter (transfer.convert) as FastSiam's own checkpoints, so both use the same detectron2 configs
(RGB input, torchvision's pixel mean/std, STRIDE_IN_1X1 False). The file is kept in torch's hub cache, where
torchvision itself would put it, so an existing torchvision download is reused.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import sys
import tempfile
import urllib.request

import torch
from tqdm import tqdm

from transfer.convert import ConvertError, check_output, convert

URL = "https://download.pytorch.org/models/resnet50-0676ba61.pth"
FILENAME = "resnet50-0676ba61.pth"
# torchvision names its files with the first 8 hex digits of their sha256 (torch.hub's check_hash compares
# only that prefix). The full digest, pinned by several independent projects, starts with it; we check it all.
SHA256 = "0676ba61b6795bbe1773cffd859882e5e297624d384b6993f7c9e683e722fb8a"


class OfflineError(ConvertError):
    """The weights could not be downloaded; the message says where to put a manual download."""


def cached_path() -> str:
    """Where torchvision keeps this file: <torch hub dir>/checkpoints/resnet50-0676ba61.pth."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", FILENAME)


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_hash(path: str, expected: str = SHA256) -> None:
    digest = sha256_of(path)
    if digest != expected:
        raise ConvertError(f"{path}: sha256 {digest[:16]}... is not torchvision's ResNet-50 IMAGENET1K_V1 "
                           f"file ({expected[:16]}...); delete it and download {URL} again")


def download(dst: str, expected_sha256: str = SHA256, timeout: float = 30.0) -> None:
    """Fetch URL into dst (temp file + hash check + os.replace), with a progress bar."""
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dst), prefix="." + FILENAME + ".", suffix=".part")
    try:
        with urllib.request.urlopen(URL, timeout=timeout) as r, os.fdopen(fd, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=FILENAME) as bar:
                for chunk in iter(lambda: r.read(1 << 20), b""):
                    f.write(chunk)
                    bar.update(len(chunk))
        check_hash(tmp, expected_sha256)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def imagenet_weights(output_path: str, from_file: str | None = None, fmt: str = "detectron2",
                     *, expected_sha256: str = SHA256) -> dict:
    """Hash-check torchvision's ResNet-50 IMAGENET1K_V1 file and convert it; returns convert()'s summary.

    The file is `from_file` if given, else the copy in torch's hub cache, else downloaded there.
    `expected_sha256` exists for tests only (to convert a fake file); never override it otherwise.
    """
    check_output(output_path, fmt)  # before a 100 MB download
    source = from_file or cached_path()
    if from_file is not None and not os.path.isfile(from_file):
        raise ConvertError(f"{from_file}: no such file")
    if from_file is None and not os.path.isfile(source):
        try:
            download(source, expected_sha256)
        except (OSError, http.client.HTTPException) as e:  # no network, DNS failure, timeout, HTTP error
            reason = getattr(e, "reason", None) or e
            raise OfflineError(
                f"cannot download {URL} ({reason}); fetch that file where the network allows and put it at "
                f"{source}, or run: python -m transfer.imagenet_weights {output_path} --from-file {FILENAME}"
            ) from None
    check_hash(source, expected_sha256)
    summary = convert(source, output_path, fmt)
    summary["source"] = source
    summary["sha256"] = expected_sha256
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transfer.imagenet_weights",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("output", help="OUT.pth (recommended) or OUT.pkl")
    parser.add_argument("--from-file", default=None, metavar="PATH",
                        help=f"a manually downloaded copy of {URL} (hash-checked, then converted)")
    parser.add_argument("--format", default="detectron2", choices=("detectron2", "torchvision"))
    args = parser.parse_args(argv)
    try:
        s = imagenet_weights(args.output, args.from_file, args.format)
    except ConvertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if s["dropped"]:
        print("dropped heads: " + ", ".join(f"{k}: {n}" for k, n in s["dropped"].items()), file=sys.stderr)
    print(f"source:  {s['source']} (sha256 {s['sha256'][:16]}... verified)")
    print(f"depth:   ResNet-{s['depth']}, {s['tensors_written']} tensors -> {s['output']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
