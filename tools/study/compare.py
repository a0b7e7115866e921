"""Two records of the same study side by side: how far a row moves when its backbone is pretrained again (the
same run on another machine or in another precision), and whether FastSiam - SimSiam holds in both.

    python -m tools.study.compare docs/study_results.json docs/study_fp32_results.json --out runs/compare

A row's detection seeds all fine-tune one backbone, so the report's intervals hold fine-tuning noise only
(tools/study/stats.py); a second record with the same rows pretrained again measures the pretraining run's
share. Both records (a report's study_results.json) must come from the same preset, settings (the seed
counts aside) and scenes; rows in both are compared, B - A, on every detection instrument both hold
(whichever each record's report took as its main one). A row that is not pretrained (the random init: the
same weights in both) is shown apart: its B - A is the evaluation's and fine-tuning's spread between the two
machines, not a pretraining run's, over B's own runs only. A row whose scores are partly the same in both is
one backbone's, not two, and is left out: carried by --import (the report marks what was imported), or
pretrained again on the same CPU model in the same precision, which repeats a run to the bit. Writes
OUT/compare.md and OUT/compare.json and prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from tools.results.output import write_atomic
from tools.study.carry import CarryError, read_record
from tools.study.report import pair, scores
from tools.study.report_text import fmt, interval, pct
from tools.study.rows import INSTRUMENTS, fixed_settings, pretrained
from tools.study.stats import contrast, summary, top1_contrast


TOP1 = {"knn_top1": "kNN top-1", "linear_top1": "linear top-1"}


class CompareError(Exception):
    """The records cannot be compared: one line, exit status 2."""


def read(path: Path) -> dict:
    try:
        rec = read_record(path, option="")
    except CarryError as e:
        raise CompareError(str(e)) from None
    if "main_instrument" not in rec:
        raise CompareError(f"{path}: not a study_results.json (no main_instrument)")
    return rec


def check(a: dict, b: dict, pa: Path, pb: Path) -> None:
    """Same preset, settings (the seed counts aside) and scenes, and a pretrained row in both."""
    def fixed(r: dict) -> tuple:
        return r["preset"], fixed_settings(r["settings"])

    if fixed(a) != fixed(b):
        raise CompareError(f"{pb}: made with other settings than {pa} (preset or sizes)")
    sha = [(r["scenes"] or {}).get("sha256") for r in (a, b)]
    if sha[0] != sha[1]:
        raise CompareError(f"{pb}: made on other scenes than {pa} (sha256 {sha[1]} against {sha[0]})")
    shared = [r for r in a["rows"] if r in b["rows"] and pretrained(a["rows"][r])]
    if not shared:
        raise CompareError(f"{pa} and {pb} share no pretrained row")
    if all(carried(a["rows"][r], b["rows"][r]) for r in shared):
        raise CompareError(f"{pb}: every pretrained row it shares with {pa} holds the same scores (carried "
                           "by --import, or pretrained again on the same CPU model and precision, which "
                           "repeats a run to the bit): no row is a second backbone")


def method_rows(rec: dict, views: int) -> tuple[dict, dict] | None:
    """The record's FastSiam and SimSiam rows at these views (not Fig. 5's K rows)."""
    def find(method: str) -> dict | None:
        return next((r for r in rec["rows"].values()
                     if r["method"] == method and r.get("k") is None and r["views"] == views), None)

    f, s = find("fastsiam"), find("simsiam")
    return (f, s) if f and s else None


EVALS = ("knn_top1", "knn_top5", "linear_top1", "linear_top5")


def boxes(r: dict) -> dict:
    """(instrument, seed) -> box AP of each detection run of a row."""
    return {(i, seed): s["bbox"]["AP"] for i, seeds in r.get("det", {}).items() for seed, s in seeds.items()}


def same_runs(ra: dict, rb: dict) -> tuple[bool, list]:
    """The scores that are one run's in both records: the evaluation when every top-1 and top-5 ties (a
    top-1 alone is a count of 5,000 test images: two backbones tie on it by chance, so a record without top-5
    never ties on its evaluation), and the detection seeds whose box AP ties to the bit."""
    ev = None not in (ra.get("knn_top1"), ra.get("knn_top5")) and all(ra.get(k) == rb.get(k) for k in EVALS)
    mine = boxes(ra)
    return ev, [key for key, ap in boxes(rb).items() if ap is not None and mine.get(key) == ap]


def carried(ra: dict, rb: dict) -> str | None:
    """Why a row's scores are partly the same in both records, or None: "import" when a record marks them
    imported (tools/study/carry.py), else "same" (a record written before imports were marked, or the row
    pretrained again on the same CPU model and precision: a run repeats to the bit there). Either way the
    row is one backbone's, not two."""
    ev, seeds = same_runs(ra, rb)
    if not ev and not seeds:
        return None
    marks = [r.get("imported", {}) for r in (ra, rb)]
    imported = ev and any(m.get("eval") for m in marks) or any(
        seed in m.get("det", {}).get(inst, []) for inst, seed in seeds for m in marks)
    return "import" if imported else "same"


