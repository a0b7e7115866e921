"""The study's report from its output folder alone: OUT/report/{study.md, study_fig4.png, study_results.json}.

study_results.json is the small machine-readable record (per row and seed: box and mask AP, AP50, AP75 from
each run's results.json; kNN top-1; views; wall and CPU times per stage; the machine; the commands);
study.md and study_fig4.png are generated from it. Box/mask AP: mean ± sample std over the fine-tuning
seeds and a 95% confidence interval of the mean (Student t, n - 1 degrees of freedom).
"""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from pathlib import Path

import numpy as np

from tools.study.rows import views_of

METRICS = ("AP", "AP50", "AP75")
LABELS = {"random": "Random init", "supervised": "Supervised (labels)", "simsiam": "SimSiam (2 views)",
          "fastsiam": "FastSiam (4 views, K=3)"}


def summary(values: list[float]) -> dict:
    """mean, sample std and the 95% t-interval half-width of the mean (None where n is too small)."""
    from scipy import stats

    v = np.array([x for x in values if x is not None], dtype=float)
    n = len(v)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "ci95": None}
    std = float(v.std(ddof=1)) if n > 1 else None
    half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else None
    return {"n": n, "mean": float(v.mean()), "std": std, "ci95": half}


def machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "CPU(s)", "Thread(s) per core", "Hypervisor vendor", "Flags"):
                value = value.strip()
                if key.strip() == "Flags":  # only what decides the CPU kernels (bf16 autocast: pretrain/precision)
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


def collect(out: Path, rows: dict, p: dict, preset: str) -> dict:
    res = {"preset": preset, "settings": p, "rows": {}, "machine": machine()}
    state = json.loads((out / "study.json").read_text()) if (out / "study.json").exists() else {}
    res["commands"] = state.get("invocations", [])
    manifest = out / "data" / "scenes" / "manifest.json"
    res["scenes"] = json.loads(manifest.read_text()) if manifest.exists() else None
    for row, (method, epochs) in rows.items():
        r = {"method": method, "epochs": epochs,
             "views": 0 if method == "random" else views_of(p, method, epochs), "seeds": {}}
        knn = out / "knn" / f"{row}.json"
        r["knn_top1"] = json.loads(knn.read_text())["knn_top1"] if knn.exists() else None
        for seed in p["seeds"]:
            f = out / "det" / row / f"seed{seed}" / "results.json"
            if f.exists():
                d = json.loads(f.read_text())
                r["seeds"][str(seed)] = {t: {m: d.get(t, {}).get(m) for m in METRICS} for t in ("bbox", "segm")}
        r["summary"] = {f"{t}/{m}": summary([s[t][m] for s in r["seeds"].values()])
                        for t in ("bbox", "segm") for m in METRICS}
        res["rows"][row] = r
    res["instrument"] = instrument(res["rows"])
    timings = json.loads((out / "timings.json").read_text()) if (out / "timings.json").exists() else {}
    stages: dict[str, dict] = {}
    for t in timings.values():
        s = stages.setdefault(t["stage"], {"jobs": 0, "wall_s": 0.0, "cpu_s": 0.0})
        s["jobs"] += 1
        s["wall_s"] = round(s["wall_s"] + t["wall_s"], 1)
        s["cpu_s"] = round(s["cpu_s"] + t["cpu_s"], 1)
    res["timings"] = {"stages": stages, "jobs": timings,
                      "study_wall_s": round(sum(i.get("finished", i["started"]) - i["started"]
                                                for i in res["commands"]), 1)}
    return res


def instrument(rows: dict) -> dict:
    """Supervised vs random: the difference of mean AP against 2 pooled seed standard deviations."""
    out = {}
    if "random" not in rows or "supervised" not in rows:
        return out
    for t in ("bbox", "segm"):
        a, b = rows["supervised"]["summary"][f"{t}/AP"], rows["random"]["summary"][f"{t}/AP"]
        if a["std"] is None or b["std"] is None:
            continue
        pooled = math.sqrt(((a["n"] - 1) * a["std"] ** 2 + (b["n"] - 1) * b["std"] ** 2) / (a["n"] + b["n"] - 2))
        diff = a["mean"] - b["mean"]
        out[t] = {"difference": diff, "pooled_std": pooled, "passes": abs(diff) > 2 * pooled}
    return out


def fmt(s: dict, digits: int = 1) -> str:
    if s["mean"] is None:
        return "-"
    if s["std"] is None:
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def ci(s: dict) -> str:
    if s["ci95"] is None:
        return "-"
    return f"[{s['mean'] - s['ci95']:.1f}, {s['mean'] + s['ci95']:.1f}]"


