"""A small-scale Table 1, Fig. 4 and Fig. 5 on real images: CIFAR-10 pretraining -> Mask R-CNN on scenes.

    python -m tools.data.cifar10                                   # once: data/cifar10/{train,test}
    python -m tools.study --out runs/study                        # every part (docs/study.md: hours)
    python -m tools.study --out runs/study --part instrument      # one part: the instrument ranges first
    python -m tools.study --out runs/study --part table --rows simsiam_319488   # one row of a part
    python -m tools.study --out runs/study --part fig5 --fig-seeds 26   # more seeds: only the new runs
    python -m tools.study --out runs/study_quick --quick          # the same pipeline at a small size

Parts (tools/study/rows.py): `instrument` (random and supervised under every detection protocol: finetune,
frozen backbone, low-data), `table` (random, supervised, SimSiam, FastSiam at equal views, with enough
seeds on the main instrument), `fig4` (SimSiam and FastSiam at 1/4 and 1/2 of the budget, each a separate
run with its own cosine schedule), `fig5` (K = 1..4 target views at equal compute and equal views per
batch). All start from the same initial ResNet-18 (standard stem, seed 0) and one hyper-parameter setting
(configs/pretrain/cifar10_*_bs32.yaml: batch 32, the paper's lr rule 0.125 x batch / 32, cosine; 64 px).
Each row: backbone -> `python -m transfer.convert` -> `python -m transfer.train_net` (Mask R-CNN R18-FPN, the
Table 1 protocol's structure; the same iterations and lr for every row and instrument) on COCO-format scenes
of CIFAR-10 test images (tools/data/scenes.py), once per seed; and `python -m tools.evaluate` (kNN k=200 and a
linear probe on CIFAR-10 test). Every stage is a subprocess, two at a time, each single-threaded in its own
session (as tools/proxy/, docs/proxy.md). Rerun the same command to resume: finished stages are skipped, a
stage whose results are all on disk is not rerun (a pretraining run whose rows are done is not needed), the
pretraining runs continue from their checkpoints, and the report (OUT/report: study.md, study_fig4.png,
study_fig5.png, study_results.json) is regenerated.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tools.data import scenes
from tools.data.subsets import SubsetError
from tools.study import carry, report
from tools.study.jobs import run_jobs, save_json
from tools.study.plan import StudyError, fp32_note, plan, prepare_data
from tools.study.rows import (
    GROWABLE,
    INSTRUMENTS,
    MAIN_INSTRUMENT,
    PARTS,
    PRESETS,
    check_preset,
    detections_of,
    fixed_settings,
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tools.study",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    ap.add_argument("--out", type=Path, required=True, help="output folder (e.g. runs/study)")
    size = ap.add_mutually_exclusive_group()
    size.add_argument(
        "--quick",
        action="store_const",
        const="quick",
        dest="preset",
        help="the same pipeline, small (docs/study.md)",
    )
    size.add_argument("--tiny", action="store_const", const="tiny", dest="preset", help="the test suite's")
    ap.add_argument("--data", type=Path, default=Path("data/cifar10"), help="tools.data.cifar10 output")
    ap.add_argument(
        "--part",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        help="only these parts (tools/study/rows.py), e.g. the instrument ranges alone: instrument",
    )
    ap.add_argument(
        "--rows",
        nargs="+",
        metavar="ROW",
        help="only these rows of the parts (e.g. fig4's simsiam_79872 fastsiam_79872): a share that one "
        "session can finish, since checkpoints do not carry over with --import",
    )
    ap.add_argument(
        "--instrument",
        choices=tuple(INSTRUMENTS),
        default=MAIN_INSTRUMENT,
        help="the detection protocol of the table, Fig. 4 and Fig. 5 (docs/study.md chose it)",
    )
    ap.add_argument(
        "--table-seeds",
        type=int,
        help="detection seeds of the table's rows on the main "
        "instrument (the preset's by default: enough for 0.5 AP at the measured std)",
    )
    ap.add_argument(
        "--fig-seeds",
        type=int,
        help="detection seeds of Fig. 4's and Fig. 5's rows on the main instrument (the preset's by default; "
        "docs/study.md: 26 resolve 0.5 AP between two K)",
    )
    ap.add_argument(
        "--det-iters",
        type=int,
        help="detectron2 iterations for every row (the instrument's size; the preset's by default)",
    )
    ap.add_argument(
        "--import",
        dest="record",
        type=Path,
        help="continue from a report's study_results.json (e.g. docs/study_results.json): its scores and "
        "timings are written into OUT where missing (tools/study/carry.py)",
    )
    ap.add_argument(
        "--import-rows",
        nargs="+",
        metavar="ROW",
        help="with --import: carry only these rows of the record and their timings (e.g. random, whose "
        "weights are the same on any machine, into a study whose rows are pretrained again)",
    )
    ap.add_argument("--parallel", type=int, default=2, help="subprocesses at a time (one thread each)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = ap.parse_args(argv)
    preset = args.preset or "full"
    p = json.loads(json.dumps(PRESETS[preset]))  # a copy, tuples as lists: as study.json stores it
    if args.det_iters:
        p["det"]["iters"] = args.det_iters
    for name in GROWABLE:
        if getattr(args, name):
            p[name] = getattr(args, name)
    check_preset(p)
    out = args.out.resolve()
    try:
        for name in ("parallel", "det_iters", *GROWABLE):
            if getattr(args, name) is not None and getattr(args, name) < 1:
                raise StudyError(f"--{name.replace('_', '-')} must be at least 1")
        if args.rows:
            dets = detections_of(p, tuple(args.part), args.instrument)
            known = list(dict.fromkeys(row for _, row, _ in dets))
            unknown = [r for r in args.rows if r not in known]
            if unknown:
                raise StudyError(f"--rows {' '.join(unknown)}: not a row of --part {' '.join(args.part)} "
                                 f"(its rows: {' '.join(known)})")
        if args.import_rows and args.record is None:
            raise StudyError("--import-rows needs --import RECORD")
        record = None if args.record is None else carry.read_record(args.record)
        if record is not None:
            carry.check(record, args.record, preset, p)  # before anything is written; the scenes after
            carry.check_rows(record, args.record, args.import_rows or [])
        out.mkdir(parents=True, exist_ok=True)
        state_path = out / "study.json"
        state = json.loads(state_path.read_text()) if state_path.exists() else {}
        # the seed counts may grow between invocations (resume with more), and a rerun without their flag
        # keeps the folder's; every other setting is fixed
        for name in GROWABLE:
            if getattr(args, name) is None and name in state.get("settings", {}):
                p[name] = state["settings"][name]
        theirs = state.get("settings", p)
        if state.get("preset", preset) != preset or fixed_settings(theirs) != fixed_settings(p):
            raise StudyError(
                f"{out} holds a study with other settings (--{state['preset']}); use another --out"
            )
        state.update(preset=preset, settings=p)
        state.setdefault("invocations", []).append(
            {
                "command": "python -m tools.study " + " ".join(argv if argv is not None else sys.argv[1:]),
                "started": time.time(),
            }
        )
        save_json(state_path, state)
        print(f"study ({preset}) -> {out}", flush=True)
        manifest = prepare_data(args, p, out)
        if record is not None:
            carry.check(record, args.record, preset, p, manifest["sha256"])
            n = carry.import_record(record, args.record, out, state, args.import_rows)
            save_json(state_path, state)
            which = f" (rows {' '.join(args.import_rows)})" if args.import_rows else ""
            print(f"  imported from {args.record}{which}: {n['det']} detection scores, {n['eval']} "
                  f"evaluations, {n['timings']} timings", flush=True)
        print(f"  scenes: {manifest['counts']}, sha256 {manifest['sha256'][:16]}...", flush=True)
        timings = json.loads((out / "timings.json").read_text()) if (out / "timings.json").exists() else {}
        jobs = plan(args, p, out)
        note = fp32_note(jobs, args.device)
        if note:
            print(f"  note: {note}", flush=True)
        # what this invocation found done: the report shows that a rerun of a finished study only reports
        state["invocations"][-1].update(stages=len(jobs), done_before=sum(bool(j.done()) for j in jobs))
        try:
            failed = run_jobs(jobs, out, args.parallel, timings)
        except SystemExit:  # SIGINT/SIGTERM (jobs.run_jobs): the report's wall time counts up to here
            state["invocations"][-1].update(interrupted=time.time())
            save_json(state_path, state)
            raise
    except (StudyError, SubsetError, scenes.SceneError, carry.CarryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    state["invocations"][-1].update(finished=time.time(), failed=len(failed))
    save_json(state_path, state)
    paths = report.write(out, p, preset, args.instrument)
    print(f"report: {', '.join(str(x) for x in paths)}", flush=True)
    if failed:
        print(
            f"error: {len(failed)} stage(s) failed or were skipped: {', '.join(j.name for j in failed[:5])}; "
            "see OUT/logs, then rerun to resume",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
