"""The small-scale study (docs/study.md): CIFAR-10 pretraining of each row, then Mask R-CNN on CIFAR-10
scenes and kNN, `python -m tools.study`. rows.py defines the presets and rows, supervised.py the supervised
row's pretraining, knn_eval.py the kNN stage, report.py study.md and its figure from the runs on disk.

Imports pretrain/, tools.data (scenes, subsets) and tools.figures.plotting; report.py and the stages never
import the command line (__main__.py).
"""
