"""tests/disk_usage.py counts what a test leaves on disk: file blocks, a hard-linked file once, no symlink."""
import os

from tests.disk_usage import fmt, tree_bytes


def test_tree_bytes_counts_hard_links_once_and_skips_symlinks(tmp_path):
    (tmp_path / "a").write_bytes(os.urandom(100_000))
    (tmp_path / "sub").mkdir()
    os.link(tmp_path / "a", tmp_path / "sub" / "a_link")
    os.symlink(tmp_path / "a", tmp_path / "sub" / "a_sym")
    one = tree_bytes(tmp_path)
    assert 100_000 <= one < 120_000  # one file's blocks (4 kB blocks round it up)
    (tmp_path / "b").write_bytes(os.urandom(50_000))
    assert tree_bytes(tmp_path) - one >= 50_000


def test_fmt():
    assert fmt(2_110_000_000) == "2.11 GB" and fmt(750_860_000) == "750.86 MB" and fmt(512) == "512 B"
