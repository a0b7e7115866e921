"""The study's presets, pretraining runs, rows and detection instruments: one definition, used by the planner
(__main__.py) and the report (report.py).

A *run* is one pretraining job (its own cosine schedule); a *row* is a backbone taken from a run (or the
random init); an *instrument* is a detection protocol every row is fine-tuned with; a *part* is a set of
rows x instruments x seeds that answers one question (docs/study.md):
  instrument  random and supervised under every instrument: which one separates them most (its range)
  table       random, supervised, SimSiam, FastSiam at the full budget, with enough seeds for 0.5 AP
  fig4        SimSiam and FastSiam at 1/4 and 1/2 of the budget, each a separate run (Fig. 4)
  fig5        K = 1, 2, 3, 4 target views at equal compute and equal views per batch (Fig. 5)
"""

from __future__ import annotations

from fractions import Fraction

CONFIGS = {
    "fastsiam": "configs/pretrain/cifar10_fastsiam_bs32.yaml",  # 4 views
    "simsiam": "configs/pretrain/cifar10_simsiam_bs32.yaml",  # 2 views; the supervised row too
    "supervised": "configs/pretrain/cifar10_simsiam_bs32.yaml",
}
VIEWS = {"fastsiam": 4, "simsiam": 2, "supervised": 2}
PARTS = ("instrument", "table", "fig4", "fig5")
# Detection protocols, all with the same schedule (PRESETS[...]["det"]). opts: detectron2 keys on top of
# DET_CONFIG; train_fraction: the share of the train scenes it fine-tunes on (the first ones, a fixed subset).
INSTRUMENTS = {
    "finetune": dict(opts=[], train_fraction=1.0),  # the paper's protocol: every stage trains (FREEZE_AT 0)
    # the detection analogue of a linear probe: stem and res2-res5 frozen (FrozenBN), FPN and heads train
    "frozen": dict(opts=["MODEL.BACKBONE.FREEZE_AT", "5"], train_fraction=1.0),
    "lowdata": dict(opts=[], train_fraction=0.1),  # fine-tuning on a tenth of the train scenes
}
# The instrument with the widest measured range, (supervised - random) / pooled seed std (docs/study.md,
# "The supervised row pretrained again": with one supervised backbone frozen 6.7 at 20 seeds a row, 8.1 at
# 10, lowdata 3.3 at 26); the table, Fig. 4 and Fig. 5 use it, and the finetune protocol beside it in the
# table. The records in docs/ before it were fine-tuned on lowdata, the widest at 3 seeds a row:
# `--instrument lowdata` resumes them.
MAIN_INSTRUMENT = "frozen"
# Sizes from measurements on the 2-core machine (docs/study.md, "Design"). images: pretraining subset of
# CIFAR-10 train; epochs: FastSiam's (the 2-view rows run twice as many); budgets: Fig. 4's fractions of it,
# each a separate run; seeds: detection seeds of every row; table_seeds: the table's on the main instrument;
# fig_seeds: the figures' rows' (Fig. 4 and Fig. 5) on the main instrument;
# fig5: its own pretraining subset (a prefix of `images`), views per batch and per image (equal for every K);
# det: detectron2 schedule (batch, iterations, lr, warmup); scenes and kNN set sizes.
PRESETS = {
    "full": dict(
        images=10000,
        epochs=8,
        budgets=(0.25, 0.5, 1.0),
        seeds=(0, 1, 2),
        # 0.5 AP for a difference of two table rows (stats.seeds_needed) at their frozen seed std, 1.03 pooled
        # over the four rows at 20 seeds each (supervised 1.51, random 0.94, SimSiam 0.81, FastSiam 0.65)
        table_seeds=34,
        # Fig. 5's K at 0.5 AP need 26 at their frozen seed std (0.89 pooled over K = 1..4 at 3 seeds):
        # `--part fig5 --fig-seeds 26` (docs/study.md). Not the default: 26 for Fig. 4's rows too would add
        # 184 frozen runs, about 6 h on two cores, to a whole study
        fig_seeds=3,
        image_size=64,
        fig5=dict(ks=(1, 2, 3, 4), images=4800, views_per_batch=120, views_per_image=60, lr=0.125),
        scenes=dict(train=1000, val=250, canvas=128, min_size=32, max_size=64, max_objects=4),
        det=dict(batch=4, iters=600, lr=0.02, warmup=100, precise_bn=20),
        knn_bank=10000,
        knn_test=5000,
        extra=[],
    ),
    "quick": dict(
        images=1500,
        epochs=4,
        budgets=(0.25, 0.5, 1.0),
        seeds=(0, 1, 2),
        table_seeds=3,
        fig_seeds=3,
        image_size=64,
        fig5=dict(ks=(1, 2, 3, 4), images=480, views_per_batch=120, views_per_image=60, lr=0.125),
        scenes=dict(train=300, val=100, canvas=128, min_size=32, max_size=64, max_objects=4),
        det=dict(batch=4, iters=100, lr=0.02, warmup=20, precise_bn=5),
        knn_bank=1000,
        knn_test=1000,
        extra=[],
    ),
    # the test suite's: every stage and file of the full study, at a size that proves only the plumbing
    "tiny": dict(
        images=80,
        epochs=2,
        budgets=(0.5, 1.0),
        seeds=(0,),
        table_seeds=2,
        fig_seeds=1,
        image_size=32,
        fig5=dict(ks=(1, 3), images=40, views_per_batch=8, views_per_image=4, lr=0.125),
        scenes=dict(train=6, val=4, canvas=64, min_size=16, max_size=32, max_objects=2),
        det=dict(batch=2, iters=2, lr=0.002, warmup=1, precise_bn=1),
        knn_bank=20,
        knn_test=20,
        extra=["dim=64", "pred_dim=16"],
    ),
}


