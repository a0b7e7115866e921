"""tools/study/stats.py, rows.py and plots.py: the numbers and figures docs/study.md is written from."""

import math

import numpy as np
import pytest
from scipy import stats as st

from pretrain import precision
from tools.study import cpu, stats
from tools.study.rows import PARTS, PRESETS, check_preset, detections_of, rows_of, runs_of


def test_summary_and_range():
    s = stats.summary([1.0, 2.0, 3.0, None])
    assert s["n"] == 3 and s["mean"] == 2.0 and s["std"] == 1.0
    assert s["ci95"] == pytest.approx(st.t.ppf(0.975, 2) / math.sqrt(3))
    assert stats.summary([5.0])["std"] is None and stats.summary([])["mean"] is None
    sup, rnd = stats.summary([10.0, 11.0, 12.0]), stats.summary([1.0, 2.0, 3.0])
    r = stats.instrument_range(sup, rnd)
    assert r["difference"] == 9.0 and r["pooled_std"] == 1.0 and r["range"] == 9.0 and r["passes"]
    assert stats.instrument_range(stats.summary([1.0]), rnd) is None


def test_seeds_needed_is_the_smallest_n_whose_difference_interval_is_narrow_enough():
    for std in (0.1, 0.43, 0.9):
        n = stats.seeds_needed(std, 0.5)
        half = [st.t.ppf(0.975, 2 * k - 2) * std * math.sqrt(2 / k) for k in (n - 1, n)]
        assert half[1] <= 0.5 and (n == 2 or half[0] > 0.5)
    assert stats.seeds_needed(0.43) == 8 and stats.seeds_needed(10.0, most=20) == 20


def test_difference_is_welch():
    a, b = [20.0, 21.0, 22.0, 23.0], [19.0, 19.5, 20.0]
    d = stats.difference(a, b)
    ref = st.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert d["difference"] == pytest.approx(np.mean(a) - np.mean(b))
    assert d["ci95"] == pytest.approx([ref.low, ref.high])
    assert stats.difference([1.0], b) is None


def test_reach_and_speedup():
    assert stats.reach([(0, 0.0), (10, 1.0)], 0.5) == 5.0
    assert stats.reach([(0, 0.0), (10, 1.0)], 2.0) is None
    # FastSiam at costs 100/200/400 reaches SimSiam's final 0.378 between 100 and 200: at 170 -> 800 / 170
    s = stats.speedup([(100, [0.35]), (200, [0.39]), (400, [0.408])], 800, [0.378], [0.274], test_size=5000)
    assert s["factor"] == pytest.approx(800 / 170) and not s["before_first"] and s["reached"] > 0.9
    assert s["ci95"][0] < s["factor"] < s["ci95"][1]
    # without test-set noise and single values the interval collapses on the estimate
    s = stats.speedup([(100, [0.35]), (200, [0.39])], 800, [0.378], [0.274])
    assert s["ci95"] == pytest.approx([800 / 170, 800 / 170])
    # never reached: factor 0; reached before the first budget, on the line from the initial weights
    s = stats.speedup([(100, [0.30]), (200, [0.31])], 800, [0.378], [0.274])
    assert s["factor"] == 0 and s["below"] == 4.0  # unreached by cost 200: not 800 / 200 sooner
    s = stats.speedup([(100, [0.5])], 800, [0.378], [0.274])
    assert s["before_first"] and s["factor"] == pytest.approx(800 / (100 * (0.378 - 0.274) / (0.5 - 0.274)))
    # seeds: a bootstrap over them gives an interval that contains the estimate
    s = stats.speedup(
        [(100, [17.0, 18.0, 17.5]), (200, [19.0, 19.6, 19.3])], 400, [19.2, 19.4, 19.0], [16.0, 16.5]
    )
    assert s["ci95"][0] <= s["factor"] <= s["ci95"][1] and s["factor"] == pytest.approx(400 / 195, rel=0.05)


