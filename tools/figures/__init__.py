"""The paper's figures from runs and checkpoints on disk: Fig. 2 (target stability), Fig. 4 (cost),
Fig. 5 (views), Fig. 6 (activations), Fig. 7 (views of an image), each `python -m tools.figures.figN_...`.

plotting.py holds what they share (matplotlib set-up, figure saving, the runs tree through tools.results).
Imports pretrain/ and tools.results only.
"""
