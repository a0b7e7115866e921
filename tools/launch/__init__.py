"""Every (weights x protocol x seed) transfer cell into a runs tree: `python -m tools.launch` (__main__.py).

matrix.py plans the cells and runs them with a launcher, cell.py is one cell and its trainer command,
local.py runs cells as subprocesses here, slurm.py submits one submitit job per cell (or runs them through
submitit's LocalExecutor; requeue on preemption; --status), options.py holds the launch options and status
report shared with tools.benchmark. Imports pretrain/ (request, jobstate, childjob) only.
"""
