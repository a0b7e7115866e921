"""Print the paper's Tables 1-5 beside this project's transfer results.

    python -m tools.tables RUNS_DIR                                 # Markdown to stdout
    python -m tools.tables RUNS_DIR --format latex --output tables.tex
    python -m tools.tables RUNS_DIR --format csv --output tables.csv

RUNS_DIR is the tree python -m tools.launch fills: RUNS_DIR/<weights-name>/<config-stem>/[seed<k>/]results.json,
each results.json as transfer.train_net writes it (task -> metric -> value, AP in percent). Config stems map
to tables after stripping `_random` and `_instant`: coco_R_50_FPN_1x -> Table 1, coco_R_50_C4_1x -> Table 2,
cityscapes_R_50_FPN -> Table 3, keypoint_R_50_FPN_2x (the paper's schedule) and keypoint_R_50_FPN_1x ->
Table 4; Table 5 (batch size) takes the same runs by weights name. Every measured row is mean +/- sample std
over seeds, with n, under the paper's row for the same weights and followed by the difference; keypoint 1x
rows are labelled "1x, paper is 2x" and get no difference (the paper's Table 4 is 2x throughout). Runs from
`_instant` configs are marked as toy runs. A null metric (train_net writes NaN, e.g. an AP with no detections,
as null) is missing for that seed. The paper's numbers live in tools/results/paper_tables.json.

Only runs on the paper's data go into Tables 1-5: those whose every train and test dataset is a detectron2
builtin split (COCO 2017, COCO 2017 keypoints, Cityscapes), as the run's provenance.json says (written by
transfer.train_net; for older runs, the dataset names in detectron2's config.yaml). Runs on other data, or
whose data is not recorded, get a table of their own per protocol and dataset ("Transfer on your own data:
PROTOCOL (train: NAME [N images, sha256 ...], test: ...)"), with the protocol's columns and no paper values.

CSV is long-format, one line per (table, row, column), so a spreadsheet can pivot it.
"""
from __future__ import annotations

import argparse
import csv
import io
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tools.results.output import write_atomic
from tools.results.paper import load_paper
from tools.results.runs import Run, load_runs
from tools.results.stats import MISSING, fmt_stat, stat

BATCH_ABLATION = re.compile(r"_bs\d+$")  # other weights names that belong in Table 5


@dataclass
class Line:
    kind: str  # "paper" | "measured" | "diff"
    label: str  # paper method or weights name
    meta: list  # epoch, batch[, views]; empty for measured/diff lines
    cells: list  # per column: float (paper/diff), Stat (measured) or None (missing)
    n: int | None = None
    weights: str = ""
    protocol: str = ""
    toy: bool = False
    paper: list = field(default_factory=list)  # the paper values a measured line is compared with


def measured_lines(paper_row: dict | None, groups: dict, cols: list, table: dict) -> list[Line]:
    """A measured line (and a diff line where the paper has the row) per (weights, protocol, toy) group."""
    lines = []
    for (weights, protocol, toy), runs in groups.items():
        # Table 5 columns each name a protocol; Tables 1-4 columns take every run of the group
        cells = [stat([r for r in runs if r.protocol == c.get("protocol", r.protocol)],
                      c["task"], c["metric"]) for c in cols]
        # one protocol: n = runs (seeds); Table 5 mixes protocols, so n = the most seeds any column has
        n = len(runs) if protocol else max((len(s.values) for s in cells if s), default=0)
        # only the paper's own protocol (the first) is compared with it: a 1x keypoint run against the paper's
        # 2x numbers would show the schedule, not the weights
        comparable = not protocol or protocol == table["protocols"][0]
        why = table.get("not_comparable", {}).get(protocol, "not the paper's protocol")
        label = weights if comparable else f"{weights} ({protocol}: {why})"
        paper_vals = paper_row["values"] if paper_row and comparable else []
        lines.append(Line("measured", label, [], cells, n, weights, protocol, toy, paper_vals))
        if paper_vals:
            diff = [None if s is None or p is None else s.mean - p
                    for s, p in zip(cells, paper_vals, strict=True)]
            lines.append(Line("diff", "", [], diff, None, weights, protocol, toy, paper_vals))
    return lines


