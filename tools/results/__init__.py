"""The one model every tool reads: the runs tree (runs.py), what each run was trained and tested on
(provenance.py), statistics over seeds (stats.py), the paper's numbers (paper.py) and atomic writes of what
the tools derive from them (output.py)."""
