"""Data the other tools make or fetch: CIFAR-10 as image folders (`python -m tools.data.cifar10`), synthetic
COCO-format detection data under detectron2's builtin names (`python -m tools.data.detection`), the study's
COCO-format scenes of CIFAR-10 objects (`python -m tools.data.scenes`), class-balanced subsets and their
folders (subsets.py), and photo-like JPEGs for the speed benchmarks (jpegs.py).

Imports pretrain/ only: every other tools package may use it, it uses none of them.
"""