def test_speedup_with_two_budgets_at_the_same_cost():
    """Two short runs can be timed at the same CPU seconds: the curve keeps both points in the given order
    (a vertical step) instead of comparing their seeds' scores to sort them."""
    s = stats.speedup([(100, [17.0, 18.0]), (100, [19.0, 19.6])], 400, [18.5, 18.7], [16.0, 16.5])
    assert s["cost"] == 100 and s["factor"] == pytest.approx(4.0) and s["below"] == 4.0
    s = stats.speedup([(100, [17.0, 18.0]), (100, [17.2, 17.6])], 400, [19.2, 19.4], [16.0, 16.5])
    assert s["factor"] == 0


def test_presets_runs_and_parts():
    for p in PRESETS.values():
        check_preset(p)
        runs, rows = runs_of(p), rows_of(p)
        # equal compute at every budget: the same views for FastSiam, SimSiam (and supervised at full budget)
        for b in p["budgets"]:
            views = {
                r["views"] for r in runs.values() if r.get("budget") == b and r["method"] != "supervised"
            }
            assert len(views) == 1, (b, views)
        # Fig. 5: equal views and equal steps for every K, from views per batch and per image
        ks = [r for r in runs.values() if "k" in r]
        assert len({r["views"] for r in ks}) == 1 and [r["k"] for r in ks] == list(p["fig5"]["ks"])
        for r in ks:
            batch = int(next(o for o in r["overrides"] if o.startswith("batch_size=")).split("=")[1])
            assert batch * (r["k"] + 1) == p["fig5"]["views_per_batch"]
        dets = detections_of(p, PARTS)
        assert len(dets) == len(set(dets)) and {row for _, row, _ in dets} == set(rows)
        instrument = detections_of(p, ("instrument",))
        assert {row for _, row, _ in instrument} == {"random", "supervised"}
        assert {i for i, _, _ in instrument} == {"finetune", "frozen", "lowdata"}
    full = PRESETS["full"]
    assert runs_of(full)["fastsiam_b1of4"]["epochs"] == 2 and runs_of(full)["simsiam_b1of4"]["epochs"] == 4
    assert {r["views"] for r in runs_of(full).values() if "k" in r} == {288000}
    bad = {**full, "fig5": {**full["fig5"], "views_per_batch": 100}}
    with pytest.raises(ValueError, match="K=2"):
        check_preset(bad)


def test_fig4_section_says_why_there_is_no_factor():
    """Fig. 4's budget runs done before the table's full-budget ones (--rows): the page says what is missing
    instead of a factor."""
    from tools.study import report_text

    row = dict(method="fastsiam", k=None, run="fastsiam_b1of4", budget=0.25, views=100, pretrain_cpu_s=5.0,
               knn_top1=0.3, linear_top1=0.4,
               summary={"lowdata": {"bbox/AP": {"mean": 16.0, "std": 0.5, "n": 3}}})
    text = "\n".join(report_text.fig4({"rows": {"fastsiam_100": row}, "speedup": {}}, "lowdata"))
    assert "No factor yet" in text
    assert "| fastsiam_b1of4 | 0.25 | 100 | 5 | 30.0 | 40.0 | 16.0 ± 0.5 | 3 |" in text


def test_fig4_views_axis_reads_in_thousands():
    """Six-digit view counts ran into each other as tick labels on Fig. 4's half-width panels."""
    from tools.study.plots import THOUSANDS

    assert [THOUSANDS(x, None) for x in (0, 20000, 160000, 2500)] == ["0", "20k", "160k", "2.5k"]


def test_fig4_section_bounds_a_factor_not_reached():
    """FastSiam's budgets so far below SimSiam's full-budget score: the page says the factor's upper bound."""
    from tools.study import report_text

    s = stats.speedup([(100, [0.30]), (200, [0.31])], 800, [0.378], [0.274], test_size=5000)
    row = dict(method="fastsiam", k=None, run="fastsiam_b1of4", budget=0.25, views=200, pretrain_cpu_s=5.0,
               knn_top1=0.31, linear_top1=0.4, summary={})
    text = "\n".join(report_text.fig4({"rows": {"f": row}, "speedup": {"knn_top1/views": s}}, "lowdata"))
    assert "does not reach SimSiam's final 0.378" in text and "factor is **below 4.00**" in text


