"""tools/study/compare.py: a study's rows in two records (the same rows pretrained twice), B - A."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as st

from tools.study import compare, stats

SIMSIAM = [15.0, 16.0, 17.0, 15.5]
FASTSIAM = [16.0, 17.0, 18.0, 16.5]  # the same spread as SimSiam's, one AP higher


def row(method: str, aps: list[float], knn: float, cpu: str, cpu_s: float = 1000.0) -> dict:
    return {
        "run": method,
        "method": method,
        "views": 319488,
        "k": None,
        "budget": 1.0,
        "pretrain_cpu": cpu,
        "pretrain_cpu_s": cpu_s,
        "knn_top1": knn,
        "knn_top5": None,
        "linear_top1": None,
        "linear_top5": None,
        "eval_test_images": 5000,
        "det": {"lowdata": {str(i): {"bbox": {"AP": x}, "segm": {"AP": x}} for i, x in enumerate(aps)}},
    }


def record(
    shift: float, knn_shift: float, cpu: str, sha: str = "abc", cpu_s: float = 1000.0, sim_knn: float = 0.38,
    again: bool = False,
) -> dict:
    """SimSiam and FastSiam rows; `shift` AP and `knn_shift` top-1 added to FastSiam's alone. again: the
    rows pretrained again, their seeds' scores rotated (the same spread; no seed ties one of the first)."""
    order = (lambda v: v[1:] + v[:1]) if again else (lambda v: v)
    return {
        "preset": "full",
        "settings": {"images": 10000, "table_seeds": 4},
        "main_instrument": "lowdata",
        "scenes": {"sha256": sha},
        "rows": {
            "simsiam_319488": row("simsiam", order(SIMSIAM), sim_knn, cpu, cpu_s),
            "fastsiam_319488": row(
                "fastsiam", order([x + shift for x in FASTSIAM]), 0.40 + knn_shift, cpu, cpu_s
            ),
        },
    }


def write(tmp_path, name: str, rec: dict):
    p = tmp_path / name
    p.write_text(json.dumps(rec))
    return p


def test_each_row_and_the_method_difference_b_minus_a(tmp_path, capsys):
    a = write(tmp_path, "a.json", record(0.0, 0.0, "CPU one"))
    more_seeds = {"images": 10000, "table_seeds": 9, "fig_seeds": 26}  # the seed counts may differ
    b_rec = record(1.0, 0.02, "CPU two", cpu_s=1500.0, sim_knn=0.385, again=True)
    b = write(tmp_path, "b.json", {**b_rec, "settings": more_seeds})
    assert compare.main([str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    res = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    # a row that did not move: B - A is zero; FastSiam moved by one AP
    sim, fast = res["rows"]["simsiam_319488"], res["rows"]["fastsiam_319488"]
    assert sim["pretrained_on"] == ["CPU one", "CPU two"]
    assert sim["AP"]["lowdata"]["b_minus_a"]["difference"] == pytest.approx(0.0)
    assert fast["AP"]["lowdata"]["b_minus_a"]["difference"] == pytest.approx(1.0)
    assert fast["knn_top1"]["b_minus_a"]["difference"] == pytest.approx(0.02)
    # FastSiam - SimSiam: +1 in A, +2 in B; their difference +1 with a Welch-Satterthwaite interval over four
    # groups of equal n and variance: df = 4 (n - 1), se = sqrt(4 var / n)
    m = res["methods"][0]
    assert m["views"] == 319488
    assert m["AP"]["lowdata"]["a"]["difference"] == pytest.approx(1.0)
    assert m["AP"]["lowdata"]["b"]["difference"] == pytest.approx(2.0)
    n, var = len(SIMSIAM), np.var(SIMSIAM, ddof=1)
    half = st.t.ppf(0.975, 4 * (n - 1)) * math.sqrt(4 * var / n)
    assert m["AP"]["lowdata"]["b_minus_a"]["ci95"] == pytest.approx([1.0 - half, 1.0 + half])
    # top-1: a difference of differences of four test-set proportions, each with its binomial variance
    ps = [0.42, 0.385, 0.40, 0.38]
    se = math.sqrt(sum(p * (1 - p) / 5000 for p in ps))
    assert m["knn_top1"]["b_minus_a"]["difference"] == pytest.approx(0.015)
    assert m["knn_top1"]["b_minus_a"]["ci95"] == pytest.approx([0.015 - 1.96 * se, 0.015 + 1.96 * se])
    assert m["linear_top1"]["b_minus_a"] is None  # no linear scores: no interval, not a zero
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert md.rstrip("\n") == capsys.readouterr().out.rstrip("\n")
    assert "|  |  | AP^bb lowdata (seeds 4 / 4) | 16.9 ± 0.9 | 17.9 ± 0.9 | +1.00 [" in md
    assert "| 319,488 | AP^bb lowdata | +1.00 " in md and "finetune" not in md  # no scores: no line
    assert "| fastsiam_319488 | CPU one / CPU two | pretraining CPU s | 1,000 | 1,500 | x 1.50 |" in md
    assert f"| +1.00 [{1 - half:+.2f}, {1 + half:+.2f}] |" in md


def test_contrast_of_two_groups_is_welchs_difference():
    a, b = [1.0, 2.0, 4.0], [0.5, 0.7, 0.9, 1.4]
    c, d = stats.contrast([(1, a), (-1, b)]), stats.difference(a, b)
    assert c["difference"] == pytest.approx(d["difference"]) and c["ci95"] == pytest.approx(d["ci95"])
    assert stats.contrast([(1, a), (-1, [1.0])]) is None


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.update(preset="quick"), "made with other settings"),
        (lambda r: r["settings"].update(images=500), "made with other settings"),
        (lambda r: r["scenes"].update(sha256="def"), "made on other scenes"),
        (lambda r: r.update(rows={}), "share no pretrained row"),
    ],
)
def test_records_that_do_not_compare_are_refused_in_one_line(tmp_path, capsys, change, message):
    a = write(tmp_path, "a.json", record(0.0, 0.0, "CPU one"))
    rec = record(0.0, 0.0, "CPU one")
    change(rec)
    b = write(tmp_path, "b.json", rec)
    assert compare.main([str(a), str(b), "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "cmp").exists()


def test_a_file_that_is_not_a_record_is_refused(tmp_path, capsys):
    a = write(tmp_path, "a.json", record(0.0, 0.0, "CPU one"))
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"rows": {}}))
    for bad in ("bad.json", "other.json", "missing.json"):
        assert compare.main([str(a), str(tmp_path / bad)]) == 2
        assert "study_results.json" in capsys.readouterr().err


