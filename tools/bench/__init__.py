"""Speed and memory figures (docs/benchmarks.md): the augmentation pipeline per core
(`python -m tools.bench.augment`), the training step by precision and batch norm (`python -m tools.bench.train`)
and gpu.sh, the one script for a GPU machine. They print their figures; no test times anything.

Imports pretrain/ and tools.data (the JPEGs) only.
"""
