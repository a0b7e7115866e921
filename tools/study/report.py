"""The study's report from its output folder alone: OUT/report/{study.md, study_fig4.png, study_fig5.png,
study_results.json}.

study_results.json is the small machine-readable record: per row its run, views, pretraining CPU seconds, kNN
and linear top-1/top-5 (OUT/knn/<row>/results.json of `python -m tools.evaluate`), and per instrument and seed
box and mask AP, AP50, AP75 (each detection run's results.json); the instrument ranges, the seeds needed, the
FastSiam - SimSiam differences, Fig. 5's differences between K, the speed-up factors, the timings per stage,
the machine and the commands.
study.md and the figures are generated from it (tools/study/stats.py has the statistics).
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from pathlib import Path

from tools.results.output import write_atomic
from tools.study import plots
from tools.study.report_text import sections
from tools.study.rows import INSTRUMENTS, rows_of, runs_of
from tools.study.stats import difference, instrument_range, seeds_needed, speedup, summary, top1_contrast

METRICS = ("AP", "AP50", "AP75")
RESOLUTION = 0.5  # AP the table's seeds must resolve (the 95% half-width of a difference of two rows)


def machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "CPU(s)", "Thread(s) per core", "Hypervisor vendor", "Flags"):
                value = value.strip()
                if (
                    key.strip() == "Flags"
                ):  # only what decides the CPU kernels (bf16 autocast: pretrain/precision)
                    value = " ".join(f for f in value.split() if f.startswith(("amx", "avx512_bf16", "avx2")))
                info[key.strip()] = value
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    info["load_average_at_report"] = os.getloadavg()
    return info


def read_json(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def collect(out: Path, p: dict, preset: str, main: str) -> dict:
    state = read_json(out / "study.json") or {}
    timings = read_json(out / "timings.json") or {}
    res = {
        "preset": preset,
        "settings": p,
        "main_instrument": main,
        "rows": {},
        "machine": machine(),
        "commands": state.get("invocations", []),
        "scenes": read_json(out / "data" / "scenes" / "manifest.json"),
    }
    runs = runs_of(p)
    for row, r in rows_of(p).items():
        ev = read_json(out / "knn" / row / "results.json") or {}
        knn, lin = ev.get("knn") or {}, ev.get("linear") or {}
        entry = {
            **r,
            "pretrain_cpu_s": timings.get(f"pretrain {r['run']}", {}).get("cpu_s"),
            "pretrain_cpu": timings.get(f"pretrain {r['run']}", {}).get("cpu"),
            "overrides": runs.get(r["run"], {}).get("overrides", []),
            "knn_top1": knn.get("top1"),
            "knn_top5": knn.get("top5"),
            "linear_top1": lin.get("top1"),
            "linear_top5": lin.get("top5"),
            "eval_test_images": (ev.get("data") or {}).get("val", {}).get("images"),
            "det": {},
            "summary": {},
            # scores carried from another record (tools/study/carry.py marks each file): compare tells a
            # carried score from a run repeated to the bit by this mark
            "imported": {"eval": bool(ev.get("imported_from")), "det": {}},
        }
        for inst in INSTRUMENTS:
            seeds = {}
            for f in sorted(
                (out / "det" / inst / row).glob("seed*/results.json"), key=lambda f: int(f.parent.name[4:])
            ):
                d = json.loads(f.read_text())
                seeds[f.parent.name[4:]] = {
                    t: {m: d.get(t, {}).get(m) for m in METRICS} for t in ("bbox", "segm")
                }
                if d.get("imported_from"):
                    entry["imported"]["det"].setdefault(inst, []).append(f.parent.name[4:])
            if seeds:
                entry["det"][inst] = seeds
                entry["summary"][inst] = {
                    f"{t}/{m}": summary([s[t][m] for s in seeds.values()])
                    for t in ("bbox", "segm")
                    for m in METRICS
                }
        if entry["knn_top1"] is not None or entry["det"]:
            res["rows"][row] = entry
    res["instruments"] = ranges(res["rows"])
    main_range = res["instruments"].get(main, {}).get("bbox")
    res["seeds_needed"] = (
        None
        if main_range is None
        else {
            "pooled_std": main_range["pooled_std"],
            "resolution": RESOLUTION,
            "seeds": seeds_needed(main_range["pooled_std"], RESOLUTION),
        }
    )
    res["differences"] = differences(res["rows"], main)
    res["k_differences"] = k_differences(res["rows"], main)
    res["timed_on"] = timed_on(res["rows"])
    res["reference_cpu"] = reference_cpu(res["rows"])
    res["speedup"] = speedups(res["rows"], main, p, res["reference_cpu"])
    stages: dict[str, dict] = {}
    for t in timings.values():
        s = stages.setdefault(t["stage"], {"jobs": 0, "wall_s": 0.0, "cpu_s": 0.0})
        s["jobs"] += 1
        for run in (*t.get("earlier", []), t):  # a job run again after a finished run cost both
            s["wall_s"] = round(s["wall_s"] + run["wall_s"], 1)
            s["cpu_s"] = round(s["cpu_s"] + run["cpu_s"], 1)
    res["timings"] = {
        "stages": stages,
        "jobs": timings,
        "study_wall_s": round(busy_wall(res["commands"]), 1),
    }
    return res


def ended(c: dict) -> float:
    """When an invocation stopped: finished, interrupted (a signal), or unknown (killed: counted as 0 s)."""
    return c.get("finished", c.get("interrupted", c["started"]))


def busy_wall(commands: list[dict]) -> float:
    """Wall seconds in which at least one invocation ran: shares of a study may run side by side (two
    --out folders merged with --import), and a sum would count their overlap twice."""
    total, reach = 0.0, -math.inf
    for start, end in sorted((c["started"], ended(c)) for c in commands):
        total += max(0.0, end - max(start, reach))
        reach = max(reach, end)
    return total


def ranges(rows: dict) -> dict:
    """Per instrument and task: supervised - random against the pooled seed std (stats.instrument_range)."""
    out = {}
    for inst in INSTRUMENTS:
        sup, rnd = (rows.get(r, {}).get("summary", {}).get(inst) for r in ("supervised", "random"))
        c = sup and rnd and {t: instrument_range(sup[f"{t}/AP"], rnd[f"{t}/AP"]) for t in ("bbox", "segm")}
        if c and None not in c.values():
            out[inst] = c
    return out


def scores(row: dict | None, inst: str, task: str = "bbox") -> list[float]:
    return [
        s[task]["AP"] for s in (row or {}).get("det", {}).get(inst, {}).values() if s[task]["AP"] is not None
    ]


def pair(a: dict, b: dict, insts: tuple[str, ...]) -> dict:
    """Row a - row b: AP on each of `insts` (95% Welch interval over seeds); kNN and linear top-1 (95% normal
    interval of a difference of two proportions on the test set)."""
    d = {"AP": {inst: difference(scores(a, inst), scores(b, inst)) for inst in insts}}
    for key in ("knn_top1", "linear_top1"):
        x, y, n = a[key], b[key], a["eval_test_images"]
        if x is not None and y is not None and n:
            d[key] = top1_contrast([(1, x, n), (-1, y, n)])
    return d


def differences(rows: dict, main: str) -> list[dict]:
    """FastSiam - SimSiam at every budget both have, on the main instrument and finetune (pair)."""
    out = []
    fast = [r for r in rows.values() if r["method"] == "fastsiam" and r.get("k") is None]
    for views in sorted({r["views"] for r in fast}):
        f = next((r for r in fast if r["views"] == views), None)
        s = next((r for r in rows.values() if r["method"] == "simsiam" and r["views"] == views), None)
        if f and s:
            out.append({"views": views, **pair(f, s, tuple(dict.fromkeys((main, "finetune"))))})
    return out


def k_differences(rows: dict, main: str) -> list[dict]:
    """Fig. 5: every pair of K, larger K - smaller K, on the main instrument (pair)."""
    ks = sorted((r for r in rows.values() if r.get("k") is not None), key=lambda r: r["k"])
    return [{"k": b["k"], "minus_k": a["k"], **pair(b, a, (main,))}
            for i, a in enumerate(ks) for b in ks[i + 1:]]


def target_run(rows: dict) -> dict | None:
    """SimSiam's full-budget run (the table's row): the score Fig. 4's factor is read at."""
    return next((r for r in rows.values() if r["method"] == "simsiam" and r.get("budget") == 1.0), None)


