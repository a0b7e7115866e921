"""What a user sees on a long run with the output redirected: lines instead of a tqdm bar, a log row and a
record when a signal stops the run, the start-up line's wording on the CPU, the checkpoint's epoch count."""
import json
import os
import signal
import subprocess
import time

from pretrain import checkpoint
from tests.pretrain.conftest import ROOT, pretrain_cmd, run_pretrain


def test_redirected_output_gets_one_line_per_logging_step(image_dir, tmp_path):
    # 16 images, batch 4: 4 iterations per epoch; logging every 2 -> a line at iteration 2, then the epoch line
    r = run_pretrain(image_dir, tmp_path, "epochs=1", "log_every=2")  # stdout and stderr are pipes, not a TTY
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and "\r" not in r.stdout  # no tqdm bar redrawn into the file
    assert "epoch 1/1 iteration 2/4: loss " in r.stdout and " views/s, data wait " in r.stdout
    assert "epoch 1/1: loss " in r.stdout  # the end-of-epoch summary as before
    assert "4 per process x 1 processes" in r.stdout and "per GPU" not in r.stdout
    ckpt = checkpoint.load_checkpoint(tmp_path / "checkpoint.pth")
    assert ckpt["epochs_done"] == 1 and ckpt["iteration"] == 4  # completed epochs...
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 0]  # ...while log.jsonl counts the running epoch from 0


def test_sigterm_logs_the_last_iterations_and_the_stop(image_dir, tmp_path):
    # log_every=1000: no regular log line before the signal, so the stop row is the last one (epoch-end rows
    # may come before it when this process is slow to send the signal)
    cmd = pretrain_cmd(image_dir, tmp_path, "epochs=50", "log_every=1000", "checkpoint_every=1")
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not (tmp_path / "checkpoint.pth").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "stopped at iteration" in stdout
    stopped = checkpoint.load_checkpoint(tmp_path / "checkpoint.pth")["iteration"]
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    # the stop's row is the last; an epoch-end row may precede it if the test process was slow to signal
    assert [r.get("stopped") for r in rows].count("SIGTERM") == 1
    row = rows[-1]
    assert row["stopped"] == "SIGTERM" and row["iteration"] == stopped < 200
    assert row["checkpoint"] == str(tmp_path / "checkpoint.pth")
    assert {"epoch", "loss", "lr", "views_per_s", "data_wait", "z_std"} <= set(row)  # a normal row otherwise
