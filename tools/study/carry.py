"""Continue a study from its record (a report's study_results.json) in a folder that lacks the runs: the
scores of every detection run and evaluation, and the jobs' timings, are written back where the study looks
for them, so the planner (jobs.needed) plans only what the record does not hold.

    python -m tools.study --out runs/study --import docs/study_results.json --part fig4

The record must come from the same preset and settings and the same scenes (sha256); a mismatch is refused
before anything is written. An imported file says so ("imported_from"), and the report lists the record's
commands as imported. Only what the report reads is carried (AP, AP50, AP75 per task; top-1/top-5; timings):
checkpoints are not, so a part that needs a backbone the record only scored pretrains it again.

    python -m tools.study --out runs/study_again --import docs/study_results.json --import-rows random

--import-rows carries only those rows and their jobs' timings: the random init's scores into a study whose
rows are pretrained again (its weights are the same on any machine, so its seeds need not run twice). The
record's commands are not carried then (they made other rows too): the wall time counts this folder's.
"""
from __future__ import annotations

import json
from pathlib import Path

from tools.study.jobs import save_json
from tools.study.rows import fixed_settings


class CarryError(Exception):
    """The record cannot continue this study: one line, exit status 2."""


def read_record(path: Path, option: str = "--import ") -> dict:
    """A report's study_results.json; errors name the file after `option` (the flag that gave it)."""
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CarryError(f"{option}{path}: not a readable study_results.json ({e})") from None
    if not isinstance(rec, dict) or not {"preset", "settings", "rows", "scenes"} <= set(rec):
        raise CarryError(f"{option}{path}: not a study_results.json (no preset, settings, rows and scenes)")
    return rec


def check(rec: dict, path: Path, preset: str, p: dict, scenes_sha256: str | None = None) -> None:
    """The record's preset and settings match; and its scenes, once they are built (scenes_sha256 given)."""
    ours = fixed_settings(json.loads(json.dumps(p)))  # tuples as lists, as the record stores them
    if rec["preset"] != preset or fixed_settings(rec["settings"]) != ours:
        raise CarryError(f"--import {path}: made with other settings (--{rec['preset']} preset)")
    if scenes_sha256 is not None and (rec["scenes"] or {}).get("sha256") != scenes_sha256:
        theirs = (rec["scenes"] or {}).get("sha256")
        raise CarryError(f"--import {path}: made on other scenes (sha256 {theirs}, here {scenes_sha256})")


def check_rows(rec: dict, path: Path, rows: list[str]) -> None:
    """--import-rows names rows of the record."""
    unknown = [r for r in rows if r not in rec["rows"]]
    if unknown:
        raise CarryError(f"--import-rows {' '.join(unknown)}: not a row of {path} "
                         f"(its rows: {' '.join(rec['rows'])})")


def import_record(rec: dict, path: Path, out: Path, state: dict, rows: list[str] | None = None) -> dict:
    """Write the record's scores and timings into OUT where missing, of every row or of `rows` alone (then
    without the record's commands); returns counts of what was written."""
    written = {"det": 0, "eval": 0, "timings": 0}
    chosen = {row: r for row, r in rec["rows"].items() if rows is None or row in rows}
    # a job is named for its row, or for its run (`pretrain RUN`): the rows' jobs and their runs'
    names = set(chosen) | {r["run"] for r in chosen.values()}
    for row, r in chosen.items():
        for inst, seeds in r.get("det", {}).items():
            for seed, scores in seeds.items():
                f = out / "det" / inst / row / f"seed{seed}" / "results.json"
                if not f.exists():
                    f.parent.mkdir(parents=True, exist_ok=True)
                    save_json(f, {**scores, "imported_from": str(path)})
                    written["det"] += 1
        f = out / "knn" / row / "results.json"
        if r.get("knn_top1") is not None and not f.exists():
            f.parent.mkdir(parents=True, exist_ok=True)
            save_json(f, {"knn": {"top1": r["knn_top1"], "top5": r.get("knn_top5")},
                          "linear": None if r.get("linear_top1") is None else
                          {"top1": r["linear_top1"], "top5": r.get("linear_top5")},
                          "data": {"val": {"images": r.get("eval_test_images")}}, "imported_from": str(path)})
            written["eval"] += 1
    tpath = out / "timings.json"
    timings = json.loads(tpath.read_text()) if tpath.exists() else {}
    for name, t in rec.get("timings", {}).get("jobs", {}).items():
        if name not in timings and (rows is None or names & set(name.split()[1:])):
            timings[name] = {**t, "imported_from": str(path)}
            written["timings"] += 1
    save_json(tpath, timings)
    if rows is not None:
        return written
    seen = {c["started"] for c in state.get("invocations", [])}
    carried = [{**c, "imported_from": str(path)} for c in rec.get("commands", []) if c["started"] not in seen]
    state["invocations"] = carried + state.get("invocations", [])
    return written
