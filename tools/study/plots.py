"""The study's figures from study_results.json (report.collect): Fig. 4 (kNN top-1 and AP against views and
against pretraining CPU time, one point per separate run) and Fig. 5 (kNN top-1 and AP against K)."""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.ticker import FuncFormatter

from tools.figures.plotting import plt, save_figure
from tools.study.stats import top1_var

# "80k" rather than "80000": six-digit view counts run into each other on a half-width axis
THOUSANDS = FuncFormatter(lambda x, _: f"{x / 1000:g}k" if x else "0")

LABELS = {
    "random": "Random init",
    "supervised": "Supervised (labels)",
    "simsiam": "SimSiam (2 views)",
    "fastsiam": "FastSiam (4 views, K=3)",
}


def _score(r: dict, metric: str, main: str) -> tuple[float | None, float]:
    """(mean, std) of a row's metric: AP over seeds; top-1 in %, its std the binomial one of a score on the
    finite test set (one run, but 5,000 test images move it by about 0.7 points), so a bar shows the noise
    a difference between points has to beat."""
    if metric == "AP":
        s = r["summary"].get(main, {}).get("bbox/AP")
        return (None, 0.0) if not s or s["mean"] is None else (s["mean"], s["std"] or 0.0)
    if r[metric] is None:
        return None, 0.0
    n = r.get("eval_test_images")
    return 100 * r[metric], 100 * math.sqrt(top1_var(r[metric], n)) if n else 0.0


def _curve(ax, pts: list[tuple[float, float, float]], colour: str, label: str | None = None) -> None:
    """(x, mean, std) points as a line with std bars; nothing when there are none."""
    if pts:
        ax.errorbar([x for x, _, _ in pts], [y for _, y, _ in pts], yerr=[e for _, _, e in pts], fmt="o-",
                    color=colour, capsize=3, label=label)


def fig4(res: dict, path: Path) -> None:
    main, rows = res["main_instrument"], res["rows"]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5))
    for i, (metric, name) in enumerate((("knn_top1", "kNN top-1 (%)"), ("AP", f"AP^bb, {main} (%)"))):
        start = _score(rows["random"], metric, main) if "random" in rows else (None, 0.0)
        for j, (axis, xlabel) in enumerate(
            (("views", "pretraining views"), ("pretrain_cpu_s", "pretraining CPU s"))
        ):
            ax = axes[i, j]
            runs = [r for r in rows.values() if r.get("k") is None and r[axis] is not None]
            if axis == "pretrain_cpu_s":  # CPU seconds of different CPU models do not compare
                ref = res.get("reference_cpu")
                methods = ("fastsiam", "simsiam")
                other = {r["run"] for r in runs if r["method"] in methods and r["pretrain_cpu"] != ref}
                runs = [r for r in runs if r["pretrain_cpu"] == ref]
                if other:
                    xlabel = f"{xlabel} on {ref} ({len(other)} run(s) on another CPU left out)"
            for method, colour in (("fastsiam", "C0"), ("simsiam", "C1")):
                pts = sorted(
                    (r[axis], *_score(r, metric, main))
                    for r in runs
                    if r["method"] == method and _score(r, metric, main)[0] is not None
                )
                if start[0] is not None and pts:
                    pts = [(0, *start), *pts]  # every run starts from the same initial weights
                _curve(ax, pts, colour, LABELS[method])
            for row, style in (("supervised", "--"), ("random", ":")):
                if row in rows and _score(rows[row], metric, main)[0] is not None:
                    ax.axhline(_score(rows[row], metric, main)[0], color="grey", ls=style, label=LABELS[row])
            ax.set(xlabel=xlabel, ylabel=name)
            if axis == "views":
                ax.xaxis.set_major_formatter(THOUSANDS)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(
        f"CIFAR-10 pretraining, separate runs per budget ({res['preset']} preset; AP mean ± std over seeds, "
        "kNN ± its binomial std on the test images)",
        fontsize=10,
    )
    fig.tight_layout()
    save_figure(fig, path)


def fig5(res: dict, path: Path) -> None:
    main = res["main_instrument"]
    rows = sorted((r for r in res["rows"].values() if r.get("k") is not None), key=lambda r: r["k"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (metric, name) in zip(
        axes, (("knn_top1", "kNN top-1 (%)"), ("AP", f"AP^bb, {main} (%)")), strict=True
    ):
        pts = [(r["k"], *_score(r, metric, main)) for r in rows if _score(r, metric, main)[0] is not None]
        _curve(ax, pts, "C0")
        ax.set(xlabel="target views K (K = 1: SimSiam)", ylabel=name, xticks=[r["k"] for r in rows] or [1])
        ax.grid(alpha=0.3)
    fig.suptitle(f"Number of target views at equal compute ({res['preset']} preset; AP mean ± std over "
                 "seeds, kNN ± its binomial std on the test images)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
