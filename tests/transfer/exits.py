"""What a refused command looks like to the user: exit status 2, no traceback, and a last stderr line that
starts with "error: " and names the problem."""
from __future__ import annotations


def fails_cleanly(proc, *fragments: str) -> str:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), proc.stderr[-2000:]
    for fragment in fragments:
        assert fragment in line, line
    return line
