"""The engine end to end on CPU: outputs, exact resume after SIGKILL/SIGTERM/Ctrl-C, bad data, guards, DDP."""
import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pretrain import checkpoint, engine
from pretrain.__main__ import main
from pretrain.config import load_config
from tests.pretrain.conftest import (
    ROOT,
    TINY,
    epoch_losses,
    pretrain_cmd,
    run_pretrain,
    write_bad_files,
    write_images,
)

RUN = ["epochs=2", "checkpoint_every=1", "save_every_epochs=1"]  # 16 images / batch 4: 4 iterations per epoch


@pytest.fixture(scope="module")
def reference(image_dir, module_tmp) -> Path:
    """An uninterrupted 2-epoch run: the per-epoch losses every interrupted run must reproduce."""
    out = module_tmp("reference")
    r = run_pretrain(image_dir, out, *RUN, "tensorboard=true")
    assert r.returncode == 0, r.stderr
    return out


def test_smoke_run_outputs(reference):
    rows = [json.loads(line) for line in (reference / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == list(range(1, 9))
    for r in rows:
        assert {"epoch", "iteration", "loss", "lr", "views_per_s", "data_wait", "z_std"} <= set(r)
    ends = [r for r in rows if r.get("epoch_end")]
    assert [r["epoch"] for r in ends] == [0, 1] and all(r["skipped_images"] == 0 for r in ends)
    ckpt = torch.load(reference / "checkpoint.pth", map_location="cpu", weights_only=True)
    assert (ckpt["epoch"], ckpt["iteration"]) == (2, 8)
    assert {k.split(".")[0] for k in ckpt["model"]} == {"backbone", "projector", "predictor"}
    assert ckpt["config"]["arch"] == "resnet18" and ckpt["config"]["_run"]["lr"] == 0.125 * 4 / 32
    assert checkpoint.load_checkpoint(reference / "checkpoint_0001.pth")["iteration"] == 4
    cfg = (reference / "config.yaml").read_text()
    assert "git:" in cfg and "per_gpu_batch: 4" in cfg
    assert list(reference.glob("events.out.tfevents.*"))
    assert not list(reference.glob(".*tmp*"))


def _start(data, out, *overrides):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(pretrain_cmd(data, out, *RUN, *overrides), cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for(cond, proc, timeout=240.0, poll=0.002):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(poll)
    raise TimeoutError


def _iteration(out):
    return checkpoint.load_checkpoint(out / "checkpoint.pth")["iteration"]


@pytest.mark.slow  # three runs of the tiny model: ~25 s on 2 cores
def test_sigkill_anywhere_then_rerun_reproduces_epoch_losses(image_dir, reference, tmp_path):
    out = tmp_path / "out"
    # 1) killed while a checkpoint is being written (its temp file exists): the previous one must survive
    proc = _start(image_dir, out)
    writing = lambda: (out / "checkpoint.pth").exists() and list(out.glob(".checkpoint.pth.tmp.*"))  # noqa: E731
    assert _wait_for(writing, proc)
    proc.kill()
    proc.communicate()
    done = _iteration(out)
    assert 1 <= done < 8
    # 2) rerun, killed again at an arbitrary moment after its next checkpoint (a mid-epoch resume point)
    proc = _start(image_dir, out)
    assert _wait_for(lambda: (out / "checkpoint.pth").exists() and _safe_iteration(out) > done, proc)
    time.sleep(0.3)
    proc.kill()
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    # 3) rerun to the end
    r = run_pretrain(image_dir, out, *RUN)
    assert r.returncode == 0, r.stderr
    assert "resuming from" in r.stdout
    assert epoch_losses(out) == epoch_losses(reference)  # bit-identical on CPU with a fixed seed


def _log_lines(out):
    log = out / "log.jsonl"
    return len(log.read_text().splitlines()) if log.exists() else 0


def _safe_iteration(out):
    try:
        return _iteration(out)
    except checkpoint.CheckpointError:  # cannot happen with atomic writes; fail loudly if it does
        raise AssertionError("checkpoint.pth was readable-but-corrupt mid-run") from None


@pytest.mark.slow  # three runs of the tiny model: ~25 s on 2 cores
def test_sigterm_and_ctrl_c_checkpoint_and_exit_cleanly(image_dir, reference, tmp_path):
    out = tmp_path / "out"
    for sig in (signal.SIGTERM, signal.SIGINT):
        proc = _start(image_dir, out)
        start = _log_lines(out)
        assert _wait_for(lambda n=start: _log_lines(out) > n, proc, poll=0.01)  # training has started
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        assert f"received {sig.name}" in stdout and "stopped at iteration" in stdout
        stopped = int(stdout.split("stopped at iteration ")[1].split(";")[0])
        assert _iteration(out) == stopped < 8
    r = run_pretrain(image_dir, out, *RUN)
    assert r.returncode == 0, r.stderr
    assert epoch_losses(out) == epoch_losses(reference)


def test_corrupt_files_are_skipped_and_counted(tmp_path, capsys):
    write_images(tmp_path / "data", 8)
    write_bad_files(tmp_path / "data" / "junk")
    out = tmp_path / "out"
    assert main(["--data", str(tmp_path / "data"), "--output-dir", str(out), *TINY, "epochs=1"]) == 0
    stdout = capsys.readouterr().out
    assert "8 images under" in stdout and "(skipped 4 unreadable images)" in stdout
    assert stdout.count("warning: skipping unreadable image") == 4
    ends = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if '"epoch_end"' in x]
    assert ends[-1]["skipped_images"] == 4


def test_all_bad_or_empty_folder_is_a_clear_error(tmp_path, capsys):
    write_bad_files(tmp_path / "bad")
    (tmp_path / "empty").mkdir()
    for folder, message in (("bad", "none of the 4 image files"), ("empty", "no image files")):
        assert main(["--data", str(tmp_path / folder), "--output-dir", str(tmp_path / "o"), *TINY]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1


def _make_unwritable(folder: Path):
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return lambda: folder.chmod(0o755)
    # root ignores permission bits; the immutable attribute stops root too
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("running as root without chattr: cannot make a read-only folder")
    return lambda: subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_read_only_output_dir_is_a_clear_error_and_keeps_checkpoint(reference, image_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(reference / "checkpoint.pth", out / "checkpoint.pth")
    before = (out / "checkpoint.pth").read_bytes()
    undo = _make_unwritable(out)
    try:
        rc = main(["--data", str(image_dir), "--output-dir", str(out), *TINY, "epochs=3"])
    finally:
        undo()
    assert rc == 2
    assert capsys.readouterr().err == f"error: output dir {out} is not writable (read-only or full)\n"
    assert (out / "checkpoint.pth").read_bytes() == before


def test_resume_refuses_a_changed_trajectory_and_allows_changed_logging(reference, image_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(reference / "checkpoint.pth", out / "checkpoint.pth")
    before = (out / "checkpoint.pth").read_bytes()
    args = ["--data", str(image_dir), "--output-dir", str(out), *TINY]
    # the reference ran batch 4, seed 0, 2 epochs (lr 0.125 x 4 / 32, 4 iterations per epoch)
    assert main([*args, "epochs=3", "batch_size=8", "seed=1", "fix_pred_lr=false"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {out / 'checkpoint.pth'} was trained with other")
    for change in ("epochs 2 -> 3", "batch_size 4 -> 8", "seed 0 -> 1", "fix_pred_lr True -> False",
                   "lr 0.015625 -> 0.03125", "iterations per epoch (readable images // batch_size) 4 -> 2"):
        assert change in err
    assert (out / "checkpoint.pth").read_bytes() == before and not (out / "config.yaml").exists()
    # workers, logging, checkpoint cadence and the kNN monitor may differ: the finished run has nothing to do
    assert main([*args, "epochs=2", "log_every=3", "checkpoint_every=0", "save_every_epochs=9",
                 "tensorboard=true", "collapse_threshold=0.5", "knn_k=10"]) == 0
    assert "has done 8 of 8 iterations: nothing to do" in capsys.readouterr().out


def _tiny_cfg(data, out, *extra):
    overrides = [*TINY, "epochs=1", "checkpoint_every=1", *extra]
    return load_config(None, overrides, data=str(data), output_dir=str(out))


def test_disk_full_during_run_stops_with_previous_checkpoint(image_dir, tmp_path, monkeypatch):
    real_save, calls = torch.save, []

    def save_then_fill_disk(obj, f, *a, **k):
        calls.append(1)
        if len(calls) > 2:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save_then_fill_disk)
    with pytest.raises(engine.RunError, match="No space left on device; the previous file is unchanged"):
        engine.train(_tiny_cfg(image_dir, tmp_path))
    assert checkpoint.load_checkpoint(tmp_path / "checkpoint.pth")["iteration"] == 2


def test_non_finite_loss_stops_naming_the_iteration(image_dir, tmp_path):
    # lr=1e30: the first step blows the weights up, the second iteration's loss is NaN
    with pytest.raises(engine.RunError, match=r"loss is nan at iteration 2 \(epoch 1\).*last good"):
        engine.train(_tiny_cfg(image_dir, tmp_path, "lr=1e30"))
    assert checkpoint.load_checkpoint(tmp_path / "checkpoint.pth")["iteration"] == 1


def test_options_knn_monitor_collapse_warning_fixed_pred_lr(image_dir, tmp_path, capsys):
    """One in-process run through the other code paths: augment=reference, bn_mode=joint, the kNN monitor,
    the collapse warning (threshold set above any healthy value) and the fixed predictor lr."""
    cfg = _tiny_cfg(image_dir, tmp_path, "augment=reference", "bn_mode=joint", f"knn_train={image_dir}",
                    f"knn_val={image_dir}", "collapse_threshold=100", "checkpoint_every=0")
    engine.train(cfg)
    ends = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines() if '"epoch_end"' in x]
    assert 0.0 <= ends[0]["knn_top1"] <= 1.0
    assert "the representation may be collapsing" in capsys.readouterr().err
    groups = checkpoint.load_checkpoint(tmp_path / "checkpoint.pth")["optimizer"]["param_groups"]
    base = 0.125 * 4 / 32
    assert groups[1]["fix_lr"] and groups[1]["lr"] == base  # predictor: SimSiam's --fix-pred-lr
    assert not groups[0]["fix_lr"] and groups[0]["lr"] < base  # the rest follows the cosine
    assert checkpoint.load_model(tmp_path / "checkpoint.pth").bn_mode == "joint"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_amp_channels_last_run(image_dir, tmp_path):
    engine.train(_tiny_cfg(image_dir, tmp_path, "device=cuda", "amp=true", "channels_last=true"))
    ckpt = checkpoint.load_checkpoint(tmp_path / "checkpoint.pth")
    amp = ckpt["config"]["_run"]["amp_dtype"]
    assert amp in ("bfloat16", "float16") and ckpt["config"]["_run"]["device"].startswith("cuda")
    assert (ckpt["scaler"] is None) == (amp == "bfloat16")  # a GradScaler only for fp16
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["epoch_end"] and all(math.isfinite(r["loss"]) for r in rows)


@pytest.mark.slow  # torchrun start-up plus two processes sharing two cores: ~25 s
def test_torchrun_two_processes_gloo(image_dir, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "pretrain",
           "--data", str(image_dir), "--output-dir", str(out), *TINY, "epochs=1", "batch_size=8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "batch: 4 per process x 2 processes = 8 global" in r.stdout
    assert r.stdout.count("done:") == 1  # rank 0 alone prints and writes
    ckpt = checkpoint.load_checkpoint(out / "checkpoint.pth")
    assert ckpt["iteration"] == 2 and ckpt["config"]["_run"]["world_size"] == 2
    assert not any(k.startswith("module.") for k in ckpt["model"])
    ends = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if '"epoch_end"' in x]
    assert len(ends) == 1 and ends[0]["iteration"] == 2
