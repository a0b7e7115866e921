"""kNN and linear-probe evaluation of any ResNet checkpoint transfer.convert reads (python -m tools.evaluate).

The package holds the command (`__main__.py`), the backbone built from a checkpoint (`backbone.py`), the
labelled train/val folders and their checks (`folders.py`), feature extraction with its on-disk cache
(`features.py`) and the linear probe on cached features (`linear.py`); the kNN classifier is
pretrain/knn.py's. It imports only pretrain/ and transfer/ (and torch, torchvision, tqdm), never another
tools module, so the tools/ tree can be reorganised around it. Usage and ImageNet-scale advice:
docs/evaluate.md.
"""


class EvalError(Exception):
    """A bad input (checkpoint, folders, options); the message is one line for the user, exit status 2."""
