"""The small-scale study (docs/study.md): CIFAR-10 pretraining runs, then Mask R-CNN on CIFAR-10 scenes under
several detection instruments, and kNN + linear evaluation, `python -m tools.study`. rows.py defines the
presets, runs, rows, instruments and parts; supervised.py the supervised row's pretraining; stats.py the
statistics; report.py the record (study_results.json), report_text.py study.md, plots.py its figures;
plan.py the stages as jobs, jobs.py their runner, carry.py the record's import and cpu.py the CPU-model label
that CPU seconds are recorded under (a leaf, so that the report never imports the runner). compare.py
(`python -m tools.study.compare A B`) sets two records of the same rows side by side: how far a row moves when
its backbone is pretrained again.

Imports pretrain/, tools.data (scenes, subsets) and tools.figures.plotting; the evaluation stage runs
`python -m tools.evaluate` as a subprocess. report.py and the stages never import the command line
(__main__.py).
"""
