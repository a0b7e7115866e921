"""Kill-and-resume stress test (run by hand; not collected by pytest):

    .venv/bin/python tests/pretrain/kill_resume_stress.py [--kills 20] [--seed 0] [--workers 2]

One uninterrupted reference run, then sequences of the same run in a fresh output dir, each killed with
SIGKILL --per-sequence times (rerun after every kill), then run to the end; --kills kills in all. Kill
points, drawn at random: during start-up (a random delay), at a random iteration plus a random fraction of a
second, or the instant a checkpoint temp file appears (mid-write). After every kill: checkpoint.pth loads
(never corrupt) and at most `checkpoint_every` logged iterations are lost. After every sequence: the per-
epoch losses (last and mean) equal the reference run's exactly.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pretrain import checkpoint  # noqa: E402
from tests.pretrain.conftest import epoch_losses, pretrain_cmd, write_images  # noqa: E402


def logged_iterations(out: Path, skip_lines: int = 0) -> int:
    """The highest iteration in log.jsonl, ignoring its first `skip_lines` lines (written by earlier runs)."""
    log = out / "log.jsonl"
    if not log.exists():
        return 0
    lines = [x for x in log.read_text().splitlines() if x.strip()][skip_lines:]
    return max((json.loads(x)["iteration"] for x in lines), default=0)


def log_lines(out: Path) -> int:
    log = out / "log.jsonl"
    return len(log.read_text().splitlines()) if log.exists() else 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--per-sequence", type=int, default=5, help="kills before a sequence is run to the end")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    every = 2
    run = ["epochs=3", f"checkpoint_every={every}", "save_every_epochs=1", f"workers={args.workers}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    tmp = Path(tempfile.mkdtemp(prefix="kill_resume_"))
    data = tmp / "data"
    write_images(data, 32)  # batch 4: 8 iterations per epoch, 24 in all

    t0 = time.time()
    ref = tmp / "reference"
    r = subprocess.run(pretrain_cmd(data, ref, *run), cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    print(f"reference run: {time.time() - t0:.1f} s, epoch losses {epoch_losses(ref)}")

    total, kills, mid_write, max_lost, sequences, identical = 24, 0, 0, 0, 0, 0
    while kills < args.kills:
        # one sequence: a fresh output dir killed `per_sequence` times, then run to the end and compared
        sequences += 1
        out = tmp / f"killed{sequences}"
        for _ in range(min(args.per_sequence, args.kills - kills)):
            ckpt = out / "checkpoint.pth"
            done = checkpoint.load_checkpoint(ckpt)["iteration"] if ckpt.exists() else 0
            if done >= total:
                break
            mode = rng.choices(["start-up", "iteration", "mid-write"], weights=[1, 3, 2])[0]
            if not kill_once(out, data, run, env, rng, mode, rng.randint(done + 1, total)):
                print(f"  run ended before the {mode} kill point")
                continue
            kills += 1
            mid_write += mode == "mid-write"
            logged = logged_iterations(out)
            done = checkpoint.load_checkpoint(ckpt)["iteration"] if ckpt.exists() else 0  # raises if corrupt
            lost = logged - done
            max_lost = max(max_lost, lost)
            print(f"kill {kills:2d} ({mode:9s}): checkpoint at iteration {done:2d}, {logged:2d} logged, "
                  f"lost {lost}")
            assert lost <= every, "lost more than one checkpoint interval"
        r = subprocess.run(pretrain_cmd(data, out, *run), cwd=ROOT, env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        same = epoch_losses(out) == epoch_losses(ref)
        identical += same
        verdict = "identical to" if same else "DIFFER from"
        print(f"sequence {sequences}: per-epoch losses {verdict} the reference")
        if not same:
            print("got ", epoch_losses(out), "\nwant", epoch_losses(ref))
    print(f"{kills} kills ({mid_write} mid-write) in {sequences} sequences, at most {max_lost} iterations "
          f"lost per kill; {identical}/{sequences} sequences reproduce the uninterrupted run's per-epoch "
          f"losses exactly; {time.time() - t0:.0f} s")
    return 0 if identical == sequences else 1


def kill_once(out, data, run, env, rng, mode, target) -> bool:
    """Start the run and SIGKILL it at the chosen point; False if it finished first."""
    before = log_lines(out)
    proc = subprocess.Popen(pretrain_cmd(data, out, *run), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + rng.uniform(0, 3)
    while proc.poll() is None:
        if mode == "start-up" and time.time() > deadline:
            break
        if mode != "start-up" and logged_iterations(out, before) >= target:
            if mode == "iteration":
                time.sleep(rng.uniform(0, 0.5))
                break
            if list(out.glob(".checkpoint.pth.tmp.*")):
                break
        time.sleep(0.001)
    if proc.poll() is not None:
        return False
    proc.kill()
    proc.wait()
    return True


if __name__ == "__main__":
    sys.exit(main())
