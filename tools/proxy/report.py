"""The proxy's table.md and plot.png, from results.json alone."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

LABELS = {"fastsiam": "FastSiam (4 views)", "simsiam": "SimSiam (2 views)", "random": "random init"}


def label(name: str) -> str:
    """fastsiam -> FastSiam (4 views); fastsiam_bf16 -> FastSiam (4 views), amp=bf16."""
    method, _, amp = name.partition("_")
    return LABELS.get(method, method) + (f", amp={amp}" if amp else "")


def grouped(results: dict) -> dict[str, dict[int, list[dict]]]:
    """method -> views -> evaluations (one per seed)."""
    groups: dict[str, dict[int, list[dict]]] = {}
    for e in results["evaluations"].values():
        groups.setdefault(e["method"], {}).setdefault(e["views"], []).append(e)
    return groups


def cell(evals: list[dict]) -> str:
    acc = np.array([e["knn_top1"] for e in evals]) * 100
    if len(acc) == 1:
        return f"{acc[0]:.2f}"
    return f"{acc.mean():.2f} ± {acc.std(ddof=1):.2f} (n={len(acc)}: {', '.join(f'{a:.2f}' for a in acc)})"


def write_table(results: dict, path: Path) -> None:
    groups = grouped(results)
    methods = sorted(set(groups) - {"random"}, key=lambda m: (m.split("_")[0] != "fastsiam", m))
    heads = [f"{label(m)} kNN top-1 % (epoch)" for m in methods]
    lines = ["| views per method | " + " | ".join(heads) + " |",
             "|---:|" + "---:|" * len(methods)]
    if "random" in groups:
        lines.append("| 0 (random init) | " + " | ".join(cell(groups["random"][0]) for _ in methods) + " |")
    for views in sorted({v for m in methods for v in groups[m]}):
        row = []
        for m in methods:
            evals = groups[m].get(views)
            row.append(f"{cell(evals)} ({evals[0]['epoch']})" if evals else "")
        lines.append(f"| {views:,} | " + " | ".join(row) + " |")
    sig = next(iter(results["evaluations"].values()), {}).get("knn", {})
    lines.append("")
    lines.append(f"kNN: k={sig.get('k')}, cosine, t={sig.get('t')}; bank {sig.get('bank', 0):,} pretraining "
                 f"images, {sig.get('test', 0):,} test images. Several seeds: mean ± sample std.")
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def write_plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    groups = grouped(results)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    # both methods start from the random init (same seed, same network): it is the 0-views point of each curve
    start = groups.get("random", {}).get(0, [])
    methods = sorted(set(groups) - {"random"}, key=lambda m: (m.split("_")[0] != "fastsiam", m))
    for m, colour in zip(methods, [f"C{i}" for i in range(10)]):
        points = {0: start, **groups[m]} if start else groups[m]
        views = sorted(points)
        ax.plot(views, [100 * np.mean([e["knn_top1"] for e in points[v]]) for v in views], "o-", color=colour,
                label=label(m))
        for v in views:
            if len(points[v]) > 1:  # several seeds: the mean is the line, each seed a faint dot
                accs = [100 * e["knn_top1"] for e in points[v]]
                ax.plot([v] * len(accs), accs, ".", color=colour, alpha=0.4)
    if start:
        random_acc = 100 * np.mean([e["knn_top1"] for e in start])
        ax.axhline(random_acc, color="grey", ls="--", label=LABELS["random"])
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x / 1000:g}k"))
    ax.set_xlim(left=0)
    sig = next(iter(results["evaluations"].values()), {}).get("knn", {})
    ax.set(xlabel="views processed per method", ylabel="kNN top-1 (%)",
           title=f"CIFAR-10, ResNet-18: kNN (k={sig.get('k')}) on {sig.get('test', 0):,} test images")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name("." + path.name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