def test_a_row_one_record_carried_from_the_other_is_not_compared(tmp_path):
    """A record continued from another with --import holds some of its scores: that row is one backbone's."""
    a_rec = record(0.0, 0.0, "CPU one")
    b_rec = record(1.0, 0.02, "CPU two", sim_knn=0.385, again=True)
    random = {**row("random", SIMSIAM, 0.27, None), "views": 0, "knn_top5": 0.8}
    b_rec["rows"]["random"] = a_rec["rows"]["random"] = random
    extended = b_rec["rows"]["simsiam_319488"]["det"]["lowdata"]
    first = a_rec["rows"]["simsiam_319488"]["det"]["lowdata"]["0"]
    extended.update({"0": first, "7": {"bbox": {"AP": 30.0}}})  # seed 0 carried, seed 7 new
    a, b = write(tmp_path, "a.json", a_rec), write(tmp_path, "b.json", b_rec)
    assert compare.main([str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    res = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert set(res["rows"]) == {"fastsiam_319488"}
    assert res["carried"] == {"simsiam_319488": {"cause": "same", "pretrained_on": ["CPU one", "CPU two"]}}
    assert res["methods"] == []  # SimSiam's row is carried: no difference of differences
    # the random init is never "carried": the same weights in both, its runs here the same runs too, and
    # none of its own in B: no B - A
    assert res["unpretrained"]["random"]["same_runs"] is True
    assert res["unpretrained"]["random"]["AP"] == {}
    assert res["unpretrained"]["random"]["knn_top1"]["b_minus_a"] is None
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "Not compared: simsiam_319488 (pretrained on CPU one / CPU two), whose scores are partly" in md
    assert "random holds some of the same runs' scores in both" in md
    # the report marks what --import carried: the message names the import
    b_rec["rows"]["simsiam_319488"]["imported"] = {"eval": False, "det": {"lowdata": ["0"]}}
    b = write(tmp_path, "b.json", b_rec)
    assert compare.main([str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    res = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert res["carried"]["simsiam_319488"]["cause"] == "import"
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "Not compared: simsiam_319488, whose scores are partly carried from one record into" in md


def test_a_row_pretrained_again_to_the_bit_is_one_backbone_and_not_called_imported(tmp_path, capsys):
    """On one CPU model and precision a pretraining run repeats to the bit: the same scores, no import mark.
    That row is one backbone's; the message names the rerun, not --import."""
    a_rec = record(0.0, 0.0, "CPU one")
    b_rec = record(1.0, 0.02, "CPU one", again=True)
    b_rec["rows"]["fastsiam_319488"] = json.loads(json.dumps(a_rec["rows"]["fastsiam_319488"]))
    a, b = write(tmp_path, "a.json", a_rec), write(tmp_path, "b.json", b_rec)
    assert compare.main([str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    res = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert set(res["rows"]) == {"simsiam_319488"} and res["carried"]["fastsiam_319488"]["cause"] == "same"
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("Not compared"))
    assert "fastsiam_319488 (pretrained on CPU one / CPU one)" in line and "same CPU model" in line
    assert "(--import)" not in line
    # both rows repeated: nothing to compare, and the refusal names both causes
    b_rec["rows"]["simsiam_319488"] = a_rec["rows"]["simsiam_319488"]
    assert compare.main([str(a), str(write(tmp_path, "b.json", b_rec))]) == 2
    err = capsys.readouterr().err
    assert "--import" in err and "same CPU model and precision" in err and err.count("\n") == 1


def test_records_on_other_main_instruments_compare_on_every_instrument_both_hold(tmp_path):
    """A record's main instrument decides its report, not which scores it holds: B, written with frozen as
    its main instrument, holds lowdata seeds too and compares with A on lowdata (and on frozen, once A holds
    frozen seeds)."""
    a_rec = record(0.0, 0.0, "CPU one")
    b_rec = {**record(1.0, 0.0, "CPU two", again=True), "main_instrument": "frozen"}
    for name, r in b_rec["rows"].items():
        r["det"]["frozen"] = {str(i): {"bbox": {"AP": x + 3}} for i, x in enumerate(SIMSIAM)}
    a, b = write(tmp_path, "a.json", a_rec), write(tmp_path, "b.json", b_rec)
    assert compare.main([str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    res = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert res["instruments"] == ["lowdata"]
    assert res["rows"]["fastsiam_319488"]["AP"]["lowdata"]["b_minus_a"]["difference"] == pytest.approx(1.0)
    assert set(res["methods"][0]["AP"]) == {"lowdata"}
    for r in a_rec["rows"].values():
        r["det"]["frozen"] = {str(i): {"bbox": {"AP": x + 2.5}} for i, x in enumerate(SIMSIAM[1:])}
    a = write(tmp_path, "a.json", a_rec)
    assert compare.main([str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    res = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert res["instruments"] == ["lowdata", "frozen"]  # A's main instrument first
    frozen = res["rows"]["simsiam_319488"]["AP"]["frozen"]
    moved = np.mean(SIMSIAM) + 3 - np.mean(SIMSIAM[1:]) - 2.5
    assert frozen["b_minus_a"]["difference"] == pytest.approx(moved)
    assert res["methods"][0]["AP"]["frozen"]["b_minus_a"]["difference"] == pytest.approx(0.0)
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| simsiam_319488 |" in md and "AP^bb frozen (seeds 3 / 4)" in md


def test_the_random_inits_runs_carried_into_b_leave_b_minus_a_to_bs_own_runs(tmp_path):
    """Carried seeds are the same runs in both records: counting them in B would pull B - A to zero and
    narrow its interval as if they were independent."""
    a_rec, b_rec = record(0.0, 0.0, "CPU one"), record(1.0, 0.02, "CPU two", sim_knn=0.385, again=True)
    a_rec["rows"]["random"] = {**row("random", SIMSIAM, 0.27, None), "views": 0, "knn_top5": 0.8}
    b_rec["rows"]["random"] = {**row("random", SIMSIAM + [20.0, 21.0, 22.0], 0.27, None), "views": 0,
                               "knn_top5": 0.8}
    a, b = write(tmp_path, "a.json", a_rec), write(tmp_path, "b.json", b_rec)
    assert compare.main([str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    rnd = json.loads((tmp_path / "cmp" / "compare.json").read_text())["unpretrained"]["random"]
    assert rnd["same_runs"] is True
    assert rnd["AP"]["lowdata"]["b"]["n"] == 3  # seeds 4 to 6, B's own
    d = stats.difference([20.0, 21.0, 22.0], SIMSIAM)
    got = rnd["AP"]["lowdata"]["b_minus_a"]
    assert got["difference"] == pytest.approx(d["difference"]) and got["ci95"] == pytest.approx(d["ci95"])
    assert rnd["knn_top1"]["b_minus_a"] is None  # the same evaluation: no spread between machines to show


def test_a_reader_that_stops_early_gets_no_traceback(tmp_path):
    """`compare A B | head`: the reader closes the pipe; the files are written and nothing is printed on
    stderr."""
    a = write(tmp_path, "a.json", record(0.0, 0.0, "CPU one"))
    b = write(tmp_path, "b.json", record(1.0, 0.02, "CPU two", again=True))
    cmd = [sys.executable, "-m", "tools.study.compare", str(a), str(b), "--out", str(tmp_path / "cmp")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # before the child prints: its write meets a closed pipe
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0 and err == ""
    assert (tmp_path / "cmp" / "compare.md").read_text().startswith("# One study's rows")


def test_a_row_not_pretrained_is_shown_apart_as_the_spread_between_machines(tmp_path, capsys):
    """The random init has the same weights in both records: its B - A is the evaluation's and fine-tuning's
    spread between the machines, in a table of its own, never a pretraining run's change."""
    a_rec, b_rec = record(0.0, 0.0, "CPU one"), record(1.0, 0.02, "CPU two", sim_knn=0.385, again=True)
    a_rec["rows"]["random"] = {**row("random", SIMSIAM, 0.27, None), "views": 0}
    b_rec["rows"]["random"] = {**row("random", [x + 0.5 for x in SIMSIAM[1:]], 0.275, None), "views": 0}
    a, b = write(tmp_path, "a.json", a_rec), write(tmp_path, "b.json", b_rec)
    assert compare.main([str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    res = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert "random" not in res["rows"] and res["carried"] == {}
    rnd = res["unpretrained"]["random"]
    assert rnd["same_runs"] is False
    assert rnd["knn_top1"]["b_minus_a"]["difference"] == pytest.approx(0.005)
    assert rnd["AP"]["lowdata"]["b_minus_a"]["difference"] == pytest.approx(
        np.mean(SIMSIAM[1:]) + 0.5 - np.mean(SIMSIAM))
    md = (tmp_path / "cmp" / "compare.md").read_text()
    section = md.split("## Rows not pretrained")[1].split("## FastSiam")[0]
    assert "| random | AP^bb lowdata (seeds 4 / 3) |" in section and "pretrained on" not in section
    assert "not a pretraining run's." in section
    # two records that share only the random init, or whose every pretrained row is carried, are refused
    only_random = {**b_rec, "rows": {"random": b_rec["rows"]["random"]}}
    assert compare.main([str(a), str(write(tmp_path, "r.json", only_random))]) == 2
    assert "share no pretrained row" in capsys.readouterr().err
    carried_pair = {**a_rec, "rows": {**a_rec["rows"], "random": b_rec["rows"]["random"]}}
    assert compare.main([str(a), str(write(tmp_path, "c.json", carried_pair))]) == 2
    assert "no row is a second backbone" in capsys.readouterr().err


def test_records_with_nothing_pretrained_again_are_refused(tmp_path, capsys):
    a = write(tmp_path, "a.json", record(0.0, 0.0, "CPU one"))
    assert compare.main([str(a), str(a)]) == 2
    assert "no row is a second backbone" in capsys.readouterr().err


def test_a_top1_tie_alone_is_two_backbones_not_a_carried_score(tmp_path):
    """kNN top-1 is a count of 5,000 test images: two backbones tie on it by chance, and that row is compared;
    a row carried with --import ties on every evaluation score."""
    # SimSiam's kNN top-1 is 0.38 in both
    a_rec, b_rec = record(0.0, 0.0, "CPU one"), record(1.0, 0.02, "CPU two", again=True)
    a_rec["rows"]["simsiam_319488"]["knn_top5"], b_rec["rows"]["simsiam_319488"]["knn_top5"] = 0.85, 0.86
    a, b = write(tmp_path, "a.json", a_rec), write(tmp_path, "b.json", b_rec)
    assert compare.main([str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    res = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert res["carried"] == {} and res["rows"]["simsiam_319488"]["knn_top1"]["b_minus_a"]["difference"] == 0
    b_rec["rows"]["simsiam_319488"]["knn_top5"] = 0.85  # every evaluation score the same: carried
    b = write(tmp_path, "b.json", b_rec)
    assert compare.main([str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    assert list(json.loads((tmp_path / "cmp" / "compare.json").read_text())["carried"]) == ["simsiam_319488"]
