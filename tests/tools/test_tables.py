"""tools/tables.py, tools/results/ and tools/results/paper_tables.json on a fake runs tree (no detectron2)."""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tools import tables as make_tables
from tools.results.paper import load_paper
from tools.results.runs import base_stem

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------- paper data
def paper_value(table_id: int, method: str, column: str, **match) -> float:
    t = next(t for t in load_paper()["tables"] if t["id"] == table_id)
    col = [c["label"] for c in t["columns"]].index(column)
    rows = [r for r in t["rows"] if r["method"] == method and all(r.get(k) == v for k, v in match.items())]
    assert len(rows) == 1, (table_id, method, match)
    return rows[0]["values"][col]


def test_paper_spot_values():
    assert paper_value(1, "FastSiam", "AP^bb", epoch=25) == 39.7
    assert paper_value(1, "FastSiam", "AP^mk_75", epoch=10) == 37.9
    assert paper_value(2, "SimSiam", "AP^bb", epoch=100) == 35.8
    assert paper_value(2, "SimSiam", "AP^bb", epoch=200) == 39.2
    assert paper_value(3, "Random", "AP^mk") == 25.4
    assert paper_value(4, "DetCo", "AP^kp") == 67.2
    assert paper_value(5, "FastSiam", "COCO FPN", batch=128) == 39.8
    assert paper_value(5, "FastSiam", "CityScapes", batch=64) == 33.6


def test_paper_tables_complete():
    tables = {t["id"]: t for t in load_paper()["tables"]}
    assert sorted(tables) == [1, 2, 3, 4, 5]
    assert [len(tables[i]["rows"]) for i in range(1, 6)] == [13, 11, 10, 10, 5]
    for t in tables.values():
        for r in t["rows"]:
            assert len(r["values"]) == len(t["columns"]) and all(isinstance(v, float) for v in r["values"])
    # every weights name with a paper row (README, Tables: the names tools.launch expects)
    names = {r["weights"] for t in tables.values() for r in t["rows"]} - {None}
    assert names == {"random", "imagenet", "simsiam_r50_in1k_100ep", "fastsiam_r50_in1k_10ep",
                     "fastsiam_r50_in1k_25ep", "fastsiam_r50_in1k_25ep_bs64", "fastsiam_r50_in1k_25ep_bs128"}
    assert tables[4]["protocols"][0] == "keypoint_R_50_FPN_2x"


def test_base_stem():
    assert base_stem("coco_R_50_FPN_1x") == ("coco_R_50_FPN_1x", False)
    assert base_stem("coco_R_50_FPN_1x_random") == ("coco_R_50_FPN_1x", False)
    assert base_stem("coco_R_50_FPN_1x_random_instant") == ("coco_R_50_FPN_1x", True)
    assert base_stem("cityscapes_R_50_FPN_instant_random") == ("cityscapes_R_50_FPN", True)


# ------------------------------------------------------------------------------------------- fake runs tree
# the builtin splits each protocol family trains and tests on (what train_net's provenance.json records)
BUILTIN_SPLITS = {"coco": ("coco_2017_train", "coco_2017_val"),
                  "keypoint": ("keypoints_coco_2017_train", "keypoints_coco_2017_val"),
                  "cityscapes": ("cityscapes_fine_instance_seg_train", "cityscapes_fine_instance_seg_val")}


def dataset(name: str, builtin: bool = True, sha: str | None = None, images: int = 100) -> dict:
    return {"name": name, "builtin": builtin, "json_file": None if builtin else f"/data/{name}.json",
            "image_root": None if builtin else f"/data/{name}", "sha256": sha, "images": images, "classes": 3}


