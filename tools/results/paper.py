"""The paper's Tables 1-5 as printed (tools/results/paper_tables.json, with the provenance of every value)."""
from __future__ import annotations

import json
from pathlib import Path

PAPER_FILE = Path(__file__).resolve().parent / "paper_tables.json"


def load_paper(path: Path = PAPER_FILE) -> dict:
    with open(path) as f:
        return json.load(f)


def known_protocols(paper: dict) -> set[str]:
    """Every config stem (without _random/_instant) that some table of the paper shows."""
    out = set()
    for t in paper["tables"]:
        out.update(t["protocols"])
        out.update(c["protocol"] for c in t["columns"] if "protocol" in c)
    return out