def build_table(table: dict, runs: list[Run]) -> list[Line]:
    """The paper's rows in order, each followed by this project's rows for the same weights; others last."""
    cols = table["columns"]
    by_column = "protocol" in cols[0]  # Table 5: one protocol per column, rows matched by weights name only
    paper_names = {row["weights"] for row in table["rows"]}
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        if by_column:
            if r.weights not in paper_names and not BATCH_ABLATION.search(r.weights):
                continue
            if r.protocol not in {c["protocol"] for c in cols}:
                continue
            key = (r.weights, "", r.toy)
        elif r.protocol in table["protocols"]:
            key = (r.weights, r.protocol, r.toy)
        else:
            continue
        groups.setdefault(key, []).append(r)
    order = {p: i for i, p in enumerate(table["protocols"])}
    keys = sorted(groups, key=lambda k: (order.get(k[1], 0), k[2], k[0]))
    meta_keys = ["epoch", "batch"] + (["views"] if "views" in table["rows"][0] else [])
    lines, used = [], set()
    for row in table["rows"]:
        method = row["method"] + (f" [{row['ref']}]" if row["ref"] else "")
        lines.append(Line("paper", method, [row[k] for k in meta_keys], row["values"]))
        mine = [k for k in keys if row["weights"] and k[0] == row["weights"]]
        used.update(mine)
        lines += measured_lines(row, {k: groups[k] for k in mine}, cols, table)
    lines += measured_lines(None, {k: groups[k] for k in keys if k not in used}, cols, table)
    return lines


def own_data_tables(paper: dict, runs: list[Run]) -> list[tuple[dict, list[Line]]]:
    """Runs on data other than the paper's builtin splits (or whose data is not recorded): one table per
    (protocol, data), with the columns of the protocol's paper table and none of its rows, caption or note."""
    by_protocol = {p: t for t in reversed(paper["tables"]) if "protocol" not in t["columns"][0]
                   for p in t["protocols"]}
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        if r.protocol in by_protocol:  # every protocol of a Table 5 column is also in Tables 1-4
            groups.setdefault((r.protocol, r.data.identity), []).append(r)
    order = {p: i for i, p in enumerate(p for t in paper["tables"] for p in t["protocols"])}  # Table 1 first
    out = []
    for i, key in enumerate(sorted(groups, key=lambda k: order[k[0]]), 1):  # stable: runs' order within
        protocol, mine = key[0], groups[key]
        data = mine[0].data
        table = {"id": f"own{i}", "own": True, "protocols": [protocol], "rows": [], "data": data,
                 "columns": by_protocol[protocol]["columns"],
                 "title": f"Transfer on your own data: {protocol} ({data.describe()})"}
        runs_by = {}
        for r in mine:
            runs_by.setdefault((r.weights, protocol, r.toy), []).append(r)
        keys = sorted(runs_by, key=lambda k: (k[2], k[0]))
        out.append((table, measured_lines(None, {k: runs_by[k] for k in keys}, table["columns"], table)))
    return out


def build_tables(paper: dict, runs: list[Run]) -> list[tuple[dict, list[Line]]]:
    """The paper's Tables 1-5 with the runs on its data (detectron2's builtin splits), then a table of its own
    for each protocol and dataset of the other runs: they are never shown under the paper's captions."""
    builtin = [r for r in runs if r.data.builtin]
    return [(t, build_table(t, builtin)) for t in paper["tables"]] + \
        own_data_tables(paper, [r for r in runs if not r.data.builtin])


# ---------------------------------------------------------------- formatting
def fmt_cell(line: Line, i: int, d: int) -> str:
    v = line.cells[i]
    if line.kind == "measured":
        return fmt_stat(v, line.n, d)
    if v is None:
        return MISSING
    return f"{v:+.{d}f}" if line.kind == "diff" else f"{v:.{d}f}"


def meta_keys(table: dict) -> list[str]:
    """The paper rows' epoch/batch[/views] columns; an own-data table has no paper rows, so none."""
    if table.get("own"):
        return []
    return ["epoch", "batch"] + (["views"] if "views" in table["rows"][0] else [])


def row_texts(table: dict, line: Line, d: int) -> list[str]:
    meta = [MISSING if v is None else str(v) for v in line.meta] or [""] * len(meta_keys(table))
    measured = line.label + (" [toy]" if line.toy else "")
    source = {"paper": "paper", "diff": "Δ vs paper"}.get(line.kind, measured)
    label = [] if table.get("own") else [line.label if line.kind == "paper" else ""]
    n = "" if line.n is None else str(line.n)
    return [*label, *meta, source, n] + [fmt_cell(line, i, d) for i in range(len(table["columns"]))]


def headers(table: dict) -> list[str]:
    cols = [c["label"] for c in table["columns"]]
    if table.get("own"):
        return ["Weights", "n", *cols]
    return ["Method", *[k.capitalize() for k in meta_keys(table)], "Source", "n", *cols]


