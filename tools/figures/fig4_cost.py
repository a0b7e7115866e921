"""Fig. 4: downstream AP against pretraining cost, in FastSiam-epoch equivalents.

    python -m tools.figures.fig4_cost runs/ --pretrain fastsiam_r50_in1k_10ep=out/fs10 \\
        fastsiam_r50_in1k_25ep=out/fs25 simsiam_r50_in1k_100ep=out/ss100 --output fig4.png
    python -m tools.figures.fig4_cost runs/ --pretrain ... --protocol coco_R_50_FPN_1x    # the FPN detector instead

Panels as in the paper's Fig. 4: COCO with the R50-C4 detector (coco_R_50_C4_1x, AP^bb) and Cityscapes
(cityscapes_R_50_FPN, AP^mk); --protocol draws other protocols, one panel each.

--pretrain NAME=DIR links a weights name of the runs tree (RUNS/NAME/<config-stem>/...) to its pretraining
output dir; epochs and num_views come from DIR/config.yaml. NAME=DIR@EPOCHS overrides the epochs, for weights
converted from an intermediate checkpoint_XXXX.pth. Cost = epochs x num_views / 4: "FastSiam takes almost
exactly twice as much time per epoch as SimSiam", so a 2-view epoch is half a FastSiam epoch. Each point is
the mean over seeds with a +/- 1 std bar; series are grouped by number of views. The paper's FastSiam and
SimSiam rows (Tables 1-4) are drawn as open markers, and the runs tree's `imagenet` row as a dashed line.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from tools.figures.plotting import (
    PAPER_PANELS,
    UsageError,
    downstream,
    metric_for,
    parse_pretrain,
    plt,
    prefer_real,
    run_main,
    runs_for,
    save_figure,
    scores_by,
)
from tools.results.paper import load_paper

FASTSIAM_VIEWS = 4  # one FastSiam epoch = one pass over the data with 4 views per image


def cost(epochs: float, num_views: int) -> float:
    return epochs * num_views / FASTSIAM_VIEWS


def paper_points(protocol: str, task: str, name: str) -> list[tuple[str, float, float]]:
    """(label, cost, AP) of the paper's FastSiam/SimSiam rows for this protocol and metric."""
    for table in load_paper()["tables"]:
        if table["protocols"] and table["protocols"][0] == protocol:
            cols = [i for i, c in enumerate(table["columns"]) if (c["task"], c["metric"]) == (task, name)]
            rows = [r for r in table["rows"] if cols and r["method"] in ("FastSiam", "SimSiam")]
            return [(f"{r['method']} {r['epoch']} ep (paper)", cost(r["epoch"], r["views"]),
                     r["values"][cols[0]]) for r in rows]
    return []


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.figures.fig4_cost", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("runs_dir", type=Path)
    ap.add_argument("--pretrain", nargs="+", required=True, metavar="NAME=DIR[@EPOCHS]")
    ap.add_argument("--protocol", nargs="+", default=PAPER_PANELS,
                    help="one panel per protocol (default: the paper's, COCO R50-C4 and Cityscapes)")
    ap.add_argument("--metric", help="TASK/METRIC, e.g. segm/AP (default: the protocol's headline AP)")
    ap.add_argument("--no-paper", action="store_true", help="leave out the paper's points")
    ap.add_argument("--output", type=Path, default=Path("fig4_cost.png"))
    args = ap.parse_args(argv)
    pretrain = parse_pretrain(args.pretrain)
    runs, toy = prefer_real(runs_for(args.runs_dir))
    fig, axes = plt.subplots(1, len(args.protocol), figsize=(5.5 * len(args.protocol), 4.2), squeeze=False)
    plotted = 0
    for ax, protocol in zip(axes[0], args.protocol, strict=True):
        task, name = metric_for(protocol, args.metric)
        series = scores_by(runs, pretrain, protocol, task, name, toy, key=lambda p: p.num_views,
                           point=lambda p, s: (cost(p.epochs, p.num_views), s, p.name))
        for views, pts in sorted(series.items()):
            pts.sort(key=lambda t: t[0])
            ax.errorbar([c for c, _, _ in pts], [s.mean for _, s, _ in pts],
                        yerr=[s.std or 0 for _, s, _ in pts], marker="o", capsize=3,
                        label=f"{views} views (K = {views - 1})")
            for c, s, label in pts:
                ax.annotate(f"{label} (n={len(s.values)})", (c, s.mean), xytext=(4, 4),
                            textcoords="offset points", fontsize=7)
            plotted += len(pts)
        if not args.no_paper and not toy:
            for i, (label, c, v) in enumerate(paper_points(protocol, task, name)):
                ax.plot(c, v, marker="s", mfc="none", color="k", ls="none", label="paper" if i == 0 else None)
                ax.annotate(label, (c, v), xytext=(4, -10), textcoords="offset points", fontsize=7)
        s = downstream(runs, "imagenet", protocol, task, name, toy)
        if s is not None:
            ax.axhline(s.mean, ls="--", color="gray", label=f"imagenet ({s.mean:.1f}, n={len(s.values)})")
        ax.set(xlabel="pretraining cost (FastSiam-epoch equivalents)", ylabel=f"{task} {name}",
               title=protocol + (" [TOY RUNS]" if toy else ""))
        if ax.get_legend_handles_labels()[0]:  # a panel with no results has nothing to label
            ax.legend(fontsize=7)
    if plotted == 0:
        plt.close(fig)
        raise UsageError(f"none of the --pretrain names has results for {', '.join(args.protocol)} "
                         f"in {args.runs_dir}")
    save_figure(fig, args.output)
    return 0


if __name__ == "__main__":
    run_main(main)
