"""Views/s per core of the multi-view pipeline and of the torchvision PIL recipe, same JPEGs, one process.

    python -m tools.bench.augment [IMAGE_DIR] [--images 32] [--views 4] [--size 224] [--rounds 5] [--json F]

(a) torchvision PIL recipe (SimSiam): decode once per image, then the whole recipe view by view
(b) CPU stage: decode_jpeg once per image + V crops resized as uint8: cpu_views
(c) device stage on the CPU: DeviceAugment over batches of N*V views
(d) (b) + (c) end to end on the CPU
(e) device stage on the GPU, where one is present (wall clock, synchronised)
(f) kornia's batched augmentation of the same recipe on the CPU, where kornia is installed (library choice)

One thread (torch.set_num_threads(1)). CPU figures are views per CPU-second of this thread
(time.thread_time), i.e. per core, which is robust to other processes sharing the machine; wall-clock views/s
are printed beside them. The
stages run interleaved for --rounds rounds and each figure is the median over rounds, so every ratio compares
stages measured under the same load. JPEGs are read into memory first: file-system speed is not measured.
The last line is `cpu stage X.Xx, end to end Y.Yx vs torchvision PIL recipe` (per-core ratios to (a)).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings

import torch
from PIL import Image

from pretrain.augment import DeviceAugment, cpu_views, keep_freed_memory, reference_views
from tools.data.jpegs import make_jpegs

EXTENSIONS = (".jpg", ".jpeg", ".JPG", ".JPEG")


def decode(data: bytes) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():  # torchvision 0.29 points to torchcodec; this is still libjpeg-turbo
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)


def timed(fn) -> tuple[float, float]:
    """(thread CPU seconds, wall seconds) of fn()."""
    c, w = time.thread_time(), time.perf_counter()
    fn()
    return time.thread_time() - c, time.perf_counter() - w


def kornia_pipeline():
    """The same recipe in kornia's batched augmentation (flip, jitter p=0.8, gray 0.2, blur 0.5, normalise);
    kernel 23 as in BYOL-style kornia pipelines, and one jitter op order per batch (kornia's ColorJitter)."""
    import kornia.augmentation as K

    return torch.nn.Sequential(
        K.RandomHorizontalFlip(),
        K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8),
        K.RandomGrayscale(p=0.2),
        K.RandomGaussianBlur((23, 23), (0.1, 2.0), p=0.5),
        K.Normalize(torch.tensor((0.485, 0.456, 0.406)), torch.tensor((0.229, 0.224, 0.225))),
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench.augment", description=__doc__.split("\n")[0])
    ap.add_argument("image_dir", nargs="?", help="folder of JPEGs (default: generate photo-like ones)")
    ap.add_argument("--images", type=int, default=32, help="images per round (default 32)")
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32, help="images per device-stage batch (N; N*V views)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--fused", choices=("auto", "on", "off"), default="auto",
                    help="device stage: torch.compile'd (on), eager ops (off), or DeviceAugment's default")
    ap.add_argument("--no-malloc-tuning", dest="malloc", action="store_false",
                    help="leave glibc malloc's defaults (see pretrain.augment.keep_freed_memory)")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    # as the engine does on the CPU (pretrain/engine.py): freed large blocks stay mapped. Process-wide, so the
    # PIL recipe runs under the same allocator setting as the batched stages.
    kept = keep_freed_memory() if args.malloc else False

    if args.image_dir:
        if not os.path.isdir(args.image_dir):
            print(f"error: {args.image_dir} is not a directory", file=sys.stderr)
            return 2
        paths = sorted(os.path.join(r, f) for r, _, fs in os.walk(args.image_dir) for f in fs
                       if f.endswith(EXTENSIONS))[: args.images]
        if not paths:
            print(f"error: no JPEG files under {args.image_dir}", file=sys.stderr)
            return 2
        source = args.image_dir
    else:
        tmp = tempfile.mkdtemp(prefix="bench_augment_")
        paths = make_jpegs(tmp, args.images)
        source = f"{len(paths)} generated photo-like 500x375 JPEGs (quality 90)"
    blobs = [open(p, "rb").read() for p in paths]  # all in memory: file-system speed is not measured
    if not args.image_dir:
        shutil.rmtree(tmp)
    n_img, v, s = len(blobs), args.views, args.size
    views = n_img * v
    print(f"images: {source}; {n_img} images x {v} views at {s} px, mean JPEG "
          f"{sum(map(len, blobs)) / n_img / 1e3:.0f} kB; torch {torch.__version__}, 1 thread; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)

    aug = DeviceAugment(fused={"auto": None, "on": True, "off": False}[args.fused])
    g = torch.Generator().manual_seed(0)
    kornia = None
    try:
        kornia = kornia_pipeline()
    except ImportError:
        pass

    def recipe():
        for b in blobs:
            img = Image.open(io.BytesIO(b))
            img.load()
            reference_views(img.convert("RGB"), v, s, generator=g)

    crops: list[torch.Tensor] = []

    def cpu_stage():
        crops.clear()
        crops.extend(cpu_views(decode(b), v, s, generator=g) for b in blobs)  # each V x 3 x S x S

    def batches():
        for i in range(0, n_img, args.batch):
            yield torch.stack(crops[i : i + args.batch]).flatten(0, 1)  # N*V x 3 x S x S

    def device_stage():
        for x in batches():
            aug(x, g)

    def end_to_end():
        for i in range(0, n_img, args.batch):
            x = torch.stack([cpu_views(decode(b), v, s, generator=g) for b in blobs[i : i + args.batch]])
            aug(x.flatten(0, 1), g)

    def kornia_stage():
        for x in batches():
            kornia(x.float() / 255)

    stages = {"a": recipe, "b": cpu_stage, "c": device_stage, "d": end_to_end}
    if kornia is not None:
        stages["f"] = kornia_stage
    cpu_stage()  # warm-up: crops for (c) and (f), first-call overheads
    for k, fn in stages.items():
        t = time.perf_counter()
        fn()
        if k == "c":  # includes torch.compile's first compile of the fused stage (or its on-disk cache hit)
            first_call = time.perf_counter() - t
    print(f"device stage first call (compile or cache load included): {first_call:.1f} s; fused: "
          f"{args.fused}; glibc malloc keeps freed memory: {kept}", flush=True)
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in stages}
    for _ in range(args.rounds):
        for k, fn in stages.items():
            times[k].append(timed(fn))
    rate = {k: views / statistics.median(c for c, _ in t) for k, t in times.items()}  # views per CPU-second
    wall = {k: views / statistics.median(w for _, w in t) for k, t in times.items()}

    names = {"a": "torchvision PIL recipe (decode + V views)", "b": "CPU stage (decode once + V crops)",
             "c": "device stage on CPU", "d": "CPU stage + device stage on CPU",
             "f": "kornia device stage on CPU"}
    if kornia is not None:
        import kornia as kornia_pkg

        names["f"] = f"kornia {kornia_pkg.__version__} device stage on CPU"
    print(f"{'stage':<46}{'views/s per core':>18}{'wall views/s':>14}{'vs (a)':>9}")
    for k in stages:
        print(f"({k}) {names[k]:<42}{rate[k]:>18.0f}{wall[k]:>14.0f}{rate[k] / rate['a']:>8.2f}x")
    print(f"load average at the end {os.getloadavg()[0]:.1f} (other processes share the CPU when it exceeds "
          f"{os.cpu_count()}: per-core figures are then pessimistic, ratios still compare like with like)")
    result = {"load_average_end": os.getloadavg()[0], "first_call_s": first_call, "fused": args.fused,
              "malloc_tuning": kept, "views_per_cpu_s": rate, "views_per_wall_s": wall,
              "images": n_img, "views": v, "size": s,
              "batch_views": args.batch * v, "rounds": args.rounds, "source": source}

    if torch.cuda.is_available():
        x = torch.stack(crops[: args.batch]).flatten(0, 1).cuda()  # N*V x 3 x S x S
        for _ in range(5):
            aug(x, g)
        torch.cuda.synchronize()
        reps = 50
        t = time.perf_counter()
        for _ in range(reps):
            aug(x, g)
        torch.cuda.synchronize()
        gpu = reps * x.shape[0] / (time.perf_counter() - t)
        result["views_per_s_gpu_device_stage"] = gpu
        print(f"(e) device stage on {torch.cuda.get_device_name()}: {gpu:.0f} views/s "
              f"(batch {x.shape[0]} views)")

    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump(result, f, indent=1)
        os.replace(args.json + ".tmp", args.json)
    cpu, e2e = rate["b"] / rate["a"], rate["d"] / rate["a"]
    print(f"cpu stage {cpu:.1f}x, end to end {e2e:.1f}x vs torchvision PIL recipe")
    return 0


if __name__ == "__main__":
    sys.exit(main())
