"""Fig. 5: downstream AP against the number of target views K (the views ablation).

    python -m tools.figures.fig5_views runs/ \\
        --pretrain views2=out/v2 views3=out/v3 views4=out/v4 views5=out/v5 --output fig5.png
    python -m tools.figures.fig5_views runs/ --pretrain ... --protocol coco_R_50_FPN_1x    # the FPN detector instead

The paper's Fig. 5 has two panels, COCO and Cityscapes. Its COCO detector is taken to be Fig. 4's R50-C4
(coco_R_50_C4_1x, AP^bb; an assumption: the figure names the dataset only); Cityscapes is cityscapes_R_50_FPN,
AP^mk. --protocol draws other protocols, one panel each.

--pretrain NAME=DIR links a weights name of the runs tree to its pretraining output dir; K = num_views - 1
comes from DIR/config.yaml (K = 1 is SimSiam's single target view, K = 3 FastSiam's). Runs with different
epochs or batch sizes form separate series. Each point is the mean over seeds with a +/- 1 std bar.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from matplotlib.ticker import MaxNLocator

from tools.figures.plotting import (
    PAPER_PANELS,
    UsageError,
    metric_for,
    parse_pretrain,
    plt,
    prefer_real,
    run_main,
    runs_for,
    save_figure,
    scores_by,
)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.figures.fig5_views", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("runs_dir", type=Path)
    ap.add_argument("--pretrain", nargs="+", required=True, metavar="NAME=DIR[@EPOCHS]")
    ap.add_argument("--protocol", nargs="+", default=PAPER_PANELS,
                    help="one panel per protocol (default: the paper's, COCO R50-C4 and Cityscapes)")
    ap.add_argument("--metric", help="TASK/METRIC, e.g. segm/AP (default: the protocol's headline AP)")
    ap.add_argument("--output", type=Path, default=Path("fig5_views.png"))
    args = ap.parse_args(argv)
    pretrain = parse_pretrain(args.pretrain)
    runs, toy = prefer_real(runs_for(args.runs_dir))
    fig, axes = plt.subplots(1, len(args.protocol), figsize=(5 * len(args.protocol), 4), squeeze=False)
    plotted = 0
    for ax, protocol in zip(axes[0], args.protocol, strict=True):
        task, name = metric_for(protocol, args.metric)
        series = scores_by(runs, pretrain, protocol, task, name, toy, key=lambda p: (p.epochs, p.batch_size),
                           point=lambda p, s: (p.num_views - 1, s))
        for (epochs, batch), pts in sorted(series.items()):
            pts.sort(key=lambda t: t[0])
            ax.errorbar([k for k, _ in pts], [s.mean for _, s in pts], yerr=[s.std or 0 for _, s in pts],
                        marker="o", capsize=3, label=f"{epochs:g} ep, batch {batch}")
            for k, s in pts:
                ax.annotate(f"n={len(s.values)}", (k, s.mean), xytext=(4, 4), textcoords="offset points",
                            fontsize=7)
            plotted += len(pts)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel="K (target views; num_views - 1)", ylabel=f"{task} {name}",
               title=protocol + (" [TOY RUNS]" if toy else ""))
        if ax.get_legend_handles_labels()[0]:  # a panel with no results has nothing to label
            ax.legend(fontsize=8)
    if plotted == 0:
        plt.close(fig)
        raise UsageError(f"none of the --pretrain names has results for {', '.join(args.protocol)} "
                         f"in {args.runs_dir}")
    save_figure(fig, args.output)
    return 0


if __name__ == "__main__":
    run_main(main)
