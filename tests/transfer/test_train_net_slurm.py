"""The real trainer (transfer.train_net on an instant config) as a Slurm job on the CI cluster
(tools/ci/slurm_up.sh), in whichever detectron2 world this suite runs: the data folder reaches the job through
its sbatch script even under SBATCH_EXPORT=NONE, and a rerun submits nothing for a done cell."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.slurm_cluster import cancel_jobs_under, wait_ended
from tools.launch.__main__ import main as launch_main

REPO = Path(__file__).resolve().parents[2]
CFG = REPO / "configs/transfer/instant/coco_R_50_FPN_1x_instant.yaml"


@pytest.mark.slurm
@pytest.mark.skipif(importlib.util.find_spec("detectron2") is None, reason="needs detectron2")
def test_instant_cell_as_a_slurm_job(detection_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SBATCH_EXPORT", "NONE")
    monkeypatch.setenv("DETECTRON2_DATASETS", detection_data["root"])
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    runs = tmp_path / "runs"
    args = ["--random", "--seeds", "0", "--runs", str(runs), "--configs", str(CFG), "--launcher", "slurm",
            "--partition", "cpu", "--gpus-per-node", "0", "--cpus-per-task", "2", "--mem", "4G",
            "--timeout-min", "10", "--", "SOLVER.MAX_ITER", "2"]
    try:
        assert launch_main(args) == 0, capsys.readouterr().err
        out = runs / f"random/{CFG.stem}/seed0"
        job_id = json.loads((out / "submitit/job.json").read_text())["job_id"]
        log = out / f"submitit/{job_id}_0_log.err"
        assert wait_ended(job_id, timeout=300) == "COMPLETED", log.read_text()
    finally:
        cancel_jobs_under(tmp_path)
    assert set(json.loads((out / "results.json").read_text())) == {"bbox", "segm"}
    capsys.readouterr()
    assert launch_main(args) == 0
    assert "1 cells, 1 done, 0 to run" in capsys.readouterr().err
    assert launch_main(["--status", *args]) == 0
    assert capsys.readouterr().out.split() == ["done", str(out)]
