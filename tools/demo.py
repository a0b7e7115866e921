"""`make demo`: the whole method at toy scale, through the real code path of every stage.

    python -m tools.demo [--out demo_output] [--size small|tiny] [--device auto|cpu|cuda]

Stages (each a real command-line tool; a finished stage is skipped on rerun; on a CPU, independent runs go
side by side, one per core, and the conversions run through transfer.convert's entry point in this process):
  1. images     real photos that ship with scikit-image, cut into a small unlabelled image folder
  2. pretrain   FastSiam (K=3, 4 views) and SimSiam (K=1, 2 views) for the same compute (views processed)
  3. convert    both checkpoints and a random-init backbone to detectron2 weights (.pth)
  4. transfer   detectron2 fine-tuning + evaluation on synthetic COCO instances, COCO keypoints and Cityscapes
  5. report     the paper-style tables (tools/tables.py) and figures (Fig. 2, Fig. 6)

The numbers are a toy run: a ResNet-18 pretrained for seconds on a few dozen images, fine-tuned for a few
iterations on synthetic shapes. They show that the pipeline works end to end, not what the method achieves;
the README gives the full-scale recipe.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from pretrain import precision

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
# The C4 protocol (Table 2) is left out: its res5 head is a bottleneck stage that a ResNet-18 cannot fill, and
# a ResNet-50 pretraining would not fit the demo's time budget on a CPU. The test suite runs it end to end.
PROTOCOLS = ("coco_R_50_FPN_1x", "keypoint_R_50_FPN_2x", "cityscapes_R_50_FPN")
# name -> (number of views, epochs): equal compute, a 2-view epoch costs half a 4-view epoch
METHODS = {"demo_fastsiam": (4, 1), "demo_simsiam": (2, 2)}
SIZES = {
    # images, pretraining epoch multiplier, detection images per split, transfer protocols, d2 overrides
    # (small: 60 iterations at the protocols' lr instead of the instant configs' 5 cautious ones, enough for
    # non-zero APs on the synthetic shapes; about 4 minutes in all on an idle 2-core CPU)
    "small": {"images": 48, "epoch_mult": 5, "det_images": 8, "protocols": PROTOCOLS,
              "d2": ["SOLVER.MAX_ITER", "60", "SOLVER.STEPS", "(50,)", "SOLVER.BASE_LR", "0.02"]},
    "tiny": {"images": 16, "epoch_mult": 1, "det_images": 4, "protocols": PROTOCOLS[:1], "d2": []},
}
TOY_BANNER = (
    "TOY RUN: these numbers come from seconds of pretraining on a few dozen photos and a few detection\n"
    "iterations on synthetic shapes. They prove the pipeline, not the method. Full-scale recipe: README.md."
)


def shown(path: Path) -> str:
    """A path as the user gave it: relative to the working folder when inside it (`demo_output/images`)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def stage(i: int, n: int, text: str) -> None:
    print(f"\n[{i}/{n}] {text}", flush=True)


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def machine() -> str:
    """CPU model and threads, for the timing line (the figures move with the CPU)."""
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{precision.cpu_name()}, {cores()} CPU threads{gpu}"


def run(cmd: list[str], log: Path, env: dict | None = None) -> None:
    """Run one stage command, its output into `log`; on failure show the log's tail and stop."""
    run_side_by_side([(cmd, log, env)])


