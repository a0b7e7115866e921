"""tools/study/carry.py: a study continued from its record, every row or only some (--import-rows)."""

import json

from tools.study import carry
from tools.study.rows import PRESETS


def scores(ap: float) -> dict:
    return {"bbox": {"AP": ap, "AP50": ap, "AP75": ap}, "segm": {"AP": ap, "AP50": ap, "AP75": ap}}


def record() -> dict:
    def row(run: str, ap: float) -> dict:
        return {"run": run, "knn_top1": 0.3, "knn_top5": 0.8, "linear_top1": 0.4, "linear_top5": 0.9,
                "eval_test_images": 5000, "det": {"lowdata": {"0": scores(ap), "1": scores(ap + 1)}}}

    jobs = ["pretrain simsiam", "export simsiam_319488", "convert simsiam_319488", "eval simsiam_319488",
            "det lowdata simsiam_319488 seed0", "export random", "convert random", "eval random",
            "det lowdata random seed0", "det lowdata random seed1"]
    return {
        "preset": "tiny",
        "settings": json.loads(json.dumps(PRESETS["tiny"])),
        "scenes": {"sha256": "abc"},
        "rows": {"random": row("random", 14.0), "simsiam_319488": row("simsiam", 16.0)},
        "timings": {"jobs": {name: {"cpu_s": 1.0, "wall_s": 1.0} for name in jobs}},
        "commands": [{"command": "python -m tools.study --out x", "started": 1.0, "finished": 99.0}],
    }


def test_every_row_is_carried_with_the_records_commands(tmp_path):
    state: dict = {"invocations": [{"command": "python -m tools.study --out y", "started": 200.0}]}
    rec = record()
    rec["timings"]["jobs"]["pretrain fastsiam_b1of2"] = {"cpu_s": 1.0}  # a run whose rows were never scored
    n = carry.import_record(rec, tmp_path / "rec.json", tmp_path, state)
    assert n == {"det": 4, "eval": 2, "timings": 11}
    assert [c["started"] for c in state["invocations"]] == [1.0, 200.0]


def test_import_rows_carries_only_those_rows_and_their_jobs_timings(tmp_path):
    """The random init's scores into a study pretrained again: none of the other rows' scores or timings, and
    none of the record's commands (they made other rows too; the wall time would count them)."""
    state: dict = {"invocations": [{"command": "python -m tools.study --out y", "started": 200.0}]}
    n = carry.import_record(record(), tmp_path / "rec.json", tmp_path, state, ["random"])
    assert n == {"det": 2, "eval": 1, "timings": 5}
    det = json.loads((tmp_path / "det" / "lowdata" / "random" / "seed1" / "results.json").read_text())
    assert det["bbox"]["AP"] == 15.0 and det["imported_from"].endswith("rec.json")
    assert (tmp_path / "knn" / "random" / "results.json").exists()
    assert not (tmp_path / "det" / "lowdata" / "simsiam_319488").exists()
    assert not (tmp_path / "knn" / "simsiam_319488").exists()
    timings = json.loads((tmp_path / "timings.json").read_text())
    assert sorted(timings) == ["convert random", "det lowdata random seed0", "det lowdata random seed1",
                               "eval random", "export random"]
    assert [c["started"] for c in state["invocations"]] == [200.0]
    # a row's pretraining run comes with it
    n = carry.import_record(record(), tmp_path / "rec.json", tmp_path / "sim", {}, ["simsiam_319488"])
    assert "pretrain simsiam" in json.loads((tmp_path / "sim" / "timings.json").read_text())


def test_import_rows_are_checked_before_anything_is_written(tmp_path, capsys):
    from tools.study.__main__ import main

    rec = tmp_path / "rec.json"
    rec.write_text(json.dumps(record()))
    out = tmp_path / "study"
    assert main(["--tiny", "--out", str(out), "--import", str(rec), "--import-rows", "random", "k7"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--import-rows k7: not a row of" in err and "simsiam_319488" in err
    assert main(["--tiny", "--out", str(out), "--import-rows", "random"]) == 2
    assert "--import-rows needs --import" in capsys.readouterr().err
    assert not out.exists()
