"""The benchmark's table from its cells' results.json: per weights row and metric, mean ± sample std over
seeds with n, and the difference to the imagenet row; as markdown (printed and RUNS/benchmark.md) and json
(RUNS/benchmark.json: rows -> metric -> {mean, std, n, values, delta_vs_imagenet}, plus the data used)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tools.launch.cell import Cell
from tools.results.output import write_atomic
from tools.results.runs import read_results
from tools.results.stats import MISSING, Stat, fmt_stat, value

# column -> (task, metric) of results.json; AP^bb always, the others where some cell's results have the task
METRICS = {"AP^bb": ("bbox", "AP"), "AP^mk": ("segm", "AP"), "AP^kp": ("keypoints", "AP")}
IMAGENET = "imagenet"


@dataclass
class Row:
    weights: Path | None  # None: random init
    config: Path  # what this row trains with for the table's --config (its _random or msra/ twin, or itself)
    cells: list[Cell]  # one per seed


def cell_results(cell: Cell) -> dict | None:
    """The cell's results, None if it has none (not run, failed, or an unreadable file)."""
    try:
        return read_results(cell.out / "results.json") if cell.done else None
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def summarise(rows: dict[str, Row]) -> dict:
    """{"metrics": [...], "rows": {name: {metric: {mean, std, n, values, delta_vs_imagenet}}},
    "cells": {name: {"done": k, "planned": n}}}; a metric no seed has is mean null, n 0."""
    results = {name: [cell_results(c) for c in row.cells] for name, row in rows.items()}
    found = {task for rs in results.values() for r in rs if r for task in r}
    metrics = [m for m, (task, _) in METRICS.items() if m == "AP^bb" or task in found]
    table, cells = {}, {}
    for name, rs in results.items():
        done = [r for r in rs if r is not None]
        cells[name] = {"done": len(done), "planned": len(rs)}
        table[name] = {}
        for m in metrics:
            values = [v for v in (value(r, *METRICS[m]) for r in done) if v is not None]
            s = Stat(values) if values else None
            table[name][m] = {"mean": s.mean if s else None, "std": s.std if s else None, "n": len(values),
                              "values": values, "delta_vs_imagenet": None}
    ref = table.get(IMAGENET)
    for name, row in table.items():
        for m, cell in row.items():
            if ref and name != IMAGENET and cell["mean"] is not None and ref[m]["mean"] is not None:
                cell["delta_vs_imagenet"] = cell["mean"] - ref[m]["mean"]
    return {"metrics": metrics, "rows": table, "cells": cells}


def markdown_table(summary: dict, decimals: int = 1) -> list[str]:
    """| Weights | n | AP^bb | Δ AP^bb | ... |: n = seeds with results ("1 of 2" when some are missing); a
    cell shows (n=k) when fewer seeds have that metric; '-' for what was not measured."""
    with_ref = IMAGENET in summary["rows"]
    head = ["Weights", "n"] + [h for m in summary["metrics"] for h in ([m, f"Δ {m}"] if with_ref else [m])]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in summary["rows"].items():
        c = summary["cells"][name]
        n = str(c["done"]) if c["done"] == c["planned"] else f"{c['done']} of {c['planned']}"
        texts = [name, n]
        for m in summary["metrics"]:
            cell = row[m]
            texts.append(fmt_stat(Stat(cell["values"]) if cell["values"] else None, c["done"], decimals))
            if with_ref:
                d = cell["delta_vs_imagenet"]
                texts.append("(ref)" if name == IMAGENET else MISSING if d is None else f"{d:+.{decimals}f}")
        out.append("| " + " | ".join(texts) + " |")
    return out


def markdown(tables: dict[Path, dict[str, Row]], data: dict, seeds: list[int], decimals: int = 1) -> str:
    """One section per --config, under a header that says what data and seeds the numbers come from."""
    out = ["# Benchmark on your own data", ""]
    out += [f"- {split} {d['name']}: {d['json_file']} (sha256 {d['sha256']}), images {d['image_root']}"
            for split in ("train", "test") for d in data[split]]
    out += [f"- seeds {' '.join(map(str, seeds))}; each cell: mean ± sample std over the seeds with results; "
            "Δ: the row's mean minus the imagenet row's; '-': not measured", ""]
    for config, rows in tables.items():
        out += [f"## {config.stem}", ""]
        out += [f"- {name}: {row.weights or 'random init'} with {row.config}" for name, row in rows.items()]
        if config.stem.endswith("_instant"):
            out.append("- TOY RUN: an `_instant` config (seconds of training): the numbers prove the "
                       "pipeline, not the weights")
        out += [""] + markdown_table(summarise(rows), decimals) + [""]
    return "\n".join(out)


def to_json(tables: dict[Path, dict[str, Row]], data: dict, seeds: list[int]) -> dict:
    out = []
    for config, rows in tables.items():
        summary = summarise(rows)
        out.append({"config": str(config), "metrics": summary["metrics"], "rows": summary["rows"],
                    "cells": summary["cells"],
                    "weights": {k: None if r.weights is None else str(r.weights) for k, r in rows.items()},
                    "configs": {k: str(r.config) for k, r in rows.items()}})
    return {"data": data, "seeds": seeds, "tables": out}


def write(runs: Path, tables: dict[Path, dict[str, Row]], data: dict, seeds: list[int],
          decimals: int = 1) -> str:
    """RUNS/benchmark.md and RUNS/benchmark.json, each written atomically; returns the markdown."""
    text = markdown(tables, data, seeds, decimals)
    write_atomic(runs / "benchmark.md", text)
    write_atomic(runs / "benchmark.json", json.dumps(to_json(tables, data, seeds), indent=2) + "\n")
    return text