def run_side_by_side(jobs: list[tuple[list[str], Path, dict | None]]) -> None:
    """Run stage commands at the same time, each with an equal share of the CPU cores (OMP_NUM_THREADS), its
    output into its log; on a failure show that log's tail and stop.

    Side by side because on a CPU two 1-thread processes of these small models do more work than one 2-thread
    process (docs/benchmarks.md); one job runs with every core."""
    t0 = time.time()
    threads = str(max(1, cores() // len(jobs)))
    procs = []
    for cmd, log, env in jobs:
        log.parent.mkdir(parents=True, exist_ok=True)
        f = open(log, "a")
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        extra = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads} if len(jobs) > 1 else {}
        procs.append((subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                                       env={**os.environ, **extra, **(env or {})}), f, log))
    for proc, f, log in procs:
        rc = proc.wait()
        f.close()
        if rc != 0:
            for other, _, _ in procs:
                if other.poll() is None:
                    other.terminate()
            tail = log.read_text().splitlines()[-25:]
            sys.exit("\n".join(tail) + f"\ndemo: a stage failed (exit {rc}); full log: {log}")
    logs = sorted({str(log.relative_to(log.parents[1])) for _, _, log in procs})
    print(f"      done in {time.time() - t0:.0f} s  (log: {', '.join(logs)})", flush=True)


