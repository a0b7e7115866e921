"""torch.load(weights_only=True) for training checkpoints whose metadata holds library objects.

A converter needs only the tensors, but Lightning, mmengine and several research repositories pickle a few
objects beside them, which torch's safe loader refuses. The names below were read from the code that saves
them; each loads as an inert stand-in (`Record`), never as the library's class or function, so nothing in
the file runs and none of those libraries needs to be installed. Any other name is refused with the reason:
a file that pickles optimizer or scheduler objects (solo-learn's ``static_lr`` hook puts a
``functools.partial`` of a bound method into ``lr_schedulers``) or a callable like ``os.system`` is not
metadata.

Lightning (lightning/pytorch/trainer/connectors/checkpoint_connector.py, dump_checkpoint): hyper_parameters
    is ``dict(hparams)``, or the omegaconf container itself, with its class under ``hparams_type``, when the
    module saved a Hydra config; older Lightning pickled its AttributeDict (a dict subclass: rebuilt as a
    dict) or the run's argparse.Namespace.
mmengine (mmengine/runner/runner.py, save_checkpoint): ``message_hub`` holds HistoryBuffer objects
    (mmengine/logging/history_buffer.py) of numpy arrays.
facebookresearch/dino main_dino.py saves ``args`` and zdaxie/PixPro main_pretrain.py ``opt``, an
    argparse.Namespace; facebookresearch/barlowtwins main.py keeps its LARS filter function in the
    optimizer's param_groups, pickled as ``__main__.exclude_bias_and_norm``.
"""
from __future__ import annotations

import re
import warnings
import zipfile

import torch


class Record:
    """What a metadata object becomes: its pickled arguments and state, kept as plain data, never run."""

    pickled_name = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args, **kwargs):  # the unpickler calls the class; nothing to do
        pass

    def __setstate__(self, state):  # BUILD: keep the state as it is instead of running the class's own code
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.pickled_name}, not rebuilt>"


def _record(name: str) -> type:
    return type(name.rsplit(".", 1)[-1], (Record,), {"pickled_name": name})


def _as_dict(*args) -> dict:
    """defaultdict(factory) comes back as a plain dict (the safe loader fills no other mapping)."""
    return {}


_NUMPY = [f"numpy.{core}.multiarray.{f}" for core in ("core", "_core") for f in ("_reconstruct", "scalar")]
_OMEGACONF = ["omegaconf.dictconfig.DictConfig", "omegaconf.listconfig.ListConfig", "omegaconf.base.Metadata",
              "omegaconf.base.ContainerMetadata"] + [
    f"omegaconf.nodes.{n}" for n in ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode",
                                     "BytesNode", "PathNode")]
# pickled name -> the stand-in the loader gets instead
STAND_INS: dict[str, object] = {
    **{n: _record(n) for n in _OMEGACONF + _NUMPY + [
        "typing.Any", "numpy.ndarray", "numpy.dtype", "argparse.Namespace",
        "mmengine.logging.history_buffer.HistoryBuffer", "__main__.exclude_bias_and_norm"]},
    **{n: dict for n in ("pytorch_lightning.utilities.parsing.AttributeDict",
                         "lightning.fabric.utilities.data.AttributeDict",
                         "lightning_fabric.utilities.data.AttributeDict")},
    "collections.defaultdict": _as_dict,  # omegaconf's containers carry one
    # omegaconf records value types (object_type, key_type): the builtin types themselves are harmless
    **{f"builtins.{t.__name__}": t
       for t in (int, float, str, bool, bytes, list, dict, tuple, set, frozenset)},
}


class LoadError(Exception):
    """The file cannot be loaded safely; the message is one line meant for the user."""


def _torch_load(path: str):
    with warnings.catch_warnings():  # torch warns about pickle protocols of files it then loads fine
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True)


def _refused_global(e: Exception) -> str | None:
    # "Unsupported global: GLOBAL x.y", or "unsupported GLOBAL posix.system whose module posix is blocked"
    found = re.search(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)", str(e))
    if not found:
        return None
    name = found.group(1)
    return name if "." in name else "builtins." + name  # torch drops the "builtins." it reports


def load(path: str) -> tuple[object, list[str]]:
    """(what the file holds, the pickled names loaded as stand-ins). Raises LoadError."""
    try:
        return _torch_load(path), []
    except Exception as e:  # torch raises many types for non-checkpoints and truncated files
        first = e
    if _refused_global(first) is None:
        raise LoadError(_unreadable(path, first)) from None
    if zipfile.is_zipfile(path):  # torch's own scan lists every global at once, without loading tensors
        needed = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    else:  # the legacy format (before torch 1.6, e.g. MoCo's releases): learn the names one refusal at a time
        needed = [_refused_global(first)]
    for _ in range(32):
        unknown = [n for n in needed if n not in STAND_INS]
        if unknown:
            raise LoadError(
                f"{path} holds {_listed(unknown)}, which torch's safe loader (weights_only) refuses and "
                "which is not checkpoint metadata this converter knows; where you trust the file, re-save "
                "only its state dict: torch.save(torch.load(path, weights_only=False)['state_dict'], OUT)")
        try:
            with torch.serialization.safe_globals([(STAND_INS[n], n) for n in needed]):
                return _torch_load(path), needed
        except Exception as e:
            name = _refused_global(e)
            if name is None or name in needed:
                raise LoadError(f"{path}: torch's safe loader cannot rebuild its metadata "
                                f"({_listed(needed)}): {first_line(e)}") from None
            needed.append(name)
    raise LoadError(f"{path} holds too many kinds of pickled objects ({_listed(needed)})")


def _listed(names: list[str], n: int = 4) -> str:
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def first_line(e: BaseException) -> str:
    """The first sentence of an exception's message, short enough for a one-line error."""
    text = (str(e).strip().splitlines() or [""])[0].split(". ")[0][:160]
    return f"{type(e).__name__}: {text}" if text and text != type(e).__name__ else type(e).__name__


def _unreadable(path: str, e: Exception) -> str:
    detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(e))  # torch's reason, after a long preamble
    reason = f"{type(e).__name__}: {detail.group(1).strip()[:160]}" if detail else first_line(e)
    return f"{path} is not a readable PyTorch checkpoint (truncated or another format?): {reason}"
