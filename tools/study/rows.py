"""The study's presets and rows: which pretraining run and epoch each row takes, and the views it processed.

One definition, used by the planner (__main__.py) and the report (report.py).
"""
from __future__ import annotations

CONFIGS = {"fastsiam": "configs/pretrain/cifar10_fastsiam_bs32.yaml",  # 4 views
           "simsiam": "configs/pretrain/cifar10_simsiam_bs32.yaml",  # 2 views; the supervised row too
           "supervised": "configs/pretrain/cifar10_simsiam_bs32.yaml"}
VIEWS = {"fastsiam": 4, "simsiam": 2, "supervised": 2}
# Sizes from measurements on the 2-core machine (docs/study.md, "Sizing"). images: pretraining subset of
# CIFAR-10 train; epochs: FastSiam's (the 2-view rows run twice as many); budgets: fractions of it kept as
# Fig. 4 points; det_*: detectron2 schedule (batch, iterations, lr, warmup); scenes and kNN set sizes.
PRESETS = {
    "full": dict(images=10000, epochs=8, budgets=(0.25, 0.5, 1.0), seeds=(0, 1, 2), image_size=64,
                 scenes=dict(train=1000, val=250, canvas=128, min_size=32, max_size=64, max_objects=4),
                 det=dict(batch=4, iters=600, lr=0.02, warmup=100, precise_bn=20),
                 knn_bank=10000, knn_test=5000, extra=[]),
    "quick": dict(images=1500, epochs=4, budgets=(0.25, 0.5, 1.0), seeds=(0, 1, 2), image_size=64,
                  scenes=dict(train=300, val=100, canvas=128, min_size=32, max_size=64, max_objects=4),
                  det=dict(batch=4, iters=100, lr=0.02, warmup=20, precise_bn=5),
                  knn_bank=1000, knn_test=1000, extra=[]),
    # the test suite's: every stage and file of the full study, at a size that proves only the plumbing
    "tiny": dict(images=80, epochs=2, budgets=(0.5, 1.0), seeds=(0,), image_size=32,
                 scenes=dict(train=6, val=4, canvas=64, min_size=16, max_size=32, max_objects=2),
                 det=dict(batch=2, iters=2, lr=0.002, warmup=1, precise_bn=1),
                 knn_bank=20, knn_test=20, extra=["dim=64", "pred_dim=16"]),
}


def rows_of(p: dict) -> dict[str, tuple[str, int]]:
    """row name -> (pretraining run or "random", its epoch to take); the views processed are in the name."""
    rows = {"random": ("random", 0), "supervised": ("supervised", 2 * p["epochs"])}
    for method in ("simsiam", "fastsiam"):
        for b in p["budgets"]:
            ep = round(b * p["epochs"] * 4 / VIEWS[method])  # FastSiam: b x E epochs, 2-view: 2 b x E
            rows[f"{method}_{views_of(p, method, ep)}"] = (method, ep)
    return rows


def views_of(p: dict, method: str, epochs: int) -> int:
    return (p["images"] // 32) * 32 * VIEWS[method] * epochs