def convert_all(sources: dict[str, Path], weights: Path, log: Path) -> None:
    """transfer.convert's own command-line entry, once per file, in this process: the work is milliseconds,
    a fresh interpreter per file (importing torch) was seconds."""
    from transfer import convert

    t0 = time.time()
    log.parent.mkdir(parents=True, exist_ok=True)
    for name, src in sources.items():
        dst = weights / f"{name}.pth"
        if dst.exists() and dst.stat().st_mtime >= src.stat().st_mtime:
            print(f"      {name}: converted earlier, skipped")
            continue
        args = [str(src), str(dst)]
        with open(log, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            print("$ python -m transfer.convert " + " ".join(args), flush=True)
            try:
                rc = convert.main(args)
            except SystemExit as e:  # argparse and one-line errors exit
                rc = e.code
        if rc:
            tail = log.read_text().splitlines()[-10:]
            sys.exit("\n".join(tail) + f"\ndemo: converting {src} failed; full log: {log}")
        print(f"      {name}: {dst.relative_to(weights.parent)}", flush=True)
    print(f"      done in {time.time() - t0:.0f} s  (log: {log.relative_to(log.parents[1])})", flush=True)


def make_images(out: Path, count: int) -> None:
    """Random crops of the colour photos bundled with scikit-image (no download), as JPEG files."""
    import numpy as np
    import skimage.data
    from PIL import Image

    names = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "hubble_deep_field",
             "immunohistochemistry", "retina", "colorwheel", "cat", "logo")
    photos = []
    for name in names:
        fn = "stereo_motorcycle" if name == "motorcycle_left" else name
        img = getattr(skimage.data, fn)()
        img = img[0] if isinstance(img, tuple) else img
        if img.ndim == 3 and img.shape[2] == 3:
            photos.append(img)
    rng = np.random.default_rng(0)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        side = int(rng.integers(min(h, w) // 3, min(h, w) + 1))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(photo[y:y + side, x:x + side]).resize((128, 128), Image.BICUBIC)
        crop.save(tmp / f"{i:03d}.jpg", quality=90)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def random_backbone(path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(zero_init_residual=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)


def pretrain_done(run_dir: Path, epochs: int) -> bool:
    ckpt = run_dir / "checkpoint.pth"
    if not ckpt.exists():
        return False
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    return int(state.get("epochs_done", state.get("epoch", 0))) >= epochs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "demo_output",
                    help="output folder (default: demo_output)")
    ap.add_argument("--size", choices=sorted(SIZES), default="small", help="tiny: the test suite's size")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    args = ap.parse_args(argv)
    size = SIZES[args.size]
    out = args.out.resolve()
    logs = out / "logs"
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    n = 5
    t_start = time.time()
    print(f"FastSiam demo -> {shown(out)}  (device: {device})\n" + TOY_BANNER, flush=True)

    # ============ 1. images ============
    images = out / "images"
    stage(1, n, f"images: {size['images']} crops of scikit-image's bundled photos -> {shown(images)}")
    if images.is_dir() and len(list(images.glob("*.jpg"))) == size["images"]:
        print("      already there, skipped")
    else:
        make_images(images, size["images"])
        print("      written")

    # ============ 2. pretraining (and the detection data, which needs no pretraining) ============
    stage(2, n, "pretrain: FastSiam (4 views) and SimSiam (2 views), same number of views processed; "
                "side by side with the detection data")
    datasets = out / "datasets"
    jobs = []
    for name, (views, epochs) in METHODS.items():
        epochs *= size["epoch_mult"]
        run_dir = out / "pretrain" / name
        if pretrain_done(run_dir, epochs):
            print(f"      {name}: finished earlier, skipped")
            continue
        print(f"      {name}: ResNet-18, {views} views, {epochs} epoch(s)", flush=True)
        cmd = [PY, "-m", "pretrain", "--config", "configs/pretrain/smoke_cpu.yaml", "--data", str(images),
               "--output-dir", str(run_dir), f"num_views={views}", f"epochs={epochs}", f"device={device}",
               "workers=1", f"save_every_epochs={epochs}"]  # one kept checkpoint, not ~100 MB per epoch
        jobs.append((cmd, logs / f"pretrain_{name}.log", None))
    data_done = datasets / ".complete"  # written after the generator succeeded: a run cut off mid-way is redone
    if not data_done.is_file():
        shutil.rmtree(datasets, ignore_errors=True)
        print(f"      detection data: synthetic COCO, keypoints, Cityscapes -> {shown(datasets)}", flush=True)
        cmd = [PY, "-m", "tools.data.detection", str(datasets), "--images", str(size["det_images"])]
        jobs.append((cmd, logs / "make_detection_data.log", None))
    if jobs:
        run_side_by_side(jobs)
    data_done.touch()

    # ============ 3. conversion ============
    stage(3, n, "convert: both checkpoints and a random-init backbone -> detectron2 weights")
    weights = out / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    random_src = out / "pretrain" / "random_init_resnet18.pth"
    if not random_src.exists():
        random_backbone(random_src)
    sources = {name: out / "pretrain" / name / "checkpoint.pth" for name in METHODS}
    sources["random_init"] = random_src
    convert_all(sources, weights, logs / "convert.log")

    # ============ 4. detectron2 transfer ============
    jobs_n = 1 if device == "cuda" else max(1, min(2, cores()))
    stage(4, n, "transfer: detectron2 fine-tuning + evaluation (COCO instances, keypoints, Cityscapes)"
                + (f", {jobs_n} runs side by side" if jobs_n > 1 else ""))
    configs = [str(REPO / "configs/transfer/instant" / f"{p}_instant.yaml") for p in size["protocols"]]
    env = {"DETECTRON2_DATASETS": str(datasets)}
    runs = out / "runs"
    run([PY, "-m", "tools.launch", "--weights-dir", str(weights), "--configs", *configs, "--seeds", "0",
         "--runs", str(runs), "--jobs", str(jobs_n), "--", "MODEL.DEVICE", device, *size["d2"]],
        logs / "transfer.log", env=env)

    # ============ 5. tables and figures ============
    stage(5, n, "report: paper-style tables and figures")
    tables = out / "tables.md"
    run([PY, "-m", "tools.tables", str(runs), "--output", str(tables)], logs / "tables.log")
    photos = sorted(images.glob("*.jpg"))[:3]
    run_side_by_side([
        ([PY, "-m", "tools.figures.fig2_target_stability", "--output", str(out / "fig2_target_stability.png")],
         logs / "fig2.log", None),
        ([PY, "-m", "tools.figures.fig6_activations", "--checkpoints", *(str(s) for s in sources.values()),
          "--labels", *sources, "--images", *(str(p) for p in photos),
          "--output", str(out / "fig6_activations.png")], logs / "fig6.log", None)])

    print("\n" + tables.read_text())
    print(TOY_BANNER)
    print(f"\nDemo finished in {time.time() - t_start:.0f} s on {machine()}. Everything is in {shown(out)}:")
    for p in sorted(out.iterdir()):
        print(f"  {p.name}{'/' if p.is_dir() else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
