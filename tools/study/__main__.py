"""A small-scale Table 1 and Fig. 4 on real images: CIFAR-10 pretraining -> Mask R-CNN on CIFAR-10 scenes.

    python -m tools.data.cifar10                          # once: data/cifar10/{train,test}
    python -m tools.study --out runs/study               # full: 2.1 h on an idle 2-core CPU (docs/study.md)
    python -m tools.study --out runs/study_quick --quick # the same pipeline in under 20 minutes
    python -m tools.study --out runs/study_val --rows random supervised   # the instrument check alone

Rows at equal compute (the same number of views through forward and backward), all from the same initial
ResNet-18 (standard stem, seed 0) and one hyper-parameter setting (configs/pretrain/cifar10_*_bs32.yaml:
batch 32, the paper's lr rule 0.125 x batch / 32, cosine; images at 64 px):
  random       the initial weights, no pretraining
  supervised   cross-entropy on the CIFAR-10 labels, 2 views per image (tools/study/supervised.py)
  simsiam_N    SimSiam, 2 views, checkpoints after N views (budgets 1/4, 1/2, 1 of the full budget)
  fastsiam_N   FastSiam, 4 views (K = 3), checkpoints after N views (the same budgets)
Each row: backbone -> `python -m transfer.convert` -> `python -m transfer.train_net` (Mask R-CNN R18-FPN,
the Table 1 protocol's structure: SyncBN in backbone, FPN and heads, 4conv1fc box head; the same iterations
and lr for every row) on COCO-format scenes of CIFAR-10 test images (tools/data/scenes.py), once per seed;
and a kNN top-1 on CIFAR-10 test (tools/study/knn_eval.py). Every stage is a subprocess, two at a time, each
single-threaded in its own session (as tools/proxy/, docs/proxy.md). Rerun the same command
to resume: finished stages are skipped, the pretraining runs continue from their checkpoints, and the report
(OUT/report: study.md, fig4.png, results.json) is regenerated.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pretrain import checkpoint
from pretrain.model import resnet_backbone
from tools.data import scenes
from tools.data.subsets import SubsetError, balanced_subset, link_tree
from tools.study import report
from tools.study.rows import CONFIGS, PRESETS, rows_of

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
DET_CONFIG = "configs/transfer/instant/coco_R_50_FPN_1x_instant.yaml"  # R18-FPN, narrow FPN/heads, Table 1 keys


class StudyError(Exception):
    """Bad input: one line, exit status 2."""


@dataclass
class Job:
    name: str
    done: callable  # () -> bool
    cmd: list[str] | None = None  # a subprocess, or
    fn: callable = None  # an in-process step (seconds)
    deps: list[str] = field(default_factory=list)
    stage: str = ""


def plan(args, p: dict, out: Path) -> list[Job]:
    """Every stage as a job, in the order of priority: the instrument (random, supervised) first."""
    d = {k: out / k for k in ("data", "pretrain", "backbones", "weights", "knn", "det", "logs")}
    rows = {r: v for r, v in rows_of(p).items() if not args.rows or r.split("_")[0] in args.rows}
    jobs: list[Job] = []
    common = [f"image_size={p['image_size']}", "cifar_stem=false", "workers=0", "tensorboard=false",
              f"device={args.device}", "seed=0", *p["extra"]]
    for method in dict.fromkeys(m for m, _ in rows.values() if m != "random"):
        epochs = (1 if method == "fastsiam" else 2) * p["epochs"]
        # keep only the checkpoints a row takes (and their multiples): each is ~0.2 GB with its optimizer
        keep = math.gcd(epochs, *(ep for m, ep in rows.values() if m == method))
        run = d["pretrain"] / method
        module = "tools.study.supervised" if method == "supervised" else "pretrain"
        jobs.append(Job(f"pretrain {method}", lambda run=run, e=epochs: (run / f"checkpoint_{e:04d}.pth").exists(),
                        cmd=[PY, "-m", module, "--config", CONFIGS[method], "--data", str(d["data"] / "pretrain"),
                             "--output-dir", str(run), f"epochs={epochs}", f"save_every_epochs={keep}", *common],
                        stage="pretrain"))
    for row, (method, ep) in rows.items():
        bb, w = d["backbones"] / f"{row}.pth", d["weights"] / f"{row}.pth"
        src = None if method == "random" else d["pretrain"] / method / f"checkpoint_{ep:04d}.pth"
        jobs.append(Job(f"export {row}", bb.exists, fn=lambda src=src, bb=bb: export_backbone(src, bb),
                        deps=[] if src is None else [f"pretrain {method}"], stage="convert"))
        jobs.append(Job(f"convert {row}", w.exists, cmd=[PY, "-m", "transfer.convert", str(bb), str(w)],
                        deps=[f"export {row}"], stage="convert"))
        for seed in p["seeds"]:
            jobs.append(det_job(args, p, d, row, seed, w))
    backbones = [d["backbones"] / f"{r}.pth" for r in rows]
    jobs.append(Job("knn", lambda: all((d["knn"] / f"{b.stem}.json").exists() for b in backbones),
                    cmd=[PY, "-m", "tools.study.knn_eval", "--bank", str(d["data"] / "knn_bank"), "--test",
                         str(d["data"] / "knn_test"), "--size", str(p["image_size"]), "--out-dir", str(d["knn"]),
                         "--device", args.device,
                         *map(str, backbones)], deps=[f"export {r}" for r in rows], stage="knn"))
    order = ["random", "supervised", "fastsiam", "simsiam"]  # the instrument's rows first
    rank = {j.name: i for i, j in enumerate(jobs)}
    return sorted(jobs, key=lambda j: (next((i for i, m in enumerate(order) if m in j.name), 9), rank[j.name]))


def det_job(args, p, d, row: str, seed: int, weights: Path) -> Job:
    run = d["det"] / row / f"seed{seed}"
    s, det, sc = d["data"] / "scenes", p["det"], p["scenes"]
    cmd = [PY, "-m", "transfer.train_net", "--resume", "--device", args.device, "--config-file", DET_CONFIG,
           "--dataset-train", f"study_train={s / 'train.json'}:{s / 'train'}",
           "--dataset-test", f"study_val={s / 'val.json'}:{s / 'val'}",
           "MODEL.WEIGHTS", str(weights), "OUTPUT_DIR", str(run), "SEED", str(seed),
           "SOLVER.IMS_PER_BATCH", str(det["batch"]), "SOLVER.BASE_LR", str(det["lr"]),
           "SOLVER.MAX_ITER", str(det["iters"]), "SOLVER.STEPS", f"({int(det['iters'] * 0.8)},)",
           "SOLVER.WARMUP_ITERS", str(det["warmup"]), "SOLVER.CHECKPOINT_PERIOD", str(max(det["iters"] // 3, 1)),
           "TEST.EVAL_PERIOD", "0", "TEST.PRECISE_BN.NUM_ITER", str(det["precise_bn"]),
           "TEST.DETECTIONS_PER_IMAGE", "20", "DATALOADER.NUM_WORKERS", "0",
           "INPUT.MIN_SIZE_TRAIN", f"({sc['canvas']},)", "INPUT.MAX_SIZE_TRAIN", str(sc["canvas"]),
           "INPUT.MIN_SIZE_TEST", str(sc["canvas"]), "INPUT.MAX_SIZE_TEST", str(sc["canvas"])]
    return Job(f"det {row} seed{seed}", (run / "results.json").exists, cmd=cmd, deps=[f"convert {row}"],
               stage="transfer")


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
            raise StudyError(f"{args.data / split} not found: run "
                             f"`python -m tools.data.cifar10 --out {args.data}`")
    for name, split, n, seed in (("pretrain", "train", p["images"], 0), ("knn_bank", "train", p["knn_bank"], 0),
                                 ("knn_test", "test", p["knn_test"], 1)):
        paths, _, _ = balanced_subset(args.data / split, n, seed)  # knn_bank: a prefix of the pretraining set
        link_tree(paths, args.data / split, out / "data" / name)
    return scenes.build(out / "data" / "scenes", args.data / "test", **p["scenes"], seed=0)


def run_jobs(jobs: list[Job], out: Path, parallel: int, timings: dict) -> list[Job]:
    """Run every job whose dependencies are done, `parallel` subprocesses at a time; returns the failed."""
    done = {j.name for j in jobs if j.done()}
    for j in jobs:
        if j.name in done:
            print(f"  done earlier: {j.name}", flush=True)
    pending = [j for j in jobs if j.name not in done]
    active: dict[str, tuple[Job, subprocess.Popen, float]] = {}
    failed: list[Job] = []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

    def stop(signum, frame):  # pretraining writes a checkpoint on SIGTERM; detectron2 resumes from its own
        for _, proc, _ in active.values():
            os.killpg(proc.pid, signal.SIGTERM)
        for _, proc, _ in active.values():
            proc.wait()
        raise SystemExit(128 + signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while pending or active:
            blocked = {j.name for j in failed}
            for j in list(pending):
                if any(dep in blocked for dep in j.deps):
                    pending.remove(j)
                    failed.append(j)
                    print(f"  skipped (a dependency failed): {j.name}", flush=True)
                elif all(dep in done for dep in j.deps) and (j.fn or len(active) < parallel):
                    pending.remove(j)
                    if j.fn:
                        j.fn()
                        done.add(j.name)
                        continue
                    log = out / "logs" / (j.name.replace(" ", "_") + ".log")
                    log.parent.mkdir(parents=True, exist_ok=True)
                    with open(log, "a") as f:
                        f.write("$ " + " ".join(j.cmd) + "\n")
                        f.flush()
                        proc = subprocess.Popen(j.cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                                start_new_session=True)  # its own share of the CPU (autogroup)
                    active[j.name] = (j, proc, time.time())
                    print(f"  start: {j.name}  (log: {log.relative_to(out)})", flush=True)
            for name, (j, proc, t0) in list(active.items()):
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # rusage: the job's own CPU seconds
                if pid == 0:
                    continue
                proc.returncode = os.waitstatus_to_exitcode(status)
                del active[name]
                wall = time.time() - t0
                if proc.returncode == 0 and j.done():
                    done.add(name)
                    timings[name] = {"stage": j.stage, "wall_s": round(wall, 1),
                                     "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "finished": time.time()}
                    save_json(out / "timings.json", timings)
                    print(f"  done: {name} in {wall:.0f} s ({timings[name]['cpu_s']:.0f} CPU s)", flush=True)
                    if j.stage == "transfer":  # the fine-tuned model is not needed again (~100 MB a run)
                        for f in (out / "det").glob(f"{name.split()[1]}/{name.split()[2]}/model_*.pth"):
                            f.unlink()
                else:
                    failed.append(j)
                    print(f"  FAILED: {name} (exit {proc.returncode}); log: logs/{name.replace(' ', '_')}.log",
                          flush=True)
            time.sleep(0.2 if active else 0)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return failed


def save_json(path: Path, obj) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.study", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--out", type=Path, required=True, help="output folder (e.g. runs/study)")
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", const="quick", dest="preset", help="under 20 minutes")
    size.add_argument("--tiny", action="store_const", const="tiny", dest="preset", help="the test suite's")
    ap.add_argument("--data", type=Path, default=Path("data/cifar10"), help="tools.data.cifar10 output")
    ap.add_argument("--rows", nargs="+", choices=("random", "supervised", "simsiam", "fastsiam"),
                    help="only these rows (e.g. the instrument check: random supervised)")
    ap.add_argument("--det-iters", type=int, help="detectron2 iterations for every row (the instrument's size; "
                    "the preset's by default)")
    ap.add_argument("--parallel", type=int, default=2, help="subprocesses at a time (one thread each)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = ap.parse_args(argv)
    preset = args.preset or "full"
    p = json.loads(json.dumps(PRESETS[preset]))  # a copy, tuples as lists: as study.json stores it
    if args.det_iters:
        p["det"]["iters"] = args.det_iters
    out = args.out.resolve()
    try:
        if args.parallel < 1 or (args.det_iters is not None and args.det_iters < 1):
            raise StudyError("--parallel and --det-iters must be at least 1")
        out.mkdir(parents=True, exist_ok=True)
        state_path = out / "study.json"
        state = json.loads(state_path.read_text()) if state_path.exists() else {}
        if state.get("preset", preset) != preset or state.get("settings", p) != p:
            raise StudyError(f"{out} holds a study with other settings (--{state['preset']}); use another --out")
        state.update(preset=preset, settings=p)
        state.setdefault("invocations", []).append(
            {"command": "python -m tools.study " + " ".join(argv if argv is not None else sys.argv[1:]),
             "started": time.time()})
        save_json(state_path, state)
        print(f"study ({preset}) -> {out}", flush=True)
        manifest = prepare_data(args, p, out)
        print(f"  scenes: {manifest['counts']}, sha256 {manifest['sha256'][:16]}...", flush=True)
        timings = json.loads((out / "timings.json").read_text()) if (out / "timings.json").exists() else {}
        jobs = plan(args, p, out)
        # what this invocation found done: the report shows that a rerun of a finished study only reports
        state["invocations"][-1].update(stages=len(jobs), done_before=sum(bool(j.done()) for j in jobs))
        failed = run_jobs(jobs, out, args.parallel, timings)
    except (StudyError, SubsetError, scenes.SceneError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    state["invocations"][-1].update(finished=time.time(), failed=len(failed))
    save_json(state_path, state)
    paths = report.write(out, rows_of(p), p, preset)
    print(f"report: {', '.join(str(x) for x in paths)}", flush=True)
    if failed:
        print(f"error: {len(failed)} stage(s) failed or were skipped: {', '.join(j.name for j in failed[:5])}; "
              "see OUT/logs, then rerun to resume", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
