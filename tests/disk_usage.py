"""What the test suite writes to disk: the bytes each test leaves in its tmp_path, and the peak of pytest's
temp folder over the run, reported at the end of every run (`--disk-report FILE` also writes them as json).

Measured just before a test's fixtures are torn down (tmp_path is still there then: with
tmp_path_retention_policy = "failed" pytest deletes it right after a passing test). The peak is the size of
the run's whole base temp folder at that moment, so session- and module-scoped fixtures count in it while
they live.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

_sizes: dict[str, int] = {}  # test id -> bytes in its tmp_path at teardown
_peak = {"bytes": 0, "at": ""}


def tree_bytes(root: Path) -> int:
    """Bytes of the regular files under root (hard links counted once, symlinks not followed)."""
    seen, total = set(), 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue  # removed while walking
            if (st.st_dev, st.st_ino) not in seen and not os.path.islink(os.path.join(dirpath, name)):
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512 if st.st_blocks else st.st_size
    return total


def fmt(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def pytest_addoption(parser):
    parser.addoption("--disk-report", metavar="FILE", help="write each test's tmp_path bytes and the peak "
                     "of the temp folder as json")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    path = getattr(item, "funcargs", {}).get("tmp_path")
    if path is not None and Path(path).is_dir():
        _sizes[item.nodeid] = tree_bytes(Path(path))
    factory = getattr(item.config, "_tmp_path_factory", None)
    base = factory.getbasetemp() if factory is not None else None
    if base is not None and base.is_dir():
        total = tree_bytes(base)
        if total > _peak["bytes"]:
            _peak.update(bytes=total, at=item.nodeid)
    yield


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _sizes:
        return
    top = sorted(_sizes.items(), key=lambda kv: -kv[1])[:10]
    tr = terminalreporter
    tr.section("disk: bytes left in tmp_path per test (top 10), peak of the temp folder")
    for nodeid, n in top:
        tr.write_line(f"{fmt(n):>10}  {nodeid}")
    tr.write_line(f"peak {fmt(_peak['bytes'])} of pytest's temp folder (at {_peak['at']}); "
                  f"all tests' tmp_path together {fmt(sum(_sizes.values()))}")
    out = config.getoption("--disk-report")
    if out:
        Path(out).write_text(json.dumps({"peak_bytes": _peak["bytes"], "peak_at": _peak["at"],
                                         "tmp_path_bytes": dict(sorted(_sizes.items(), key=lambda kv: -kv[1]))},
                                        indent=1))