def own_runs(ra: dict, rb: dict) -> dict:
    """Row B without the runs it shares with A (same_runs): B - A of what B ran itself."""
    ev, seeds = same_runs(ra, rb)
    det = {i: {s: v for s, v in ss.items() if (i, s) not in seeds} for i, ss in rb.get("det", {}).items()}
    return {**rb, "det": det, **({k: None for k in EVALS} if ev else {})}


def row_change(ra: dict, rb: dict, insts: tuple) -> dict:
    """One row's scores in A and B and B - A: AP per instrument, top-1 per evaluation."""
    d = pair(rb, ra, insts)
    return {
        "AP": {
            inst: {"a": summary(scores(ra, inst)), "b": summary(scores(rb, inst)), "b_minus_a": d["AP"][inst]}
            for inst in insts
            if scores(ra, inst) and scores(rb, inst)
        },
        **{k: {"a": ra[k], "b": rb[k], "b_minus_a": d.get(k)} for k in TOP1},
    }


def instruments(a: dict, b: dict) -> tuple[str, ...]:
    """The detection instruments both records hold scores of, A's main one first."""
    def held(rec: dict) -> set:
        return {inst for r in rec["rows"].values() for inst in r.get("det", {})}

    both = held(a) & held(b)
    return tuple(i for i in dict.fromkeys((a["main_instrument"], *INSTRUMENTS)) if i in both)


def compare(a: dict, b: dict, pa: Path, pb: Path) -> dict:
    insts = instruments(a, b)
    res: dict = {"a": str(pa), "b": str(pb), "instruments": list(insts)}
    res.update(rows={}, unpretrained={}, methods=[], carried={})
    for name in (r for r in a["rows"] if r in b["rows"]):
        ra, rb = a["rows"][name], b["rows"][name]
        cause, on = carried(ra, rb), [ra.get("pretrain_cpu"), rb.get("pretrain_cpu")]
        if not pretrained(ra):  # the same weights: B - A is the evaluation's spread between the machines
            change = row_change(ra, own_runs(ra, rb), insts)
            res["unpretrained"][name] = {**change, "same_runs": cause is not None}
            continue
        if cause:
            res["carried"][name] = {"cause": cause, "pretrained_on": on}
            continue
        res["rows"][name] = {
            "pretrained_on": on,
            "pretrain_cpu_s": [ra.get("pretrain_cpu_s"), rb.get("pretrain_cpu_s")],
            **row_change(ra, rb, insts),
        }
    views = sorted({r["views"] for r in a["rows"].values() if r["method"] == "fastsiam"})
    for v in views:
        fa_sa, fb_sb = method_rows(a, v), method_rows(b, v)
        if not fa_sa or not fb_sb or any(carried(x, y) for x, y in zip(fa_sa, fb_sb)):
            continue
        (fa, sa), (fb, sb) = fa_sa, fb_sb
        da, db = pair(fa, sa, insts), pair(fb, sb, insts)
        entry: dict = {"views": v, "AP": {}}
        for inst in insts:
            both = [(1, scores(fb, inst)), (-1, scores(sb, inst)),
                    (-1, scores(fa, inst)), (1, scores(sa, inst))]
            if da["AP"][inst] and db["AP"][inst]:
                entry["AP"][inst] = {"a": da["AP"][inst], "b": db["AP"][inst], "b_minus_a": contrast(both)}
        for key in TOP1:
            rows = [(1, fb), (-1, sb), (-1, fa), (1, sa)]
            known = all(r[key] is not None and r["eval_test_images"] for _, r in rows)
            entry[key] = {"a": da.get(key), "b": db.get(key), "b_minus_a": top1_contrast(
                [(sign, r[key], r["eval_test_images"]) for sign, r in rows]) if known else None}
        res["methods"].append(entry)
    return res


def score_lines(r: dict) -> list[tuple]:
    """(metric, A, B, B - A) cells of one row's AP and top-1."""
    lines = [(f"AP^bb {inst} (seeds {c['a']['n']} / {c['b']['n']})", fmt(c["a"]), fmt(c["b"]),
              interval(c["b_minus_a"])) for inst, c in r["AP"].items()]
    return lines + [(f"{label} (%, points)", pct(r[k]["a"]), pct(r[k]["b"]), interval(r[k]["b_minus_a"], 100))
                    for k, label in TOP1.items()]


def machines(r: dict) -> str:
    """A row's CPU models, "A / B"."""
    return " / ".join(str(c or "-") for c in r["pretrained_on"])


