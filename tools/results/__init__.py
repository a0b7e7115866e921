"""The one model every tool reads: the runs tree (runs.py), what each run was trained and tested on
(provenance.py), statistics over seeds (stats.py), the paper's numbers (paper.py, paper_tables.json) and atomic
writes of what the tools derive from them (output.py).

The bottom of tools/: imports no other tools package, so tables, figures, the study and the benchmark share
it without depending on one another.
"""
