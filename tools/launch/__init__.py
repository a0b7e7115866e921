"""How tools/run_matrix.py and tools/benchmark.py run their cells: matrix.py (plan the cells, run them with a
launcher), cell.py (one cell and its trainer command), local.py (one after another as subprocesses on this
machine), slurm.py (one submitit job per cell on Slurm, or through submitit's LocalExecutor; requeue on
preemption; --status)."""
