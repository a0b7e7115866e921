"""What a run was trained and tested on, from OUTPUT_DIR/provenance.json (written by transfer.train_net):

    {"train": [DS, ...], "test": [DS, ...], "mask_format": "polygon" | "bitmask"}
    DS = {"name", "builtin", "json_file", "image_root", "sha256", "images", "classes"}

A run without it (trained before the trainer wrote it) falls back to detectron2's OUTPUT_DIR/config.yaml,
whose DATASETS.TRAIN/TEST name the splits: a name is builtin iff detectron2 registers it itself (BUILTIN). A
run with neither is "not recorded". Only runs whose every dataset is builtin belong under the paper's
captions.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

# The splits detectron2 registers itself under $DETECTRON2_DATASETS for the paper's protocols: COCO 2017
# instances and person keypoints, Cityscapes fine instance segmentation (detectron2 v0.6,
# detectron2/data/datasets/builtin.py: _PREDEFINED_SPLITS_COCO, _RAW_CITYSCAPES_SPLITS).
BUILTIN = frozenset({
    "coco_2017_train", "coco_2017_val", "coco_2017_test", "coco_2017_test-dev", "coco_2017_val_100",
    "keypoints_coco_2017_train", "keypoints_coco_2017_val", "keypoints_coco_2017_val_100",
    "cityscapes_fine_instance_seg_train", "cityscapes_fine_instance_seg_val",
    "cityscapes_fine_instance_seg_test",
})
PROVENANCE = "provenance.json"
NOT_RECORDED = "not recorded"


@dataclass(frozen=True)
class Dataset:
    name: str
    builtin: bool
    json_file: str | None = None
    image_root: str | None = None
    sha256: str | None = None
    images: int | None = None
    classes: int | None = None

    def describe(self) -> str:
        """NAME [N images, sha256 0123456789ab...] (what is known of it)."""
        facts = [f"{self.images} images"] if self.images is not None else []
        facts += [f"sha256 {self.sha256[:12]}..."] if self.sha256 else []
        return self.name + (f" [{', '.join(facts)}]" if facts else "")


@dataclass(frozen=True)
class Data:
    train: tuple[Dataset, ...]
    test: tuple[Dataset, ...]
    source: str  # "provenance.json", "config.yaml" or NOT_RECORDED

    @property
    def builtin(self) -> bool:
        """Every dataset is a detectron2 builtin split (an eval-only run may have no train set)."""
        both = self.train + self.test
        return self.source != NOT_RECORDED and bool(self.test) and all(d.builtin for d in both)

    @property
    def identity(self) -> tuple:
        """Runs with equal identities were trained and tested on the same data (as far as it was recorded)."""
        return (self.source == NOT_RECORDED, tuple((d.name, d.sha256) for d in self.train),
                tuple((d.name, d.sha256) for d in self.test))

    def describe(self) -> str:
        if self.source == NOT_RECORDED:
            return "data not recorded: the run has neither provenance.json nor config.yaml"
        parts = [f"{split}: " + (" + ".join(d.describe() for d in sets) or "none")
                 for split, sets in (("train", self.train), ("test", self.test))]
        return ", ".join(parts) + ("" if self.source == PROVENANCE else f" (names from {self.source})")


def _dataset(d) -> Dataset:
    if not isinstance(d, dict) or not isinstance(d.get("name"), str):
        raise ValueError("a dataset entry without a name")
    ints = {k: d.get(k) if isinstance(d.get(k), int) and not isinstance(d.get(k), bool) else None
            for k in ("images", "classes")}
    # the trainer marks every split it did not read from --dataset-* builtin (an LVIS split too): only the
    # paper's splits count as the paper's data
    builtin = d.get("builtin") is True and d["name"] in BUILTIN
    return Dataset(d["name"], builtin, d.get("json_file"), d.get("image_root"),
                   d.get("sha256"), **ints)


def from_provenance(path: Path) -> Data:
    with open(path) as f:
        p = json.load(f)
    if not isinstance(p, dict) or not all(isinstance(p.get(k), list) for k in ("train", "test")):
        raise ValueError("expected {'train': [...], 'test': [...]}")
    return Data(tuple(map(_dataset, p["train"])), tuple(map(_dataset, p["test"])), PROVENANCE)


def from_config(path: Path) -> Data:
    cfg = yaml.safe_load(path.read_text())
    ds = cfg.get("DATASETS", {}) if isinstance(cfg, dict) else {}
    names = {k: [str(n) for n in (ds.get(k) or [])] for k in ("TRAIN", "TEST")}
    return Data(*(tuple(Dataset(n, n in BUILTIN) for n in names[k]) for k in ("TRAIN", "TEST")),
                source="config.yaml")


def read(out_dir: Path, warn=None) -> Data:
    """The data of the run in out_dir: provenance.json, else config.yaml's dataset names, else not recorded.
    An unreadable file is warned about (by path) and counts as absent."""
    for name, reader in ((PROVENANCE, from_provenance), ("config.yaml", from_config)):
        path = Path(out_dir) / name
        if path.is_file():
            try:
                return reader(path)
            except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError, AttributeError) as e:
                if warn:
                    warn(f"ignoring unreadable {path}: {e}")
    return Data((), (), NOT_RECORDED)
