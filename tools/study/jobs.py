"""The study's scheduler: every stage a Job, run as subprocesses `parallel` at a time (each single-threaded in
its own session) once its dependencies are done; CPU and wall seconds per job in OUT/timings.json; SIGTERM and
SIGINT stop the running jobs (pretraining writes a checkpoint, detectron2 resumes from its own) and a rerun
resumes. Nothing here knows what the stages are: tools/study/plan.py makes them."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tools.results.output import write_atomic
from tools.study.cpu import this_cpu

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Job:
    name: str
    done: Callable[[], bool]  # () -> bool
    cmd: list[str] | None = None  # a subprocess, or
    fn: Callable[[], None] | None = None  # an in-process step (seconds)
    deps: list[str] = field(default_factory=list)
    stage: str = ""


def needed(jobs: list[Job]) -> list[Job]:
    """The jobs that produce a result (eval, det) and the undone ones their undone results depend on: a rerun
    after the fine-tuned results are in does not pretrain again because a checkpoint was cleaned up."""
    by_name = {j.name: j for j in jobs}
    keep: set[str] = set()
    todo = [j for j in jobs if j.stage in ("eval", "transfer")]
    keep.update(j.name for j in todo)
    todo = [j for j in todo if not j.done()]
    while todo:
        j = todo.pop()
        for dep in j.deps:
            if dep not in keep:
                keep.add(dep)
                if not by_name[dep].done():
                    todo.append(by_name[dep])
    return [j for j in jobs if j.name in keep]


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

    def record(name: str, stage: str, wall: float, usage, finished: bool) -> dict:
        """CPU and wall seconds of a job, summed over its attempts (an interrupted run resumes later)."""
        t = timings.get(name)
        if t is None or t.get("finished"):
            # a first run, or a new one after a finished run whose outputs are gone (a share that imported the
            # record pretrains a row again): its seconds are its own, not added to the finished run's (kept
            # under "earlier" for the stage sums)
            earlier = [] if t is None else [*t.pop("earlier", []), t]
            t = {"stage": stage, "wall_s": 0.0, "cpu_s": 0.0, "attempts": 0}
            if earlier:
                t["earlier"] = earlier
        # CPU seconds (Fig. 4's axis) compare only on one CPU model: a resume elsewhere is recorded, and so is
        # one after an attempt timed before the model was recorded (its machine is unknown)
        here = this_cpu()
        before = t.get("cpu", "not recorded" if t["cpu_s"] else here)
        t.update(
            cpu=here if before == here else f"{before} + {here}",
            wall_s=round(t["wall_s"] + wall, 1),
            attempts=t.get("attempts", 1) + 1,
            cpu_s=round(t["cpu_s"] + usage.ru_utime + usage.ru_stime, 1),
            finished=finished and time.time(),
        )
        timings[name] = t
        save_json(out / "timings.json", timings)
        return t

    def stop(signum, frame):  # pretraining writes a checkpoint on SIGTERM; detectron2 resumes from its own
        for _, proc, _ in active.values():
            os.killpg(proc.pid, signal.SIGTERM)
        for name, (j, proc, t0) in active.items():
            _, _, usage = os.wait4(proc.pid, 0)
            record(name, j.stage, time.time() - t0, usage, finished=False)
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
                        proc = subprocess.Popen(
                            j.cmd,
                            cwd=ROOT,
                            env=env,
                            stdout=f,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,
                        )  # its own share of the CPU (autogroup)
                    active[j.name] = (j, proc, time.time())
                    print(f"  start: {j.name}  (log: {log.relative_to(out)})", flush=True)
            for name, (j, proc, t0) in list(active.items()):
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # rusage: the job's own CPU seconds
                if pid == 0:
                    continue
                proc.returncode = os.waitstatus_to_exitcode(status)
                del active[name]
                wall = time.time() - t0
                ok = proc.returncode == 0 and j.done()
                t = record(name, j.stage, wall, usage, finished=ok)
                if ok:
                    done.add(name)
                    print(f"  done: {name} in {wall:.0f} s ({t['cpu_s']:.0f} CPU s)", flush=True)
                    # only the scores are needed again: not the fine-tuned model (~100 MB a run) nor the
                    # evaluation's feature cache (~30 MB a row)
                    if j.stage == "transfer":
                        _, inst, row, seed = name.split()
                        for f in (out / "det" / inst / row / seed).glob("model_*.pth"):
                            f.unlink()
                    if j.stage == "eval":
                        shutil.rmtree(out / "knn" / name.split()[1] / "features", ignore_errors=True)
                else:
                    failed.append(j)
                    print(
                        f"  FAILED: {name} (exit {proc.returncode}); log: logs/{name.replace(' ', '_')}.log",
                        flush=True,
                    )
            time.sleep(0.2 if active else 0)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return failed


def save_json(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=1, sort_keys=True))


