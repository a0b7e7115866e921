"""The study's statistics: seed summaries, an instrument's range, the seeds a resolution needs, the interval
of a difference of two rows, and how many times sooner one method reaches another's score (Fig. 4's factor).

Every interval is a 95% one. Seeds are the detection fine-tuning seeds: a row's spread over them is the noise
of the instrument (each row has one pretraining run, so pretraining noise is not in it; a second record of the
same rows measures it: compare.py).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def summary(values: list[float | None]) -> dict:
    """mean, sample std and the 95% t-interval half-width of the mean (None where n is too small)."""
    v = np.array([x for x in values if x is not None], dtype=float)
    n = len(v)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "ci95": None}
    std = float(v.std(ddof=1)) if n > 1 else None
    half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else None
    return {"n": n, "mean": float(v.mean()), "std": std, "ci95": half}


def top1_var(p: float, n: int) -> float:
    """Variance of a top-1 accuracy p measured on n test images (binomial): the test set's noise, the only
    noise a single kNN or linear score carries."""
    return p * (1 - p) / n


def pooled_std(a: dict, b: dict) -> float | None:
    if a["std"] is None or b["std"] is None:
        return None
    return math.sqrt(((a["n"] - 1) * a["std"] ** 2 + (b["n"] - 1) * b["std"] ** 2) / (a["n"] + b["n"] - 2))


def instrument_range(supervised: dict, random: dict) -> dict | None:
    """(supervised - random) / pooled seed std: how many noise widths the instrument spans; None below 2
    seeds."""
    pooled = pooled_std(supervised, random)
    if pooled is None:
        return None
    diff = supervised["mean"] - random["mean"]
    return {
        "difference": diff,
        "pooled_std": pooled,
        "range": diff / pooled if pooled > 0 else math.inf,
        "passes": abs(diff) > 2 * pooled,
    }


def seeds_needed(std: float, resolution: float = 0.5, most: int = 100) -> int:
    """Seeds per row for which the 95% interval of a difference of two rows (equal n, pooled std `std`) has a
    half-width of at most `resolution`: t(0.975, 2n - 2) * std * sqrt(2 / n) <= resolution."""
    for n in range(2, most + 1):
        if stats.t.ppf(0.975, 2 * n - 2) * std * math.sqrt(2 / n) <= resolution:
            return n
    return most


def difference(a: list[float], b: list[float]) -> dict | None:
    """mean(a) - mean(b) with its 95% Welch interval; None below 2 values on either side."""
    return contrast([(1, a), (-1, b)])


def contrast(terms: list[tuple[int, list[float]]]) -> dict | None:
    """sum(sign * mean(values)) over independent groups, with its 95% Welch-Satterthwaite interval: e.g. a
    difference of two differences, (FastSiam - SimSiam) in one record against the same in another. None
    below 2 values in any group."""
    groups = [(sign, np.array([x for x in v if x is not None], dtype=float)) for sign, v in terms]
    if any(len(v) < 2 for _, v in groups):
        return None
    var = [v.var(ddof=1) / len(v) for _, v in groups]
    est = float(sum(sign * v.mean() for sign, v in groups))
    se = math.sqrt(sum(var))
    if se == 0:
        return {"difference": est, "ci95": [est, est], "n": [len(v) for _, v in groups]}
    dof = sum(var) ** 2 / sum(w**2 / (len(v) - 1) for w, (_, v) in zip(var, groups))
    half = float(stats.t.ppf(0.975, dof) * se)
    return {"difference": est, "ci95": [est - half, est + half], "n": [len(v) for _, v in groups]}


def top1_contrast(terms: list[tuple[int, float, int]]) -> dict:
    """sum(sign * p) over independent top-1 accuracies p, each on n test images, with a 95% normal interval
    (binomial variances, top1_var): a difference of two rows, or of two such differences."""
    est = sum(sign * p for sign, p, _ in terms)
    se = math.sqrt(sum(top1_var(p, n) for _, p, n in terms))
    return {"difference": est, "ci95": [est - 1.96 * se, est + 1.96 * se]}


def reach(curve: list[tuple[float, float]], target: float) -> float | None:
    """The first cost at which the piecewise-linear curve [(cost, score), ...] (sorted by cost) reaches
    target."""
    for (c0, s0), (c1, s1) in zip(curve, curve[1:], strict=False):
        if s0 >= target:
            return c0
        if s1 >= target:
            return c0 + (target - s0) / (s1 - s0) * (c1 - c0)
    return curve[-1][0] if curve and curve[-1][1] >= target else None


def speedup(
    fast: list[tuple[float, list[float]]],
    slow_cost: float,
    slow: list[float],
    start: list[float],
    test_size: int | None = None,
    draws: int = 2000,
    seed: int = 0,
) -> dict | None:
    """How many times sooner `fast` reaches the mean of `slow` (the other method's final score, at cost
    slow_cost): slow_cost / the cost at which fast's curve, from (0, start) through its points, first
    reaches it.

    fast: [(cost, [scores over seeds]), ...]; start: the scores of the common initial weights (cost 0).
    Interval: a bootstrap. A score with several seeds is redrawn as the mean of a resample of them; a single
    score (kNN top-1, a fraction) is redrawn as Binomial(test_size, score) / test_size when test_size is given
    (the noise of a finite test set), else kept. A draw in which fast never reaches the target counts as a
    factor of 0; `reached` is the share of draws in which it did; `below`: slow_cost / fast's largest cost,
    the bound a factor not reached within fast's budgets lies under. `before_first`: the point estimate lies
    before fast's first measured point, on the straight line from the initial weights (an interpolation).
    """
    # by cost alone, in the given order where costs tie (two short runs can round to the same CPU seconds):
    # comparing the score arrays of a tie would be ambiguous
    pts = sorted(((c, np.array(v, dtype=float)) for c, v in fast if v), key=lambda p: p[0])
    if not pts or not slow or not start:
        return None
    rng = np.random.default_rng(seed)
    slow_v, start_v = np.array(slow, dtype=float), np.array(start, dtype=float)

    def at(means: list[float], target: float, origin: float) -> float | None:
        return reach([(0.0, origin), *zip([c for c, _ in pts], means, strict=True)], target)

    def factor(c: float | None) -> float:
        return 0.0 if c is None else math.inf if c == 0 else slow_cost / c

    def redraw(v: np.ndarray) -> float:
        if len(v) > 1:
            return float(rng.choice(v, len(v)).mean())
        if test_size:
            return float(rng.binomial(test_size, min(max(v[0], 0.0), 1.0)) / test_size)
        return float(v[0])

    cost = at([float(v.mean()) for _, v in pts], float(slow_v.mean()), float(start_v.mean()))
    boot = np.array(
        [factor(at([redraw(v) for _, v in pts], redraw(slow_v), redraw(start_v))) for _ in range(draws)]
    )
    lo, hi = np.percentile(boot, [2.5, 97.5]) if np.isfinite(boot).all() else (math.nan, math.nan)
    return {
        "factor": factor(cost),
        "ci95": [float(lo), float(hi)],
        "reached": float((boot > 0).mean()),
        "at_start": float(np.isinf(boot).mean()),  # draws in which the initial weights already reach it
        "target": float(slow_v.mean()),
        "cost": cost,
        "below": slow_cost / pts[-1][0] if pts[-1][0] > 0 else math.inf,
        "before_first": cost is not None and cost < pts[0][0],
    }