def test_study_wall_time_counts_side_by_side_shares_once():
    """Two shares run at once in separate --out folders and merged with --import: their overlap is one
    stretch of wall time, an interrupted one counts up to its signal, a killed one (no end) as 0 s."""
    from tools.study import report_text
    from tools.study.report import busy_wall

    share_a = {"started": 0.0, "finished": 100.0, "stages": 3, "done_before": 0}
    share_b = {"started": 50.0, "interrupted": 130.0}
    killed = {"started": 200.0}
    later = {"started": 300.0, "finished": 310.0}
    assert busy_wall([later, share_b, killed, share_a]) == 140.0
    assert report_text.invocation_summary(share_b) == ": interrupted after 1.3 min (a rerun resumes it)"
    assert report_text.invocation_summary(killed) == ": interrupted (a rerun resumes it)"


def test_fig4_section_reads_no_factor_when_the_initial_weights_reach_the_target():
    """SimSiam's final AP within the seed noise of random init: some bootstrap draws start above it, the
    interval is undefined, and the page says no factor can be read instead of printing one."""
    from tools.study import report_text

    s = stats.speedup([(100, [16.8, 16.7, 16.9])], 400, [15.8, 15.0, 16.6], [15.4, 14.6, 16.2])
    assert 0 < s["at_start"] < 1 and math.isnan(s["ci95"][0])
    row = dict(method="fastsiam", k=None, run="fastsiam_b1of4", budget=0.25, views=100, pretrain_cpu_s=5.0,
               knn_top1=0.31, linear_top1=0.4, summary={})
    text = "\n".join(report_text.fig4({"rows": {"f": row}, "speedup": {"AP/views": s}}, "lowdata"))
    assert "no factor can be read" in text and "x sooner" not in text
    # a share under 1% of the draws is printed as such, not rounded to "0%" beside a refusal
    rare = {**s, "at_start": 0.006}
    text = "\n".join(report_text.fig4({"rows": {"f": row}, "speedup": {"AP/views": rare}}, "lowdata"))
    assert "in 0.6% of the bootstrap draws" in text


def test_fig4_reads_cpu_time_within_one_cpu_model(tmp_path):
    """A share run on another machine (FastSiam's full budget timed on a Xeon, the rest on an EPYC): the
    views factor uses every run, the CPU-time factor and panels only those timed on SimSiam's target run's
    CPU, and the page names the run left out instead of mixing CPU seconds of two models."""
    from tools.study import plots, report, report_text

    def run(method, budget, views, cpu_s, cpu, knn):
        return dict(method=method, k=None, run=f"{method}_{views}", budget=budget, views=views,
                    pretrain_cpu_s=cpu_s, pretrain_cpu=cpu, knn_top1=knn, linear_top1=knn, summary={},
                    det={}, eval_test_images=5000)

    rows = {
        "random": run("random", 0, 0, None, None, 0.27),
        "simsiam_400": run("simsiam", 1.0, 400, 400.0, "EPYC", 0.38),
        "fastsiam_100": run("fastsiam", 0.25, 100, 100.0, "EPYC", 0.33),
        "fastsiam_200": run("fastsiam", 0.5, 200, 200.0, "EPYC", 0.36),
        "fastsiam_400": run("fastsiam", 1.0, 400, 250.0, "Xeon", 0.40),
    }
    assert report.reference_cpu(rows) == "EPYC"
    s = report.speedups(rows, "lowdata", {}, report.reference_cpu(rows))
    views, cpu = s["knn_top1/views"], s["knn_top1/cpu_s"]
    assert views["factor"] > 1 and "other_cpu" not in views  # reached between 200 and 400 views
    assert cpu["factor"] == 0 and cpu["below"] == 2.0 and cpu["other_cpu"] == ["fastsiam_400 (Xeon)"]
    res = {"rows": rows, "speedup": s, "timed_on": report.timed_on(rows), "reference_cpu": "EPYC",
           "main_instrument": "lowdata", "preset": "full"}
    on_epyc = ["simsiam_400", "fastsiam_100", "fastsiam_200"]
    assert res["timed_on"] == {"EPYC": on_epyc, "Xeon": ["fastsiam_400"]}
    text = "\n".join(report_text.fig4(res, "lowdata"))
    assert "EPYC: simsiam_400, fastsiam_100, fastsiam_200; Xeon: fastsiam_400" in text
    assert "(pretraining CPU time on EPYC, without fastsiam_400 (Xeon))" in text
    plots.fig4(res, tmp_path / "fig4.png")
    assert (tmp_path / "fig4.png").stat().st_size > 0


