"""Mean and sample std over seeds, and how the tools print them."""
from __future__ import annotations

import math
from dataclasses import dataclass

MISSING = "-"


@dataclass
class Stat:
    values: list[float]

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values)

    @property
    def std(self) -> float | None:
        """Sample std (n - 1), as seed-to-seed spread is usually reported; written out so NaN propagates."""
        if len(self.values) < 2:
            return None
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (len(self.values) - 1))


def value(results: dict, task: str, name: str) -> float | None:
    """results[task][name] as a float; None when absent or null (train_net writes NaN, e.g. an AP with no
    detections, as null)."""
    v = results.get(task, {}).get(name)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def metric(run, task: str, name: str) -> float | None:
    return value(run.results, task, name)


def stat(runs: list, task: str, name: str) -> Stat | None:
    """Stat over the runs that have the metric; None if none has it (missing, never zero)."""
    values = [v for v in (metric(r, task, name) for r in runs) if v is not None]
    return Stat(values) if values else None


def fmt_stat(s: Stat | None, n: int | None, d: int) -> str:
    """mean ± std with d (d + 1 for the std) decimals; "(n=k)" when k differs from the row's n."""
    if s is None:
        return MISSING
    out = f"{s.mean:.{d}f}" + (f" ± {s.std:.{d + 1}f}" if s.std is not None else "")
    return out + (f" (n={len(s.values)})" if n is not None and len(s.values) != n else "")
