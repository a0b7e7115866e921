"""How tools/run_matrix.py runs its cells: cell.py (one cell and its trainer command), local.py (one after
another as subprocesses on this machine), slurm.py (one submitit job per cell on Slurm, or through submitit's
LocalExecutor; requeue on preemption; --status)."""
