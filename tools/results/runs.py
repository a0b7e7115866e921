"""The runs tree python -m tools.launch and tools/benchmark fill:
RUNS/<weights-name>/<config-stem>/[seed<k>/]{results.json, provenance.json, config.yaml}.

results.json is task -> metric -> value (AP in percent), as transfer.train_net writes it; provenance.json (or,
for older runs, config.yaml) says what the run was trained and tested on (tools/results/provenance.py).
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from tools.results import provenance
from tools.results.paper import known_protocols


@dataclass
class Run:
    weights: str
    protocol: str  # config stem without _random/_instant
    toy: bool  # from an `_instant` config
    path: Path  # its results.json
    results: dict  # task -> metric -> value
    data: provenance.Data = provenance.Data((), (), provenance.NOT_RECORDED)


def base_stem(stem: str) -> tuple[str, bool]:
    """coco_R_50_FPN_1x_random_instant -> ("coco_R_50_FPN_1x", toy=True)."""
    toy = False
    while True:
        if stem.endswith("_instant"):
            stem, toy = stem[: -len("_instant")], True
        elif stem.endswith("_random"):
            stem = stem[: -len("_random")]
        else:
            return stem, toy


def read_results(path: Path) -> dict:
    """A results.json as task -> metric -> value; ValueError/OSError if it is not one."""
    with open(path) as f:
        results = json.load(f)
    if not isinstance(results, dict) or not all(isinstance(v, dict) for v in results.values()):
        raise ValueError("not a task -> metric -> value mapping")
    return results


def load_runs(runs_dir: Path, paper: dict, warn=lambda msg: print(msg, file=sys.stderr)) -> list[Run]:
    """Every results.json under runs_dir whose config stem belongs to a table of the paper, with the run's
    data; unparsable or misplaced files are reported by path and skipped."""
    protocols = known_protocols(paper)
    runs = []
    for path in sorted(runs_dir.rglob("results.json")):
        parts = path.relative_to(runs_dir).parts
        if len(parts) not in (3, 4) or (len(parts) == 4 and not re.fullmatch(r"seed\d+", parts[2])):
            warn(f"skipping {path}: expected RUNS_DIR/<weights>/<config-stem>/[seed<k>/]results.json")
            continue
        protocol, toy = base_stem(parts[1])
        if protocol not in protocols:
            warn(f"skipping {path}: config stem {parts[1]!r} belongs to no table")
            continue
        try:
            results = read_results(path)
        except (OSError, UnicodeDecodeError, ValueError) as e:
            warn(f"skipping unparsable {path}: {e}")
            continue
        runs.append(Run(parts[0], protocol, toy, path, results, provenance.read(path.parent, warn)))
    return runs
