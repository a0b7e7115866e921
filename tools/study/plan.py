"""The study's stages as jobs (tools/study/jobs.py runs them): data, pretraining runs, backbone export,
conversion, evaluation and detection, for the parts asked for (tools/study/rows.py defines them)."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch

from pretrain import checkpoint, precision
from pretrain.model import resnet_backbone
from tools.data import scenes
from tools.data.subsets import balanced_subset, link_tree
from tools.study.cpu import this_cpu
from tools.study.jobs import Job, needed, save_json
from tools.study.rows import CONFIGS, INSTRUMENTS, detections_of, pretrained, rows_of, runs_of

PY = sys.executable
# R18-FPN, narrow FPN and heads, Table 1's keys
DET_CONFIG = "configs/transfer/instant/coco_R_50_FPN_1x_instant.yaml"


class StudyError(Exception):
    """Bad input: one line, exit status 2."""


def fp32_note(jobs: list[Job], device: str, bf16_units: list[str] | None = None) -> str | None:
    """A line to print when this CPU will pretrain in fp32: `amp: auto` takes bf16 only on CPUs with native
    bf16 units (pretrain/precision.py), and most of the record's pretraining runs were bf16 (docs/study.md),
    so a row pretrained here differs from them in precision and costs more CPU seconds."""
    units = precision.cpu_bf16_flags() if bf16_units is None else bf16_units
    if device != "cpu" or units or not any(j.stage == "pretrain" and not j.done() for j in jobs):
        return None
    return (f"{this_cpu()}: no native bf16 units, so pretraining runs in fp32 (amp: auto), in another "
            "precision than bf16-pretrained rows and at more CPU seconds (docs/study.md, 'Machines')")


def plan(args, p: dict, out: Path) -> list[Job]:
    """Every stage the parts ask for, in the order of priority (the instrument's rows first), without the
    stages whose results are all on disk already."""
    d = {k: out / k for k in ("data", "pretrain", "backbones", "weights", "knn", "det", "logs")}
    all_rows, runs = rows_of(p), runs_of(p)
    dets = detections_of(p, tuple(args.part), args.instrument)
    if args.rows:  # a session-sized share of the parts (--rows)
        dets = [x for x in dets if x[1] in args.rows]
    rows = {r: all_rows[r] for r in dict.fromkeys(row for _, row, _ in dets)}
    jobs: list[Job] = []
    common = [
        f"image_size={p['image_size']}",
        "cifar_stem=false",
        "workers=0",
        "tensorboard=false",
        f"device={args.device}",
        "seed=0",
        *p["extra"],
    ]
    for name in dict.fromkeys(r["run"] for r in rows.values() if pretrained(r)):
        run, r = d["pretrain"] / name, runs[name]
        module = "tools.study.supervised" if r["method"] == "supervised" else "pretrain"
        # keep only the last checkpoint (each is ~0.2 GB with its optimizer): every row takes a run's end
        jobs.append(
            Job(
                f"pretrain {name}",
                lambda run=run, e=r["epochs"]: (run / f"checkpoint_{e:04d}.pth").exists(),
                cmd=[
                    PY,
                    "-m",
                    module,
                    "--config",
                    CONFIGS[r["method"]],
                    "--data",
                    str(d["data"] / r["data"]),
                    "--output-dir",
                    str(run),
                    f"epochs={r['epochs']}",
                    f"save_every_epochs={r['epochs']}",
                    *common,
                    *r["overrides"],
                ],
                stage="pretrain",
            )
        )
    for row, r in rows.items():
        bb, w = d["backbones"] / f"{row}.pth", d["weights"] / f"{row}.pth"
        src = d["pretrain"] / r["run"] / f"checkpoint_{r['epochs']:04d}.pth" if pretrained(r) else None
        jobs.append(
            Job(
                f"export {row}",
                bb.exists,
                fn=lambda src=src, bb=bb: export_backbone(src, bb),
                deps=[] if src is None else [f"pretrain {r['run']}"],
                stage="convert",
            )
        )
        jobs.append(
            Job(
                f"convert {row}",
                w.exists,
                cmd=[PY, "-m", "transfer.convert", str(bb), str(w)],
                deps=[f"export {row}"],
                stage="convert",
            )
        )
        res = d["knn"] / row / "results.json"
        jobs.append(
            Job(
                f"eval {row}",
                res.exists,
                stage="eval",
                deps=[f"export {row}"],
                cmd=[
                    PY,
                    "-m",
                    "tools.evaluate",
                    str(bb),
                    "--train",
                    str(d["data"] / "knn_bank"),
                    "--val",
                    str(d["data"] / "knn_test"),
                    "--image-size",
                    str(p["image_size"]),
                    "--resize",
                    str(p["image_size"]),
                    "--out",
                    str(d["knn"] / row),
                    "--workers",
                    "0",
                    "--device",
                    args.device,
                ],
            )
        )
    # pretraining first (the longest jobs, which the most others wait for), then each row's conversion and
    # evaluation, then detection seed by seed across the rows: a share stopped part-way has as many seeds of
    # every row, a paired comparison, not all of one row's seeds and none of the next row's
    insts = list(dict.fromkeys(inst for inst, _, _ in dets))  # the main instrument first
    seed = {}
    for inst, row, s in dets:
        job = det_job(args, p, d, inst, row, s, d["weights"] / f"{row}.pth")
        seed[job.name] = (s, insts.index(inst))
        jobs.append(job)
    order = ["random", "supervised", "fastsiam", "simsiam", "k"]
    rank = {j.name: i for i, j in enumerate(jobs)}
    jobs = sorted(
        jobs,
        key=lambda j: (
            {"pretrain": 0, "transfer": 2}.get(j.stage, 1),
            seed.get(j.name, (0, 0)),
            next((i for i, m in enumerate(order) if m in j.name), 9),
            rank[j.name],
        ),
    )
    return needed(jobs)


def det_job(args, p, d, inst: str, row: str, seed: int, weights: Path) -> Job:
    run = d["det"] / inst / row / f"seed{seed}"
    s, det, sc = d["data"] / "scenes", p["det"], p["scenes"]
    fraction = INSTRUMENTS[inst]["train_fraction"]
    train = "train.json" if fraction == 1.0 else f"train_{fraction:g}.json"
    cmd = [
        PY,
        "-m",
        "transfer.train_net",
        "--resume",
        "--device",
        args.device,
        "--config-file",
        DET_CONFIG,
        "--dataset-train",
        f"study_{Path(train).stem}={s / train}:{s / 'train'}",
        "--dataset-test",
        f"study_val={s / 'val.json'}:{s / 'val'}",
        "MODEL.WEIGHTS",
        str(weights),
        "OUTPUT_DIR",
        str(run),
        "SEED",
        str(seed),
        "SOLVER.IMS_PER_BATCH",
        str(det["batch"]),
        "SOLVER.BASE_LR",
        str(det["lr"]),
        "SOLVER.MAX_ITER",
        str(det["iters"]),
        "SOLVER.STEPS",
        f"({int(det['iters'] * 0.8)},)",
        "SOLVER.WARMUP_ITERS",
        str(det["warmup"]),
        "SOLVER.CHECKPOINT_PERIOD",
        str(max(det["iters"] // 3, 1)),
        "TEST.EVAL_PERIOD",
        "0",
        "TEST.PRECISE_BN.NUM_ITER",
        str(det["precise_bn"]),
        "TEST.DETECTIONS_PER_IMAGE",
        "20",
        "DATALOADER.NUM_WORKERS",
        "0",
        "INPUT.MIN_SIZE_TRAIN",
        f"({sc['canvas']},)",
        "INPUT.MAX_SIZE_TRAIN",
        str(sc["canvas"]),
        "INPUT.MIN_SIZE_TEST",
        str(sc["canvas"]),
        "INPUT.MAX_SIZE_TEST",
        str(sc["canvas"]),
        *INSTRUMENTS[inst]["opts"],
    ]
    return Job(
        f"det {inst} {row} seed{seed}",
        (run / "results.json").exists,
        cmd=cmd,
        deps=[f"convert {row}"],
        stage="transfer",
    )


def export_backbone(src: Path | None, dst: Path) -> None:
    """torchvision-layout backbone (no fc) of a checkpoint, or the seed-0 initial weights every run starts
    from (the engine seeds, then builds the backbone first)."""
    if src is None:
        torch.manual_seed(0)
        sd = resnet_backbone("resnet18")[0].state_dict()
    else:
        sd = checkpoint.export_backbone(checkpoint.load_checkpoint(src))
    sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    dst.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.atomic_write(dst, lambda f: torch.save(sd, f))


def prepare_data(args, p: dict, out: Path) -> dict:
    """The pretraining subset and kNN sets (hard links) and the scenes; returns the scenes' manifest."""
    for split in ("train", "test"):
        if not (args.data / split).is_dir():
            raise StudyError(
                f"{args.data / split} not found: run `python -m tools.data.cifar10 --out {args.data}`"
            )
    # knn_bank and pretrain_fig5: prefixes of the pretraining set (the same seed, class-balanced)
    for name, split, n, seed in (
        ("pretrain", "train", p["images"], 0),
        ("knn_bank", "train", p["knn_bank"], 0),
        ("pretrain_fig5", "train", p["fig5"]["images"], 0),
        ("knn_test", "test", p["knn_test"], 1),
    ):
        paths, _, _ = balanced_subset(args.data / split, n, seed)
        link_tree(paths, args.data / split, out / "data" / name)
    manifest = scenes.build(out / "data" / "scenes", args.data / "test", **p["scenes"], seed=0)
    for inst in INSTRUMENTS.values():
        if inst["train_fraction"] < 1.0:
            low_data_split(out / "data" / "scenes", inst["train_fraction"])
    return manifest


def low_data_split(root: Path, fraction: float) -> Path:
    """train_<fraction>.json: the first ceil(fraction x N) train scenes (by id) with their annotations."""
    dst = root / f"train_{fraction:g}.json"
    if dst.exists():
        return dst
    coco = json.loads((root / "train.json").read_text())
    images = sorted(coco["images"], key=lambda im: im["id"])[
        : max(math.ceil(fraction * len(coco["images"])), 1)
    ]
    ids = {im["id"] for im in images}
    save_json(
        dst,
        {**coco, "images": images, "annotations": [a for a in coco["annotations"] if a["image_id"] in ids]},
    )
    return dst