def test_cpu_time_factor_needs_simsiams_target_run_timed_on_a_known_cpu():
    """SimSiam's target run timed before the CPU model was recorded: its seconds may come from any machine,
    even beside a FastSiam run whose CPU is not recorded either, so no CPU-time factor is read against them
    (the views factor still is), and the panels fall back to the most used CPU model."""
    from tools.study import report

    def run(method, budget, views, cpu):
        return dict(method=method, k=None, run=f"{method}_{views}", budget=budget, views=views,
                    pretrain_cpu_s=float(views), pretrain_cpu=cpu, knn_top1=0.3 + views / 4000,
                    linear_top1=0.3, summary={}, det={}, eval_test_images=5000)

    rows = {"random": run("random", 0, 0, None), "simsiam_400": run("simsiam", 1.0, 400, None),
            "fastsiam_100": run("fastsiam", 0.25, 100, None),
            "fastsiam_200": run("fastsiam", 0.5, 200, "EPYC"),
            "fastsiam_300": run("fastsiam", 0.75, 300, "EPYC")}
    rows["random"]["pretrain_cpu_s"] = None
    cpu = report.reference_cpu(rows)
    assert cpu == "EPYC"
    s = report.speedups(rows, "lowdata", {}, cpu)
    assert "mixed_cpus" in s["knn_top1/cpu_s"] and "factor" in s["knn_top1/views"]


def test_run_record_names_the_cpu_models_the_jobs_were_timed_on():
    """Imported shares from another machine: the page counts jobs per CPU model, not only the machine it was
    written on."""
    from tools.study.report_text import jobs_per_cpu

    jobs = {"a": {"cpu": "EPYC"}, "b": {"cpu": "EPYC"}, "c": {"cpu": "Xeon"}}
    assert jobs_per_cpu(jobs) == "Jobs per CPU model (shares ran on different machines): EPYC: 2, Xeon: 1."
    assert jobs_per_cpu({"a": {"cpu": "EPYC"}}) == "All 1 jobs were timed on EPYC."


def test_fig5_names_the_cpu_models_when_its_shares_ran_on_two_machines():
    """Fig. 5's K = 1, 2 share timed on one machine and K = 3, 4 on another: its CPU-seconds column does not
    compare across them, so the page says which K was timed where; on one machine it says nothing."""
    from tools.study import report_text

    def run(k, cpu):
        return dict(method="fastsiam", k=k, run=f"k{k}", views=288, pretrain_cpu_s=100.0 + k,
                    pretrain_cpu=cpu, knn_top1=0.3, linear_top1=0.4, summary={}, det={})

    rows = {f"k{k}": run(k, "Xeon" if k < 3 else "EPYC") for k in (1, 2, 3, 4)}
    settings = {"fig5": dict(views_per_batch=120, views_per_image=60, lr=0.125, images=4800)}
    timed = {"Xeon": ["k1", "k2", "other"], "EPYC": ["k3", "k4"]}
    res = {"rows": rows, "settings": settings, "timed_on": timed}
    text = "\n".join(report_text.fig5(res, "lowdata"))
    assert "timed on Xeon: k1, k2; EPYC: k3, k4." in text and "precision" not in text
    res["timed_on"] = {"Xeon (amx_bf16)": ["k1", "k2"], "EPYC (no bf16)": ["k3", "k4"]}
    text = "\n".join(report_text.fig5(res, "lowdata"))
    assert "EPYC (no bf16): k3, k4." in text and "differ in precision" in text
    res["timed_on"] = {"Xeon": ["k1", "k2", "k3", "k4"], "EPYC": ["other"]}
    assert "CPU model" not in "\n".join(report_text.fig5(res, "lowdata"))