def reference_cpu(rows: dict) -> str | None:
    """The one CPU model whose pretraining seconds Fig. 4 reads (factor, panels and text): SimSiam's
    full-budget run's, else the most used."""
    target = target_run(rows)
    if target is not None and target["pretrain_cpu"] is not None:
        return target["pretrain_cpu"]
    on = timed_on(rows)
    return max(on, key=lambda c: len(on[c]), default=None)


def speedups(rows: dict, main: str, p: dict, cpu: str | None) -> dict:
    """Fig. 4's factor: how many times sooner (pretraining CPU seconds, and views) FastSiam reaches SimSiam's
    full-budget kNN top-1, linear top-1 and AP on the main instrument; CPU seconds only of runs timed on
    `cpu` (reference_cpu), SimSiam's target run included."""
    fast = [r for r in rows.values() if r["method"] == "fastsiam" and r.get("k") is None]
    slow = target_run(rows)
    start = rows.get("random")
    if not fast or not slow or not start:
        return {}
    out = {}
    # CPU seconds of different CPU models do not compare: in CPU time only the runs timed on the reference
    # CPU count, SimSiam's target among them, and the others are named
    on_cpu = cpu is not None and slow["pretrain_cpu"] == cpu

    def vals(r: dict, metric: str) -> list[float]:
        return scores(r, main) if metric == "AP" else [] if r[metric] is None else [r[metric]]

    for metric in ("knn_top1", "linear_top1", "AP"):
        test = None if metric == "AP" else slow["eval_test_images"]
        for axis in ("cpu_s", "views"):
            cost = (lambda r: r["pretrain_cpu_s"]) if axis == "cpu_s" else (lambda r: r["views"])
            if cost(slow) is None or any(cost(r) is None for r in fast):
                continue
            same = fast if axis == "views" else [r for r in fast if on_cpu and r["pretrain_cpu"] == cpu]
            if not same:
                mixed = sorted({str(r["pretrain_cpu"]) for r in [*fast, slow]})
                out[f"{metric}/{axis}"] = {"mixed_cpus": mixed}
                continue
            s = speedup(
                [(cost(r), vals(r, metric)) for r in same],
                cost(slow),
                vals(slow, metric),
                vals(start, metric),
                test_size=test,
            )
            left = [f"{r['run']} ({r['pretrain_cpu']})" for r in fast if r not in same]
            out[f"{metric}/{axis}"] = {**s, "cpu": cpu, "other_cpu": left} if left and s else s
    return out


def timed_on(rows: dict) -> dict[str, list[str]]:
    """CPU model -> the runs whose pretraining was timed on it (rows share runs; the random init has none)."""
    out: dict[str, list[str]] = {}
    for r in rows.values():
        if r["pretrain_cpu"] is not None and r["run"] not in out.get(r["pretrain_cpu"], []):
            out.setdefault(r["pretrain_cpu"], []).append(r["run"])
    return out


def write(out: Path, p: dict, preset: str, main: str) -> list[Path]:
    res = collect(out, p, preset, main)
    d = out / "report"
    d.mkdir(parents=True, exist_ok=True)
    write_atomic(d / "study_results.json", json.dumps(res, indent=1, default=list))
    plots.fig4(res, d / "study_fig4.png")
    plots.fig5(res, d / "study_fig5.png")
    write_atomic(d / "study.md", "\n".join(sections(res)))
    return [d / "study.md", d / "study_fig4.png", d / "study_fig5.png", d / "study_results.json"]