# Settings that may grow between invocations of one study (resume with more seeds), and that two records
# compared or carried may differ in: every other setting is fixed per output folder.
GROWABLE = ("table_seeds", "fig_seeds")


def fixed_settings(p: dict) -> dict:
    """The settings that must be the same for one study folder, or for two records to be compared."""
    return {k: v for k, v in p.items() if k not in GROWABLE}


def fig_seeds(p: dict) -> int:
    """Detection seeds of the figures' rows on the main instrument. Records made before the setting
    existed ran the preset's `seeds` there, 0 to n - 1."""
    return p.get("fig_seeds", len(p["seeds"]))


def check_preset(p: dict) -> None:
    """Fig. 5's equal compute must be exact: every K the same views per batch, per image and steps."""
    f = p["fig5"]
    for k in f["ks"]:
        v = k + 1
        if f["views_per_batch"] % v or f["views_per_image"] % v or f["images"] % (f["views_per_batch"] // v):
            raise ValueError(
                f"fig5: K={k} does not divide views_per_batch, views_per_image and images evenly"
            )
    if f["images"] > p["images"]:
        raise ValueError("fig5: its images must be a subset of the pretraining images")


def runs_of(p: dict) -> dict[str, dict]:
    """pretraining run name -> method, epochs, data subset, config overrides, views processed."""
    runs = {}
    for method in ("supervised", "simsiam", "fastsiam"):
        full = p["epochs"] * 4 // VIEWS[method]  # FastSiam: E epochs, the 2-view runs: 2 E
        budgets = (1.0,) if method == "supervised" else p["budgets"]
        for b in budgets:
            ep = max(round(b * full), 1)
            name = (
                method if b == 1.0 else f"{method}_b{Fraction(b).limit_denominator(100)}".replace("/", "of")
            )
            runs[name] = dict(
                method=method,
                epochs=ep,
                data="pretrain",
                overrides=[],
                budget=b,
                views=views_of(p["images"], 32, VIEWS[method], ep),
            )
    f = p["fig5"]
    for k in f["ks"]:
        v, batch = k + 1, f["views_per_batch"] // (k + 1)
        ep = f["views_per_image"] // v
        runs[f"k{k}"] = dict(
            method="fastsiam",
            epochs=ep,
            data="pretrain_fig5",
            budget=None,
            k=k,
            overrides=[f"num_views={v}", f"batch_size={batch}", f"lr={f['lr']}"],
            views=views_of(f["images"], batch, v, ep),
        )
    return runs


def pretrained(row: dict) -> bool:
    """A row whose backbone a pretraining run made; the random init's is the same seeded weights anywhere."""
    return row["run"] != "random"


def rows_of(p: dict) -> dict[str, dict]:
    """row name -> its run ("random": the init), the epoch it takes, method, views, parts it belongs to."""
    runs = runs_of(p)
    rows = {
        "random": dict(run="random", epochs=0, method="random", views=0, parts=("instrument", "table")),
        "supervised": dict(
            run="supervised",
            epochs=runs["supervised"]["epochs"],
            method="supervised",
            views=runs["supervised"]["views"],
            parts=("instrument", "table"),
        ),
    }
    for name, r in runs.items():
        if r["method"] == "supervised":
            continue
        row = f"k{r['k']}" if "k" in r else f"{r['method']}_{r['views']}"
        part = "fig5" if "k" in r else "table" if r["budget"] == 1.0 else "fig4"
        rows[row] = dict(
            run=name,
            epochs=r["epochs"],
            method=r["method"],
            views=r["views"],
            parts=(part,),
            k=r.get("k"),
            budget=r["budget"],
        )
    return rows


def detections_of(p: dict, parts: tuple[str, ...], main: str = MAIN_INSTRUMENT) -> list[tuple[str, str, int]]:
    """(instrument, row, seed) of every detection run the parts ask for, in their order, without repeats."""
    out: dict[tuple[str, str, int], None] = {}
    for row, r in rows_of(p).items():
        for part in parts:
            if part not in r["parts"] and not (
                part == "fig4" and r["method"] in ("simsiam", "fastsiam") and r["budget"] == 1.0
            ):
                continue
            if part == "instrument":
                for inst in INSTRUMENTS:
                    out.update(dict.fromkeys((inst, row, s) for s in p["seeds"]))
            elif part == "table":
                out.update(dict.fromkeys((main, row, s) for s in range(p["table_seeds"])))
                out.update(dict.fromkeys(("finetune", row, s) for s in p["seeds"]))
            else:  # fig4 (its full-budget point is the table's row), fig5
                out.update(dict.fromkeys((main, row, s) for s in range(fig_seeds(p))))
    return list(out)


def views_of(images: int, batch: int, views: int, epochs: int) -> int:
    """views through forward and backward: whole batches only (drop_last), V views an image, E epochs."""
    return (images // batch) * batch * views * epochs