def markdown(res: dict) -> str:
    p = res["settings"]
    lines = [f"# Small-scale Table 1 and Fig. 4 on CIFAR-10 (`{res['preset']}` preset)", "",
             "Generated by `tools/study/report.py` from `study_results.json`.", "",
             "| Row | Views | kNN top-1 % | AP^bb | AP^bb 95% CI | AP^bb_50 | AP^mk | AP^mk 95% CI | AP^mk_50 | n |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row, r in res["rows"].items():
        s = r["summary"]
        knn = "-" if r["knn_top1"] is None else f"{100 * r['knn_top1']:.1f}"
        lines.append(f"| {row} | {r['views']:,} | {knn} | {fmt(s['bbox/AP'])} | {ci(s['bbox/AP'])} | "
                     f"{fmt(s['bbox/AP50'])} | {fmt(s['segm/AP'])} | {ci(s['segm/AP'])} | {fmt(s['segm/AP50'])} | "
                     f"{s['bbox/AP']['n']} |")
    lines += ["", "AP: COCO AP (%) on the val scenes, mean ± sample std over fine-tuning seeds "
              f"{', '.join(map(str, p['seeds']))}; 95% CI: Student t interval of the mean. kNN: weighted kNN "
              f"(k=200) on {p['knn_test']:,} CIFAR-10 test images, bank {p['knn_bank']:,} CIFAR-10 train images.",
              "", "## Instrument check (supervised vs random init)", ""]
    if not res["instrument"]:
        lines.append("Not available yet (needs both rows with at least 2 seeds).")
    for t, c in res["instrument"].items():
        verdict = "passes" if c["passes"] else "FAILS"
        lines.append(f"- {'box' if t == 'bbox' else 'mask'} AP: supervised - random = {c['difference']:+.2f}, "
                     f"pooled seed std {c['pooled_std']:.2f}: {verdict} (needs |difference| > 2 std)")
    full = {r["method"]: r["summary"]["bbox/AP"]["mean"] for r in res["rows"].values()
            if r["summary"]["bbox/AP"]["mean"] is not None and (r["method"] in ("random", "supervised") or
                                                               r["epochs"] == max_epochs(res, r["method"]))}
    if full:
        order = " < ".join(f"{m} ({v:.1f})" for m, v in sorted(full.items(), key=lambda kv: kv[1]))
        lines += ["", f"Ordering by mean box AP (full budget): {order}."]
    lines += ["", "![AP against pretraining views](study_fig4.png)", "", "## Run", ""]
    for c in res["commands"]:
        lines.append(f"- `{c['command']}`{invocation_summary(c)}")
    sc = res["scenes"] or {}
    if sc:
        c, st = sc["counts"], sc["settings"]
        lines += ["", f"Scenes (`tools/data/scenes.py`, seed {st['seed']}): {c['train']['images']:,} train scenes "
                  f"({c['train']['objects']:,} objects), {c['val']['images']:,} val scenes ({c['val']['objects']:,} "
                  f"objects); {st['canvas']} px canvases, objects {st['min_size']} to {st['max_size']} px, at most "
                  f"{st['max_objects']} per scene; sha256 `{sc['sha256']}`."]
    lines += ["", "| Stage | Jobs | Wall s (sum) | CPU s (sum) |", "|---|---:|---:|---:|"]
    for stage, s in res["timings"]["stages"].items():
        lines.append(f"| {stage} | {s['jobs']} | {s['wall_s']:.0f} | {s['cpu_s']:.0f} |")
    lines += ["", f"Study wall time over all invocations: {res['timings']['study_wall_s'] / 60:.1f} min "
              "(stages run two at a time, so stage sums exceed it).", "",
              "Machine: " + ", ".join(f"{k}: {v}" for k, v in res["machine"].items()), ""]
    return "\n".join(lines)


def invocation_summary(c: dict) -> str:
    """': ran 41 of 42 stages in 2.1 h' / ': found all 42 stages done, only regenerated the report'."""
    wall = c.get("finished", c["started"]) - c["started"]
    when = f"{wall / 3600:.1f} h" if wall >= 3600 else f"{wall / 60:.1f} min" if wall >= 60 else f"{wall:.0f} s"
    if "finished" not in c:
        return ": interrupted (resumed by the next line)"
    if "stages" not in c:  # recorded before the stage counts were
        return f": {when}"
    ran = c["stages"] - c["done_before"]
    if ran == 0:
        return f": found all {c['stages']} stages done, only regenerated the report ({when})"
    failed = f", {c['failed']} failed" if c.get("failed") else ""
    return f": ran {ran} of {c['stages']} stages{failed} in {when}"


def max_epochs(res: dict, method: str) -> int:
    return max(r["epochs"] for r in res["rows"].values() if r["method"] == method)


def plot(res: dict, path: Path) -> None:
    from tools.figures.plotting import plt, save_figure

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    rows = res["rows"]
    start = rows.get("random", {}).get("summary")
    for ax, (task, title) in zip(axes, (("bbox", "box AP"), ("segm", "mask AP")), strict=True):
        key = f"{task}/AP"
        for method, colour in (("fastsiam", "C0"), ("simsiam", "C1")):
            pts = sorted((r["views"], r["summary"][key]) for r in rows.values()
                         if r["method"] == method and r["summary"][key]["mean"] is not None)
            if start and start[key]["mean"] is not None:
                pts = [(0, start[key])] + pts  # both start from the same initial weights
            if pts:
                ax.errorbar([v for v, _ in pts], [s["mean"] for _, s in pts],
                            yerr=[s["std"] or 0 for _, s in pts], fmt="o-", color=colour, capsize=3,
                            label=LABELS[method])
        for row, style in (("supervised", "--"), ("random", ":")):
            s = rows.get(row, {}).get("summary", {}).get(key)
            if s and s["mean"] is not None:
                ax.axhline(s["mean"], color="grey", ls=style, label=f"{LABELS[row]}")
        ax.set(xlabel="pretraining views processed", ylabel=f"{title} (%)", title=f"CIFAR-10 scenes: {title}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Mask R-CNN R18-FPN after pretraining on CIFAR-10 ({res['preset']} preset; "
                 "mean ± std over seeds)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def write(out: Path, rows: dict, p: dict, preset: str) -> list[Path]:
    res = collect(out, rows, p, preset)
    d = out / "report"
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / ".study_results.json.tmp"
    tmp.write_text(json.dumps(res, indent=1, default=list))
    os.replace(tmp, d / "study_results.json")
    plot(res, d / "study_fig4.png")
    tmp = d / ".study.md.tmp"
    tmp.write_text(markdown(res))
    os.replace(tmp, d / "study.md")
    return [d / "study.md", d / "study_fig4.png", d / "study_results.json"]