def write(path: Path, obj, provenance: dict | None = None) -> None:
    """A file of the runs tree; a results.json gets a provenance.json beside it: the given one, else the
    builtin splits its protocol trains on (pass provenance={} for none)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    if path.name == "results.json" and provenance is None:
        stem = path.parent.parent.name if path.parent.name.startswith("seed") else path.parent.name
        train, test = BUILTIN_SPLITS[stem.split("_")[0]]
        provenance = {"train": [dataset(train)], "test": [dataset(test)], "mask_format": "polygon"}
    if provenance:
        (path.parent / "provenance.json").write_text(json.dumps(provenance))


def coco(ap: float, mask: bool = True) -> dict:
    out = {"bbox": {"AP": ap, "AP50": ap + 20, "AP75": ap + 4, "APs": 1.0}}
    if mask:
        out["segm"] = {"AP": ap - 4, "AP50": ap + 16, "AP75": ap}
    return out


@pytest.fixture
def runs(tmp_path) -> Path:
    r = tmp_path / "runs"
    for k, ap in enumerate([39.0, 39.5, 40.0]):  # mean 39.5, std 0.5
        write(r / "fastsiam_r50_in1k_25ep/coco_R_50_FPN_1x" / f"seed{k}/results.json", coco(ap))
    write(r / "fastsiam_r50_in1k_25ep/coco_R_50_C4_1x/seed0/results.json", coco(38.0))
    write(r / "fastsiam_r50_in1k_25ep/keypoint_R_50_FPN_2x/results.json",  # no seed dir: a single run
          {"keypoints": {"AP": 66.0, "AP50": 87.0, "AP75": 72.0}})
    for k, ap in enumerate([32.0, 33.0]):  # random init: bbox only, so the mask cells are missing
        write(r / "random/coco_R_50_FPN_1x_random" / f"seed{k}/results.json", coco(ap, mask=False))
    write(r / "imagenet/coco_R_50_FPN_1x/seed0/results.json", coco(39.9))
    write(r / "imagenet/coco_R_50_FPN_1x/seed1/results.json", "{not json")  # corrupt: reported, skipped
    write(r / "my_new_weights/cityscapes_R_50_FPN/seed0/results.json", {"segm": {"AP": 30.0, "AP50": 58.0}})
    write(r / "my_new_weights/cityscapes_R_50_FPN/seed1/results.json", {"segm": {"AP": 31.0, "AP50": 59.0}})
    write(r / "fastsiam_r50_in1k_25ep_bs64/cityscapes_R_50_FPN_instant/seed0/results.json",
          {"segm": {"AP": 1.5, "AP50": 3.0}})
    write(r / "fastsiam_r50_in1k_25ep/keypoint_R_50_FPN_1x/seed0/results.json",
          {"keypoints": {"AP": 60.0, "AP50": 80.0, "AP75": 65.0}})
    return r


def sections(markdown: str) -> dict[int, list[list[str]]]:
    """Table id -> table rows as lists of cells."""
    out, current = {}, None
    for line in markdown.splitlines():
        if line.startswith("### Table "):
            current = out.setdefault(int(line.split()[2].rstrip(".")), [])
        elif line.startswith("### "):  # a table that is not the paper's
            current = None
        elif line.startswith("| ") and current is not None:
            current.append([c.strip() for c in line.strip().strip("|").split("|")])
    return out


def row(rows: list[list[str]], source: str) -> dict[str, str]:
    head = rows[0]
    found = [r for r in rows[1:] if r[head.index("Source")] == source]
    assert found, f"no row {source!r}"
    return dict(zip(head, found[0], strict=True))


def line_after(rows: list[list[str]], source: str) -> dict[str, str]:
    head = rows[0]
    i = next(i for i, r in enumerate(rows) if r[head.index("Source")] == source)
    return dict(zip(head, rows[i + 1], strict=True))


def run_main(capsys, *args) -> tuple[int, str, str]:
    rc = make_tables.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_markdown_means_paper_and_differences(runs, capsys):
    rc, out, err = run_main(capsys, runs)
    assert rc == 0
    t = sections(out)
    assert sorted(t) == [1, 2, 3, 4, 5]
    fs = row(t[1], "fastsiam_r50_in1k_25ep")
    assert fs["n"] == "3"
    assert fs["AP^bb"] == "39.5 ± 0.50"
    assert fs["AP^bb_50"] == "59.5 ± 0.50"
    assert fs["AP^mk"] == "35.5 ± 0.50"
    # the paper's row sits right above, the difference right below
    paper = t[1][[r[4] for r in t[1]].index("fastsiam_r50_in1k_25ep") - 1]
    assert paper[:6] == ["FastSiam", "25", "32", "4", "paper", ""] and paper[6] == "39.7"
    diff = line_after(t[1], "fastsiam_r50_in1k_25ep")
    assert diff["Source"] == "Δ vs paper"
    assert diff["AP^bb"] == "-0.2" and diff["AP^mk"] == "-0.2"  # 39.5 - 39.7, 35.5 - 35.7
    # one run: no std
    assert row(t[2], "fastsiam_r50_in1k_25ep")["AP^bb"] == "38.0"
    assert row(t[4], "fastsiam_r50_in1k_25ep")["AP^kp"] == "66.0"
    assert line_after(t[4], "fastsiam_r50_in1k_25ep")["AP^kp"] == "-0.6"


def test_missing_cells_are_missing_not_zero(runs, capsys):
    _, out, _ = run_main(capsys, runs)
    t = sections(out)
    rnd = row(t[1], "random")
    assert rnd["n"] == "2" and rnd["AP^bb"] == "32.5 ± 0.71"
    assert rnd["AP^mk"] == rnd["AP^mk_50"] == rnd["AP^mk_75"] == "-"
    assert line_after(t[1], "random")["AP^mk"] == "-"
    # Table 5: only the COCO FPN column was measured for random
    r5 = row(t[5], "random")
    assert r5["COCO FPN"] == "32.5 ± 0.71" and r5["COCO C4"] == r5["CityScapes"] == r5["Keypoint"] == "-"
    # paper rows without any measurement are still printed, measured cells for them nowhere invented
    assert not any("0.0" == c for r in t[3] for c in r)


def test_corrupt_json_reported_by_path_and_skipped(runs, capsys):
    rc, out, err = run_main(capsys, runs)
    assert rc == 0
    bad = runs / "imagenet/coco_R_50_FPN_1x/seed1/results.json"
    assert str(bad) in err
    imnet = row(sections(out)[1], "imagenet")
    assert imnet["n"] == "1" and imnet["AP^bb"] == "39.9"  # the corrupt seed is not counted


def test_unmatched_weights_toy_runs_and_table5(runs, capsys):
    _, out, _ = run_main(capsys, runs)
    t = sections(out)
    mine = row(t[3], "my_new_weights")  # no paper row: listed after the paper's rows, without a difference
    assert mine["Method"] == "" and mine["AP^mk"] == "30.5 ± 0.71" and mine["n"] == "2"
    assert [r[4] for r in t[3][-2:]] == ["my_new_weights", "fastsiam_r50_in1k_25ep_bs64 [toy]"]
    toy = row(t[3], "fastsiam_r50_in1k_25ep_bs64 [toy]")
    assert toy["AP^mk"] == "1.5"
    assert "TOY RUN" in out.split("### Table 3.")[1].split("### Table 4.")[0]
    assert "TOY RUN" not in out.split("### Table 1.")[1].split("### Table 2.")[0]
    # keypoint 1x is a row of its own, labelled, not mixed with the 2x runs
    assert row(t[4], "fastsiam_r50_in1k_25ep (keypoint_R_50_FPN_1x: 1x, paper is 2x)")["AP^kp"] == "60.0"
    # Table 5 by weights name, one protocol per column; n per cell when seeds differ
    fs = row(t[5], "fastsiam_r50_in1k_25ep")
    assert fs["COCO FPN"] == "39.5 ± 0.50"
    assert fs["COCO C4"] == "38.0 (n=1)" and fs["Keypoint"] == "66.0 (n=1)" and fs["CityScapes"] == "-"
    assert line_after(t[5], "fastsiam_r50_in1k_25ep")["COCO FPN"] == "-0.2"
    assert row(t[5], "fastsiam_r50_in1k_25ep_bs64 [toy]")["CityScapes"] == "1.5"
    assert not any(r[3] == "my_new_weights" for r in t[5])  # not a batch-size run


def test_keypoint_1x_is_not_compared_with_the_paper_2x(runs, capsys):
    _, out, _ = run_main(capsys, runs)
    t4 = sections(out)[4]
    label = "fastsiam_r50_in1k_25ep (keypoint_R_50_FPN_1x: 1x, paper is 2x)"
    assert line_after(t4, "fastsiam_r50_in1k_25ep")["Source"] == "Δ vs paper"  # 2x: compared
    i = [r[4] for r in t4].index(label)  # 1x: no difference follows (here it is the table's last line)
    assert t4[i + 1:] == [] or t4[i + 1][4] != "Δ vs paper"
    assert sum(r[4] == "Δ vs paper" for r in t4) == 1  # only the 2x run's
    rc, out, _ = run_main(capsys, runs, "--format", "csv")
    kp1x = [r for r in csv.DictReader(io.StringIO(out))
            if r["table"] == "4" and r["protocol"] == "keypoint_R_50_FPN_1x"]
    assert len(kp1x) == 3 and all(r["paper"] == r["diff"] == "" and r["mean"] for r in kp1x)


def test_csv(runs, capsys):
    rc, out, _ = run_main(capsys, runs, "--format", "csv")
    assert rc == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    fs = [r for r in rows
          if r["table"] == "1" and r["weights"] == "fastsiam_r50_in1k_25ep" and r["column"] == "AP^bb"]
    assert len(fs) == 1
    assert float(fs[0]["mean"]) == pytest.approx(39.5) and float(fs[0]["std"]) == pytest.approx(0.5)
    assert fs[0]["paper"] == "39.7" and float(fs[0]["diff"]) == pytest.approx(-0.2) and fs[0]["count"] == "3"
    miss = [r for r in rows if r["table"] == "1" and r["weights"] == "random" and r["column"] == "AP^mk"][0]
    assert miss["mean"] == "" and miss["count"] == "0" and miss["paper"] == "29.9"
    paper = [r for r in rows if r["row"] == "paper" and r["table"] == "4" and r["method"] == "DetCo [31]"]
    assert [p["paper"] for p in paper] == ["67.2", "87.5", "73.4"]


def test_latex_and_atomic_output(runs, tmp_path, capsys):
    dest = tmp_path / "tables.tex"
    rc, out, err = run_main(capsys, runs, "--format", "latex", "--output", dest)
    assert rc == 0 and out == ""
    tex = dest.read_text()
    assert tex.count(r"\begin{tabular}") == 5
    assert r"fastsiam\_r50\_in1k\_25ep" in tex and r"39.5 $\pm$ 0.50" in tex
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_missing_runs_dir_is_a_clean_error(tmp_path):
    p = subprocess.run([sys.executable, "-m", "tools.tables", str(tmp_path / "nope")], cwd=REPO,
                       capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.strip() == f"error: runs directory not found: {tmp_path / 'nope'}"


def test_script_entry_point(runs):
    p = subprocess.run([sys.executable, "-m", "tools.tables", str(runs)], cwd=REPO, capture_output=True,
                       text=True)
    assert p.returncode == 0
    assert "39.5 ± 0.50" in p.stdout and "results.json" in p.stderr


# ------------------------------------------------------------------------------------------- provenance
def own(markdown: str) -> dict[str, list[list[str]]]:
    """Own-data table heading -> its rows (lists of cells)."""
    out, current = {}, None
    for line in markdown.splitlines():
        if line.startswith("### "):
            mine = line.startswith("### Transfer on your own data")
            current = out.setdefault(line[4:], []) if mine else None
        elif line.startswith("| ") and current is not None:
            current.append([c.strip() for c in line.strip().strip("|").split("|")])
    return out


MINE = {"train": [dataset("mine_train", False, "a" * 64, 8)],
        "test": [dataset("mine_val", False, "b" * 64, 4)], "mask_format": "polygon"}


@pytest.fixture
def mixed(runs) -> Path:
    """The runs tree plus runs on one's own data: two datasets (by sha256), a run with only detectron2's
    config.yaml naming a --dataset-train dataset, one with nothing recorded, and an instant run on builtin
    data recorded only in config.yaml."""
    for k, ap in enumerate([10.0, 12.0]):
        write(runs / "mine/coco_R_50_FPN_1x" / f"seed{k}/results.json", coco(ap), MINE)
    write(runs / "imagenet/coco_R_50_FPN_1x/seed5/results.json", coco(20.0), MINE)
    other = json.loads(json.dumps(MINE).replace("a" * 64, "c" * 64))  # same names, another train json
    write(runs / "mine/coco_R_50_FPN_1x/seed3/results.json", coco(50.0), other)
    write(runs / "cfg_only/coco_R_50_FPN_1x/seed0/results.json", coco(30.0), {})
    write(runs / "cfg_only/coco_R_50_FPN_1x/seed0/config.yaml",
          "DATASETS:\n  TEST:\n  - mine_val\n  TRAIN:\n  - mine_train\nSEED: 0\n")
    write(runs / "unrecorded/coco_R_50_FPN_1x/seed0/results.json", coco(31.0), {})
    write(runs / "old_toy/coco_R_50_FPN_1x_instant/seed0/results.json", coco(2.0), {})
    write(runs / "old_toy/coco_R_50_FPN_1x_instant/seed0/config.yaml",
          "DATASETS:\n  TEST:\n  - coco_2017_val_100\n  TRAIN:\n  - coco_2017_val_100\n")
    return runs


def test_builtin_runs_in_the_papers_tables_own_data_in_tables_of_their_own(mixed, capsys):
    rc, out, _ = run_main(capsys, mixed)
    assert rc == 0
    t1 = sections(out)[1]
    sources = [r[4] for r in t1]
    # builtin data (provenance.json, or config.yaml's names for older runs): Table 1, as before
    assert row(t1, "fastsiam_r50_in1k_25ep")["AP^bb"] == "39.5 ± 0.50"
    assert row(t1, "imagenet")["n"] == "1" and row(t1, "imagenet")["AP^bb"] == "39.9"  # not seed5 (own data)
    assert row(t1, "old_toy [toy]")["AP^bb"] == "2.0"
    # own data, or not recorded: never in Table 1
    assert not {"mine", "cfg_only", "unrecorded"} & set(sources)
    tables = own(out)
    sha_a = ("train: mine_train [8 images, sha256 aaaaaaaaaaaa...], "
             "test: mine_val [4 images, sha256 bbbbbbbbbbbb...]")
    first = f"Transfer on your own data: coco_R_50_FPN_1x ({sha_a})"
    assert first in tables
    rows = {r[0]: dict(zip(tables[first][0], r, strict=True)) for r in tables[first][1:]}
    assert set(rows) == {"imagenet", "mine"}
    assert rows["mine"]["n"] == "2" and rows["mine"]["AP^bb"] == "11.0 ± 1.41"
    assert rows["mine"]["AP^mk"] == "7.0 ± 1.41"
    assert tables[first][0] == ["Weights", "n", "AP^bb", "AP^bb_50", "AP^bb_75", "AP^mk", "AP^mk_50",
                                "AP^mk_75"]
    # other data (another sha256 of the same names) is another table; config.yaml-only and unrecorded runs too
    assert len(tables) == 4
    heads = list(tables)
    assert any("sha256 cccccccccccc..." in h and "50.0" in str(tables[h]) for h in heads)
    cfg = [h for h in heads if "names from config.yaml" in h]
    assert len(cfg) == 1 and "30.0" in str(tables[cfg[0]])
    assert "train: mine_train, test: mine_val (names from config.yaml)" in cfg[0]
    unrec = [h for h in heads if "data not recorded" in h]
    assert len(unrec) == 1 and "31.0" in str(tables[unrec[0]])
    # no paper value, caption or difference beside own-data rows
    for h in heads:
        section = out.split("### " + h)[1].split("### ")[0]
        assert "paper" not in [c for r in tables[h] for c in r] and "Δ" not in section
        assert "Paper values" not in section and "Table 1." not in section
    assert f"train mine_train: /data/mine_train.json, sha256 {'a' * 64}" in out  # full hash in the notes


def test_own_data_tables_in_csv_and_latex(mixed, capsys):
    rc, out, _ = run_main(capsys, mixed, "--format", "csv")
    assert rc == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    mine = [r for r in rows if r["weights"] == "mine" and r["column"] == "AP^bb"]
    ids = {r["table"] for r in mine}
    assert len(ids) == 2 and all(i.startswith("own") for i in ids)  # two datasets, two tables
    a = next(r for r in mine if "aaaaaaaaaaaa" in r["data"])
    assert float(a["mean"]) == pytest.approx(11.0) and a["count"] == "2" and a["paper"] == a["diff"] == ""
    assert all(r["data"] == "" for r in rows if r["table"] == "1")
    assert not [r for r in rows if r["table"] == "1" and r["weights"] in ("mine", "cfg_only", "unrecorded")]
    rc, out, _ = run_main(capsys, mixed, "--format", "latex")
    assert rc == 0 and out.count(r"\begin{tabular}") == 5 + 4
    assert r"Transfer on your own data: coco\_R\_50\_FPN\_1x" in out


def test_unreadable_provenance_is_named_and_the_run_counts_as_unrecorded(runs, capsys):
    write(runs / "x/coco_R_50_FPN_1x/seed0/results.json", coco(5.0), {})
    write(runs / "x/coco_R_50_FPN_1x/seed0/provenance.json", "{broken")
    rc, out, err = run_main(capsys, runs)
    assert rc == 0 and str(runs / "x/coco_R_50_FPN_1x/seed0/provenance.json") in err
    assert not any(r[4] == "x" for r in sections(out)[1])
    assert any("data not recorded" in h for h in own(out))