def render(res: dict) -> list[str]:
    out = [
        "# One study's rows pretrained twice: record B against record A",
        "",
        f"A: `{res['a']}`; B: `{res['b']}`. Generated by `tools/study/compare.py`.",
        "",
        "## Each row in both records (B - A)",
        "",
        "| row | pretrained on (A / B) | metric | A | B | B - A [95%] |",
        "|---|---|---|---:|---:|---:|",
    ]
    for name, r in res["rows"].items():
        on = machines(r)
        cpu = [None if x is None else f"{x:,.0f}" for x in r["pretrain_cpu_s"]]
        ratio = f"x {r['pretrain_cpu_s'][1] / r['pretrain_cpu_s'][0]:.2f}" if None not in cpu else "-"
        lines = [("pretraining CPU s", cpu[0] or "-", cpu[1] or "-", ratio)] if cpu != [None, None] else []
        lines += score_lines(r)
        for i, (metric, x, y, d) in enumerate(lines):
            out.append(f"| {name if i == 0 else ''} | {on if i == 0 else ''} | {metric} | {x} | {y} | {d} |")
    imported = [n for n, c in res["carried"].items() if c["cause"] == "import"]
    same = [f"{n} (pretrained on {machines(r)})"
            for n, r in res["carried"].items() if r["cause"] == "same"]
    if imported:
        out += ["", f"Not compared: {', '.join(imported)}, whose scores are partly carried from one record "
                "into the other (--import): one backbone's, not two."]
    if same:
        out += ["", f"Not compared: {', '.join(same)}, whose scores are partly the same to the bit in both "
                "records and not marked as imported: pretrained again on the same CPU model in the same "
                "precision (a run repeats to the bit there), or carried into a record written before imports "
                "were marked. One backbone's, not two."]
    out += ["", "AP: mean ± std over detection seeds, B - A with a Welch interval; top-1: a normal "
            "interval of a difference of two proportions on the test images; pretraining CPU seconds: B / A "
            "(they compare within one CPU model and precision only).", ""]
    if res["unpretrained"]:
        out += ["## Rows not pretrained: the same weights in both records (B - A)", "",
                "| row | metric | A | B | B - A [95%] |", "|---|---|---:|---:|---:|"]
        for name, r in res["unpretrained"].items():
            for i, (metric, x, y, d) in enumerate(score_lines(r)):
                out.append(f"| {name if i == 0 else ''} | {metric} | {x} | {y} | {d} |")
        shared = [name for name, r in res["unpretrained"].items() if r["same_runs"]]
        out += ["", "Their B - A is the spread of the evaluation and the fine-tuning between the two "
                "records' machines (and precisions), not a pretraining run's"
                + (f"; {', '.join(shared)} holds some of the same runs' scores in both (carried by --import, "
                   "or run again on the same CPU model), and B counts B's own runs only." if shared else "."),
                ""]
    if res["methods"]:
        out += ["## FastSiam - SimSiam in each record", "",
                "| views | metric | A | B | B - A [95%] |", "|---:|---|---:|---:|---:|"]
        for m in res["methods"]:
            cells = [(f"AP^bb {inst}", c["a"], c["b"], c["b_minus_a"], 1) for inst, c in m["AP"].items()]
            cells += [(f"{label} (points)", m[k]["a"], m[k]["b"], m[k]["b_minus_a"], 100)
                      for k, label in TOP1.items()]
            for i, (metric, x, y, d, scale) in enumerate(cells):
                views = f"{m['views']:,}" if i == 0 else ""
                out.append(f"| {views} | {metric} | {interval(x, scale)} | {interval(y, scale)} | "
                           f"{interval(d, scale)} |")
        out += ["", "B - A is the difference of the two differences: an interval that excludes zero says "
                "the FastSiam - SimSiam difference on that instrument moved with the pretraining run.", ""]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.study.compare", description=__doc__.split("\n\n")[0])
    ap.add_argument("a", type=Path, help="study_results.json of one record (A)")
    ap.add_argument("b", type=Path, help="study_results.json of the same rows pretrained again (B)")
    ap.add_argument("--out", type=Path, help="folder for compare.md and compare.json (printed only without)")
    args = ap.parse_args(argv)
    try:
        a, b = read(args.a), read(args.b)
        check(a, b, args.a, args.b)
        if args.out is not None and args.out.exists() and not args.out.is_dir():
            raise CompareError(f"--out {args.out}: not a folder")
    except CompareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    res = compare(a, b, args.a, args.b)
    text = "\n".join(render(res))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        write_atomic(args.out / "compare.json", json.dumps(res, indent=1))
        write_atomic(args.out / "compare.md", text)
    try:
        print(text, flush=True)
    except BrokenPipeError:  # `compare ... | head`: the reader has what it wanted (the files are written)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
    return 0


if __name__ == "__main__":
    sys.exit(main())
