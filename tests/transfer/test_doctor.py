"""python -m transfer.doctor: which detectron2 is in use (version, tier, commit, compiled ops), and --expect."""
import json
import subprocess
import sys

from tests.transfer.conftest import REPO
from transfer import compat, doctor


def run(*args):
    return subprocess.run([sys.executable, "-m", "transfer.doctor", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def test_summary_and_expect_match_the_installed_world():
    compiled = compat.has_compiled_ops()
    proc = run("--summary", "--expect", "compiled" if compiled else "sources")
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("detectron2 0.6, tier ") and f"compiled ops {'yes' if compiled else 'no'}" in line
    wrong = run("--summary", "--expect", "sources" if compiled else "compiled")
    assert wrong.returncode == 1
    assert wrong.stderr.strip().splitlines()[-1].startswith("error: expected the ")


def test_install_record_gives_tier_and_commit(tmp_path, monkeypatch):
    """tools/install/detectron2.sh records the source and commit in sys.prefix; the doctor reports them."""
    record = {"tier": 2, "source": "../shared/vendor/detectron2-c69939aa.tar.gz", "sha256": "2ebea26e",
              "commit": "c69939aa85460e8135f40bce908a6cddaa73065f"}
    (tmp_path / doctor.PROVENANCE).write_text(json.dumps(record))
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    info = doctor.detectron2_info(compiled=True)
    assert info["detectron2_tier"].startswith("2 (built from source")
    assert info["detectron2_commit"] == record["commit"] and info["detectron2_source"] == record["source"]
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "none"))  # no record: inferred, commit unknown
    info = doctor.detectron2_info(compiled=False)
    assert info["detectron2_tier"].startswith("3") and info["compiled_ops"] == "no"
    assert info["detectron2_commit"] == "unknown"