def caption(table: dict, lines: list[Line]) -> tuple[str, list[str]]:
    notes = []
    toy = "TOY RUN: rows marked [toy] come from `_instant` configs"
    if table.get("own"):
        notes.append(f"Protocol: {table['protocols'][0]}. Not the paper's data, so no paper values: compare "
                     "these rows with each other only.")
        for split, sets in (("train", table["data"].train), ("test", table["data"].test)):
            notes += [f"{split} {ds.name}: {ds.json_file}, sha256 {ds.sha256}" for ds in sets if ds.json_file]
        if any(line.toy for line in lines):
            notes.append(toy + ".")
        return table["title"], notes
    if table["protocols"]:
        notes.append("Protocol: " + ", ".join(table["protocols"]) + " (the first is the paper's).")
    else:
        notes.append("Columns: " + ", ".join(f"{c['label']} = {c['protocol']} {c['task']} {c['metric']}"
                                             for c in table["columns"]) + ".")
    if any(line.toy for line in lines):
        notes.append(toy + ", not comparable to the paper.")
    notes.append("Paper values: " + table["note"])
    return f"Table {table['id']}. {table['title']}", notes


def to_markdown(tables: list, d: int) -> str:
    out = []
    for table, lines in tables:
        title, notes = caption(table, lines)
        out += [f"### {title}", ""] + [f"_{n}_  " for n in notes] + [""]
        head = headers(table)
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(row_texts(table, line, d)) + " |" for line in lines]
        out.append("")
    return "\n".join(out)


def tex(s: str) -> str:
    m = re.fullmatch(r"AP\^(\w+?)(?:_(\d+))?", s)
    if m:
        return rf"AP$^{{\mathrm{{{m[1]}}}}}" + (f"_{{{m[2]}}}" if m[2] else "") + "$"
    s = s.replace("\\", r"\textbackslash{}")
    for ch in "&%#_{}$":
        s = s.replace(ch, "\\" + ch)
    return s.replace("±", r"$\pm$").replace("Δ", r"$\Delta$")


def to_latex(tables: list, d: int) -> str:
    out = ["% needs \\usepackage{booktabs}"]
    for table, lines in tables:
        title, notes = caption(table, lines)
        head, ncols = headers(table), len(table["columns"])
        out += [r"\begin{table}[t]", r"\centering", rf"\caption{{{tex(title + ' ' + ' '.join(notes))}}}",
                rf"\begin{{tabular}}{{{'l' * (len(head) - ncols)}{'r' * ncols}}}",
                r"\toprule", " & ".join(tex(h) for h in head) + r" \\", r"\midrule"]
        for prev, line in zip([None, *lines[:-1]], lines, strict=True):
            if prev is not None and line.kind == "paper" and prev.kind != "paper":  # under a measured group
                out.append(r"\midrule")
            out.append(" & ".join(tex(c) for c in row_texts(table, line, d)) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(out)


def to_csv(tables: list, d: int) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["table", "row", "method", "epoch", "batch", "views", "weights", "protocol", "toy", "n",
                "column", "paper", "mean", "std", "count", "diff", "data"])
    for table, lines in tables:
        method = ""
        data = table["data"].describe() if table.get("own") else ""  # "" : the paper's builtin splits
        for line in lines:
            if line.kind == "paper":
                method, meta = line.label, line.meta + [None] * (3 - len(line.meta))
            if line.kind == "diff":
                continue
            for i, col in enumerate(table["columns"]):
                c = line.cells[i]
                num = lambda v: "" if v is None else round(v, 6)  # noqa: E731
                if line.kind == "paper":
                    w.writerow([table["id"], "paper", method, *map(num, meta), "", "", "", "", col["label"],
                                num(c), "", "", "", "", ""])
                    continue
                p = line.paper[i] if line.paper else None
                protocol = line.protocol or col.get("protocol", "")
                w.writerow([table["id"], "measured", method if line.paper else "", "", "", "", line.weights,
                            protocol, int(line.toy), line.n, col["label"], num(p), num(c.mean if c else None),
                            num(c.std if c else None), len(c.values) if c else 0,
                            num(c.mean - p if c and p is not None else None), data])
    return buf.getvalue()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.tables", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs_dir", type=Path, help="RUNS_DIR/<weights>/<config-stem>/[seed<k>/]results.json")
    ap.add_argument("--format", choices=["markdown", "csv", "latex"], default="markdown")
    ap.add_argument("--output", type=Path, help="write here (atomically) instead of stdout")
    ap.add_argument("--decimals", type=int, default=1, help="digits after the point (the paper prints 1)")
    args = ap.parse_args(argv)
    if not args.runs_dir.is_dir():
        print(f"error: runs directory not found: {args.runs_dir}", file=sys.stderr)
        return 2
    if args.output and not args.output.parent.is_dir():
        print(f"error: output directory not found: {args.output.parent}", file=sys.stderr)
        return 2
    paper = load_paper()
    runs = load_runs(args.runs_dir, paper)
    if not runs:
        print(f"warning: no usable results.json under {args.runs_dir}; printing the paper's rows only",
              file=sys.stderr)
    tables = build_tables(paper, runs)
    text = {"markdown": to_markdown, "csv": to_csv, "latex": to_latex}[args.format](tables, args.decimals)
    if args.output:
        write_atomic(args.output, text)
        print(f"wrote {args.output} ({len(runs)} runs)", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
