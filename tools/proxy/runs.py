"""The proxy's pretraining runs: planned for equal views, launched as `python -m pretrain` subprocesses."""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pretrain.checkpoint import CheckpointError, load_checkpoint
from pretrain.config import load_config

ROOT = Path(__file__).resolve().parents[2]


class BenchError(Exception):
    """Bad input or a failed run: one line, exit status 2."""


def run_name(method: str, amp: str, args) -> str:
    """The method's name, with the precision appended when several are compared (--amp off bf16)."""
    return method if len(args.amp) == 1 else f"{method}_{amp}"


def plan_runs(args, num_images: int) -> list[dict]:
    """One dict per (seed, method, amp): the engine command's overrides and the epochs for equal views."""
    cfgs = {name: load_config(getattr(args, f"{name}_config"), args.set, data=".", output_dir=".")
            for name in ("fastsiam", "simsiam")}
    fast = cfgs["fastsiam"]
    if args.batch_size:
        for c in cfgs.values():
            c.batch_size = args.batch_size
    views_per_epoch = {n: (num_images // c.batch_size) * c.batch_size * c.num_views for n, c in cfgs.items()}
    if views_per_epoch["fastsiam"] == 0:
        raise BenchError(f"{num_images} images are fewer than one batch of {fast.batch_size}")
    fast_epochs = max(1, round(args.views / views_per_epoch["fastsiam"]))
    fast_every = max(1, round(args.eval_every_views / views_per_epoch["fastsiam"]))
    runs = []
    for seed in args.seeds:
        for method in args.methods:
            c = cfgs[method]
            ratio = 1 if args.equal == "epochs" else views_per_epoch["fastsiam"] / views_per_epoch[method]
            if ratio != int(ratio):
                raise BenchError(f"{method}: views per epoch {views_per_epoch[method]} do not divide "
                                 f"FastSiam's {views_per_epoch['fastsiam']}; use one batch size or "
                                 "--equal epochs")
            epochs, every = fast_epochs * int(ratio), fast_every * int(ratio)
            for amp in args.amp:
                name = run_name(method, amp, args)
                runs.append(dict(name=name, seed=seed, config=getattr(args, f"{method}_config"),
                                 epochs=epochs, out=args.out / f"seed{seed}" / name, cfg=c,
                                 overrides=[f"epochs={epochs}", f"save_every_epochs={every}", f"seed={seed}",
                                            f"batch_size={c.batch_size}", f"workers={args.workers}",
                                            f"device={args.device}", "max_images=0", f"amp={amp}",
                                            *args.set]))
    return runs


def finished(run: dict) -> bool:
    try:
        ckpt = load_checkpoint(run["out"] / "checkpoint.pth")
    except CheckpointError:
        return False
    return epochs_done(ckpt) >= run["epochs"]


def epochs_done(ckpt: dict) -> int:
    """Completed epochs of a checkpoint: `epochs_done`, or `epoch` in checkpoints written before it had a name
    (log.jsonl's `epoch` is another count, the 0-based running epoch)."""
    return ckpt["epochs_done"] if "epochs_done" in ckpt else ckpt["epoch"]


def _own_session() -> None:
    """In the child: its own session, because Linux autogroup scheduling shares the CPU per session (each
    method then gets a share of its own on a busy machine, as plain processes do without autogroups); and
    SIGTERM when the tool dies (PR_SET_PDEATHSIG), on which the engine writes a checkpoint and exits."""
    os.setsid()
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def wait_for_previous(run: dict) -> None:
    """A run left by a killed tool may still be writing its last checkpoint: wait until it is gone."""
    pid_file = run["out"] / "engine.pid"
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return
    while True:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
        except OSError:
            return  # gone (or not Linux)
        if str(run["out"]) not in cmdline:
            return  # the pid now belongs to something else
        time.sleep(0.2)


def launch(run: dict, data_dir: Path, threads: int) -> subprocess.Popen:
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    run["out"].mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pretrain", "--config", str(run["config"]), "--data", str(data_dir),
           "--output-dir", str(run["out"]), *run["overrides"]]
    log = open(run["out"].parent / f"{run['name']}.log", "a")
    print(f"start seed {run['seed']} {run['name']}: {' '.join(cmd)}", flush=True)
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=_own_session)
    (run["out"] / "engine.pid").write_text(str(proc.pid))
    return proc
