"""The CIFAR-10 proxy: FastSiam vs SimSiam pretraining for the same views, kNN accuracy along the way.

`python -m tools.proxy`. runs.py plans and launches the pretraining subprocesses, evaluate.py scores their
kept checkpoints into results.json, report.py draws table.md and plot.png from results.json alone. It imports
pretrain/ and tools.data (the subsets), nothing else of tools/.
"""
