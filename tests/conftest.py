"""Tests marked `slurm` submit real jobs to a Slurm cluster: the one-node CI cluster of tools/ci/slurm_up.sh
(partitions `cpu` and `high`, no accounting). Without it they are skipped, so `make test` needs no Slurm.
Every run ends with what the tests wrote to disk (tests/disk_usage.py)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.disk_usage import (  # noqa: F401  (pytest hooks)
    pytest_addoption,
    pytest_runtest_teardown,
    pytest_terminal_summary,
)

_up: str | None = None  # the skip reason, once asked; "" when the cluster is up


def _cluster_missing() -> str:
    global _up
    if _up is None:
        _up = "no Slurm cluster up: start the CI one with `bash tools/ci/slurm_up.sh` (as root)"
        if shutil.which("sinfo") and shutil.which("srun"):
            try:
                r = subprocess.run(["sinfo", "--noheader", "--format=%P %a"], capture_output=True, text=True,
                                   timeout=20)
                parts = {line.split()[0].rstrip("*") for line in r.stdout.splitlines() if "up" in line}
                if r.returncode == 0 and {"cpu", "high"} <= parts:
                    _up = ""
            except (OSError, subprocess.TimeoutExpired):
                pass
    return _up


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("slurm") is not None and _cluster_missing():
            item.add_marker(pytest.mark.skip(reason=_cluster_missing()))


@pytest.fixture(scope="module")
def module_tmp(request, tmp_path_factory):
    """mktemp for module-scoped fixtures: what they make is removed once the module's tests are done, unless
    one of them failed (then it stays for the failure's diagnosis, as a failing test's tmp_path does). Keeps
    the temp folder's peak to the session fixtures plus one module's."""
    made: list[Path] = []
    failed_before = request.session.testsfailed

    def mktemp(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield mktemp
    if request.session.testsfailed == failed_before:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)


class _CtrlCOnThirdWrite:
    def __init__(self, f, raises: BaseException | type = KeyboardInterrupt):
        self.f, self.n, self.raises = f, 0, raises

    def write(self, b):
        self.n += 1
        if self.n == 3:
            raise self.raises
        return self.f.write(b)

    def flush(self):
        self.f.flush()


@pytest.fixture
def ctrl_c_on_third_write():
    """Wraps a file so that its third write raises KeyboardInterrupt (or `raises`, e.g. the SystemExit of a
    SIGINT handler): Ctrl-C while torch.save's C++ writer is writing, which torch reports as
    RuntimeError("unexpected pos") with the interrupt only as its context."""
    return _CtrlCOnThirdWrite
