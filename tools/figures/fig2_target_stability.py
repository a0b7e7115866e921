"""Fig. 2: why a target averaged over K views is more stable (the paper's simulation).

    python -m tools.figures.fig2_target_stability --output fig2.png            # n=20 views, 2048 dims, 2000 trials
    python -m tools.figures.fig2_target_stability --views 10 --show-k 1 2 3 --output fig2.png
    python -m tools.figures.fig2_target_stability --reference held-out --reference-views 1000   # an estimate

Each trial draws n view embeddings from N(0, I) in 2048 dimensions (the projector's output size). For
K = 1..n the target is the mean of the first K of them. Left: the distribution over trials of the target's
first dimension (it narrows as N(0, 1/K)). Right: the mean Euclidean distance of the K-view target to the
target "computed based on all possible views" (the paper's wording), with its expectation dashed. K = 1 is
SimSiam's target; K = 3 is FastSiam's.

--reference chooses what stands for the all-views target:
  all (default)  the mean over all possible views, i.e. the mean of the distribution the views are drawn from
                 (exactly 0 here); expected distance sqrt(d / K), never 0.
  held-out       the mean of --reference-views M further views, independent of the K; expected distance
                 sqrt(d (1/K + 1/M)). The mean of M draws of N(0, I) is drawn directly from N(0, I/M), its
                 exact distribution, so a large M costs nothing.
  sample         the mean of the same n views the K are taken from (this tool's earlier default); expected
                 sqrt(d (1/K - 1/n)), which reaches 0 at K = n because the reference then is the target.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator

from tools.figures.plotting import UsageError, plt, run_main, save_figure

REFERENCES = ("all", "held-out", "sample")


def expected_distance(k: np.ndarray, dim: int, n: int, reference: str, reference_views: int) -> np.ndarray:
    """sqrt(E |target_K - reference|^2): d times the variance of the difference of two means of N(0, 1)."""
    extra = {"all": 0.0, "held-out": 1 / reference_views, "sample": -1 / n}[reference]
    return np.sqrt(dim * (1 / k + extra))


def simulate(n: int = 20, dim: int = 2048, trials: int = 2000, seed: int = 0, chunk: int = 100,
             reference: str = "all", reference_views: int = 100_000) -> dict:
    """Returns first_dim (trials x n: first coordinate of the K-view mean, K = 1..n) and distance (n: mean
    over trials of |mean of K views - reference|, the reference chosen as in the module docstring)."""
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {REFERENCES}, not {reference!r}")
    rng = np.random.default_rng(seed)
    k = np.arange(1, n + 1, dtype=np.float64)
    first, dist_sum = [], np.zeros(n)
    for start in range(0, trials, chunk):
        t = min(chunk, trials - start)
        x = rng.standard_normal((t, n, dim))  # trials x views x dim
        target = np.cumsum(x, axis=1) / k[None, :, None]  # trials x K x dim: mean of the first K views
        first.append(target[:, :, 0])
        if reference == "all":
            ref = np.zeros((t, 1, dim))  # the distribution's mean: the average over every possible view
        elif reference == "held-out":
            ref = rng.standard_normal((t, 1, dim)) / math.sqrt(reference_views)  # mean of M fresh views
        else:
            ref = target[:, -1:, :]  # mean of all n sampled views
        dist_sum += np.linalg.norm(target - ref, axis=2).sum(axis=0)
    return {"k": k.astype(int), "first_dim": np.concatenate(first), "distance": dist_sum / trials,
            "expected_distance": expected_distance(k, dim, n, reference, reference_views), "dim": dim,
            "trials": trials, "reference": reference, "reference_views": reference_views}


def reference_text(sim: dict) -> tuple[str, str]:
    """(panel title, formula label) for the reference the simulation used."""
    n = len(sim["k"])
    if sim["reference"] == "all":
        return "the all-views target (the distribution's mean)", r"$\sqrt{d/K}$"
    if sim["reference"] == "held-out":
        return (f"a held-out mean of M = {sim['reference_views']:,} views",
                r"$\sqrt{d\,(1/K + 1/M)}$")
    return f"the mean of the n = {n} sampled views", r"$\sqrt{d\,(1/K - 1/n)}$"


def plot(sim: dict, show_k: list[int]):
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    lim = 4.0
    grid = np.linspace(-lim, lim, 400)
    for i, k in enumerate(show_k):
        a.hist(sim["first_dim"][:, k - 1], bins=60, range=(-lim, lim), density=True, histtype="step", lw=1.5,
               color=f"C{i}", label=f"K = {k}")
        a.plot(grid, np.exp(-grid**2 * k / 2) * math.sqrt(k / (2 * math.pi)), ":", color=f"C{i}", lw=1)
    a.set(xlabel="first dimension of the K-view target", ylabel="density",
          title=f"Target distribution ({sim['trials']} trials; dotted: N(0, 1/K))")
    a.legend()
    title, formula = reference_text(sim)
    b.plot(sim["k"], sim["distance"], "o-", label="simulated")
    b.plot(sim["k"], sim["expected_distance"], "--", color="gray", label=formula)
    b.set(xlabel="K (views averaged into the target)", ylabel="mean Euclidean distance",
          title=f"Distance to {title} (d = {sim['dim']})")
    b.title.set_fontsize(9)
    for k, who in ((1, "SimSiam"), (3, "FastSiam")):
        if k < len(sim["k"]):
            b.annotate(f"K={k} ({who})", (k, sim["distance"][k - 1]), xytext=(12, 4),
                       textcoords="offset points")
    b.xaxis.set_major_locator(MaxNLocator(integer=True))
    b.set_ylim(0, 1.15 * sim["distance"].max())  # room for the K = 1 label under the title
    b.legend()
    return fig


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.figures.fig2_target_stability", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--views", type=int, default=20, help="n, the number of views sampled per trial")
    ap.add_argument("--dim", type=int, default=2048, help="embedding dimension (projector output, 2048)")
    ap.add_argument("--trials", type=int, default=2000)
    ap.add_argument("--show-k", type=int, nargs="+", default=[1, 2, 3, 5, 10], help="K shown on the left")
    ap.add_argument("--reference", choices=REFERENCES, default="all",
                    help="what the distance is measured to (default: the all-views target, as in the paper)")
    ap.add_argument("--reference-views", type=int, default=100_000, help="M for --reference held-out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", type=Path, default=Path("fig2_target_stability.png"))
    args = ap.parse_args(argv)
    if args.views < 2 or args.dim < 1 or args.trials < 2 or args.reference_views < 1:
        raise UsageError("need --views >= 2, --dim >= 1, --trials >= 2 and --reference-views >= 1")
    if any(not 1 <= k <= args.views for k in args.show_k):
        raise UsageError(f"--show-k values must lie in 1..{args.views}")
    sim = simulate(args.views, args.dim, args.trials, args.seed, reference=args.reference,
                   reference_views=args.reference_views)
    for k in sorted({1, 3, args.views} & set(range(1, args.views + 1))):
        print(f"K={k}: std(first dim) {sim['first_dim'][:, k - 1].std():.3f} (1/sqrt(K) = {k ** -0.5:.3f}), "
              f"distance {sim['distance'][k - 1]:.2f} (expected {sim['expected_distance'][k - 1]:.2f})",
              file=sys.stderr)
    save_figure(plot(sim, args.show_k), args.output)
    return 0


if __name__ == "__main__":
    run_main(main)