def test_a_resumed_job_records_every_cpu_model_its_seconds_came_from(tmp_path):
    """A job resumed on another machine, or after an attempt timed before jobs.py stored the CPU model, sums
    seconds of two machines: its record says so, so Fig. 4 does not read them as one model's."""
    import sys

    from tools.study import jobs

    def job(name):
        mark = tmp_path / name
        return jobs.Job(name, done=mark.exists, cmd=[sys.executable, "-c", f"open({str(mark)!r}, 'w')"],
                        stage="convert")

    timings = {
        "elsewhere": {"stage": "convert", "wall_s": 5.0, "cpu_s": 4.0, "attempts": 1, "cpu": "Other CPU"},
        "unrecorded": {"stage": "convert", "wall_s": 5.0, "cpu_s": 4.0},
        "here": {"stage": "convert", "wall_s": 5.0, "cpu_s": 4.0, "attempts": 1, "cpu": cpu.this_cpu()},
    }
    assert jobs.run_jobs([job(n) for n in (*timings, "new")], tmp_path, 2, timings) == []
    assert timings["elsewhere"]["cpu"] == f"Other CPU + {cpu.this_cpu()}"
    assert timings["unrecorded"]["cpu"] == f"not recorded + {cpu.this_cpu()}"
    assert timings["here"]["cpu"] == timings["new"]["cpu"] == cpu.this_cpu()
    assert timings["unrecorded"]["cpu_s"] >= 4.0 and timings["new"]["attempts"] == 1


def test_top1_bars_show_the_test_set_noise():
    """Fig. 4's and Fig. 5's kNN points carry the binomial std of a top-1 on the finite test set, so two
    points 0.2 apart on 5,000 images are drawn within each other's bars, not as a difference."""
    from tools.study import plots

    mean, std = plots._score({"knn_top1": 0.4, "eval_test_images": 5000}, "knn_top1", "lowdata")
    assert mean == 40.0 and abs(std - 100 * math.sqrt(0.4 * 0.6 / 5000)) < 1e-9
    assert plots._score({"knn_top1": 0.4, "eval_test_images": None}, "knn_top1", "lowdata") == (40.0, 0.0)


def test_the_cpu_model_names_its_native_bf16_units(tmp_path):
    """Two virtual CPUs both called 'AMD EPYC', one with AVX512-BF16 and one without, pretrain in bf16 and
    fp32 (amp: auto) at different CPU seconds: their CPU time must not be read as one model's."""
    def info(flags):
        f = tmp_path / f"cpuinfo_{len(flags)}"
        block = "processor\t: {}\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 " + flags + "\n\n"
        f.write_text("".join(block.format(i) for i in range(2)))
        return str(f)

    with_bf16, without = cpu.cpu_model(info("avx512f avx512_bf16")), cpu.cpu_model(info("avx512f"))
    assert with_bf16 == "AMD EPYC (avx512_bf16)" and without == "AMD EPYC (no bf16)"
    assert cpu.cpu_model(info("amx_bf16 avx512_bf16")) == "AMD EPYC (amx_bf16, avx512_bf16)"
    absent = str(tmp_path / "absent")  # no /proc/cpuinfo: the platform's name; amp: auto is fp32
    assert cpu.cpu_model(absent) == f"{precision.cpu_name(absent)} (no bf16)"


def test_a_cpu_without_bf16_units_is_told_it_pretrains_in_fp32():
    from tools.study import jobs
    from tools.study.plan import fp32_note

    todo = [jobs.Job("pretrain k3", done=lambda: False, stage="pretrain"),
            jobs.Job("det k3", done=lambda: False, stage="transfer")]
    note = fp32_note(todo, "cpu", bf16_units=[])
    assert note is not None and "fp32" in note and cpu.this_cpu() in note
    assert fp32_note(todo, "cpu", bf16_units=["amx_bf16"]) is None  # pretrains in bf16, as the record did
    assert fp32_note(todo, "cuda", bf16_units=[]) is None
    assert fp32_note(todo[1:], "cpu", bf16_units=[]) is None  # nothing to pretrain: detection is fp32
    done = [jobs.Job("pretrain k3", done=lambda: True, stage="pretrain")]
    assert fp32_note(done, "cpu", bf16_units=[]) is None


