"""tools/results/output.py: the tools' one atomic text write (tables, benchmark reports, the study's files)."""
from __future__ import annotations

import os
import stat

import pytest

from tools.results.output import write_atomic


def test_output_gets_the_umask_mode_and_no_temp_file_is_left(tmp_path):
    """A table written for a lab's shared folder is as readable as any file its owner writes (mkstemp's temp
    files are 0600, and a rename keeps that mode)."""
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "table.md", "| a |\n")
        os.umask(0o002)
        write_atomic(tmp_path / "group.md", "| b |\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "table.md").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "group.md").stat().st_mode) == 0o664
    assert (tmp_path / "table.md").read_text() == "| a |\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["group.md", "table.md"]


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "results.json"
    write_atomic(path, '{"ap": 1}')
    with pytest.raises(UnicodeEncodeError):  # fails half-way through the write: nothing half-written
        write_atomic(path, "x" * 10_000 + "\udc80")
    assert path.read_text() == '{"ap": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
