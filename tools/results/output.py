"""Atomic writes of what the tools derive from the runs tree: a crash never leaves half a table."""
from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, text: str) -> None:
    """Write to a temp file next to `path`, then rename: a reader never sees half a file. The temp file is
    created like any other file, so the output gets the umask's mode (mkstemp's would be private to the
    owner: a table a lab's group cannot read)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