def test_a_job_run_again_after_a_finished_run_is_timed_on_its_own(tmp_path):
    """A share that imported the record pretrains a row again (checkpoints are not carried): the new run's
    seconds are its own, not added to the finished run's, or the row's pretraining CPU time would double."""
    import sys

    from tools.study import jobs

    mark = tmp_path / "ckpt"
    again = jobs.Job("pretrain supervised", done=mark.exists,
                     cmd=[sys.executable, "-c", f"open({str(mark)!r}, 'w')"], stage="pretrain")
    first = {"stage": "pretrain", "wall_s": 3575.6, "cpu_s": 2264.5, "attempts": 1, "cpu": "Xeon",
             "finished": 1796202101.4}
    timings = {"pretrain supervised": dict(first)}
    assert jobs.run_jobs([again], tmp_path, 1, timings) == []
    t = timings["pretrain supervised"]
    assert t["cpu"] == cpu.this_cpu() and t["attempts"] == 1 and t["cpu_s"] < 100 and t["finished"]
    assert t["earlier"] == [first]
    mark.unlink()  # and once more: every earlier run is kept, flat
    assert jobs.run_jobs([again], tmp_path, 1, timings) == []
    assert [e["cpu_s"] for e in timings["pretrain supervised"]["earlier"]] == [2264.5, t["cpu_s"]]


def test_the_report_reads_cpu_labels_without_the_scheduler():
    """docs/study.md is regenerated from results on disk: writing it must not import the job runner
    (tools/study/jobs.py), which reads this machine's CPU and starts subprocesses."""
    import subprocess
    import sys

    probe = "import sys, tools.study.report; print('tools.study.jobs' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_fig5_reports_every_pair_of_k_with_its_interval():
    """The prose on Fig. 5 rests on differences between K: the report computes them from the record (every
    pair, larger K - smaller K; Welch over seeds for AP, two proportions for top-1) and prints them."""
    from tools.study import report, report_text

    def run(k, aps, knn):
        det = {"lowdata": {str(i): {"bbox": {"AP": a}, "segm": {"AP": a}} for i, a in enumerate(aps)}}
        return dict(method="fastsiam", k=k, run=f"k{k}", views=288, pretrain_cpu_s=100.0, pretrain_cpu="EPYC",
                    knn_top1=knn, linear_top1=0.5, eval_test_images=5000, summary={}, det=det)

    rows = {"k1": run(1, [15.0, 16.0, 17.0], 0.40), "k3": run(3, [17.0, 18.0, 19.0], 0.42),
            "k2": run(2, [16.0, 16.5, 17.0], 0.41)}
    rows["simsiam"] = {**run(None, [1.0, 2.0], 0.3), "method": "simsiam"}  # not a K row
    pairs = report.k_differences(rows, "lowdata")
    assert [(d["k"], d["minus_k"]) for d in pairs] == [(2, 1), (3, 1), (3, 2)]
    d31 = pairs[1]
    assert d31["AP"]["lowdata"] == stats.difference([17.0, 18.0, 19.0], [15.0, 16.0, 17.0])
    half = 1.96 * math.sqrt(stats.top1_var(0.42, 5000) + stats.top1_var(0.40, 5000))
    assert d31["knn_top1"]["ci95"] == pytest.approx([0.02 - half, 0.02 + half])
    settings = {"fig5": dict(views_per_batch=120, views_per_image=60, lr=0.125, images=4800)}
    res = {"rows": rows, "settings": settings, "k_differences": pairs}
    text = "\n".join(report_text.fig5(res, "lowdata"))
    lo, hi = d31["AP"]["lowdata"]["ci95"]
    assert f"| 3 - 1 | +2.00 [{lo:+.2f}, {hi:+.2f}] | +2.00 [{100 * (0.02 - half):+.2f}," in text
    # a record written before the report computed the pairs still renders, without the table
    assert "K - K" not in "\n".join(report_text.fig5({"rows": rows, "settings": settings}, "lowdata"))
