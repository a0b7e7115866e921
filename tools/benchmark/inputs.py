"""What the benchmark is given, checked before any cell runs: the data specs, the weights rows, the configs
each row trains with, and that RUNS was not filled on other data."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from pretrain.request import UsageError
from tools.launch.matrix import RANDOM, parse_weights
from transfer import annotations, data_checks
from transfer.annotations import DatasetError

IMAGENET = "imagenet"
DATA_FILE = "benchmark_data.json"  # RUNS/benchmark_data.json: the data RUNS was filled with
SPEC_RE = re.compile(r"^(?P<json>.+?\.json):(?P<image_dir>.+)$")  # as transfer.datasets reads NAME=JSON:DIR


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def parse_data(train: list[str], test: list[str]) -> dict:
    """--train/--test JSON:IMAGE_DIR -> {"train": [DS], "test": [DS]}, DS = {name, json_file, image_root,
    sha256} with absolute paths; names bench_train_<i> / bench_test_<i> for the trainer's --dataset-*."""
    data = {}
    for split, specs in (("train", train), ("test", test)):
        data[split] = []
        for i, spec in enumerate(specs):
            m = SPEC_RE.match(spec)
            if not m:
                raise UsageError(f"bad --{split} {spec!r}: expected ANNOTATIONS.json:IMAGE_DIR")
            json_file, image_dir = Path(m["json"]).resolve(), Path(m["image_dir"]).resolve()
            if not json_file.is_file():
                raise UsageError(f"--{split} {spec}: annotation file not found: {m['json']}")
            if not image_dir.is_dir():
                raise UsageError(f"--{split} {spec}: image directory not found: {m['image_dir']}")
            data[split].append({"name": f"bench_{split}_{i}", "json_file": str(json_file),
                                "image_root": str(image_dir), "sha256": sha256(json_file)})
    check_files(data)
    return data


def check_files(data: dict) -> None:
    """The checks every cell's trainer would make of the files alone (transfer.annotations: the format, and
    every set's categories equal to the first training set's), once, before any cell starts: otherwise each
    cell would fail on them in turn. The checks that depend on the config (masks, keypoints) stay the
    trainer's."""
    summaries = []
    for split in ("train", "test"):
        for d in data[split]:
            try:
                ann, digest = annotations.read(d["json_file"])
                summaries.append(annotations.summarize(d["name"], d["json_file"], d["image_root"], ann,
                                                       digest))
                role = "training set" if split == "train" else "test set"
                data_checks.check_categories(summaries[0], summaries[-1], role)
            except DatasetError as e:
                raise UsageError(f"--{split} {d['json_file']}: {e}") from None


def trainer_flags(data: dict) -> list[str]:
    """--dataset-train NAME=JSON:DIR ... --dataset-test NAME=JSON:DIR: options, so they precede KEY VALUE."""
    return [arg for split in ("train", "test") for d in data[split]
            for arg in (f"--dataset-{split}", f"{d['name']}={d['json_file']}:{d['image_root']}")]


def check_runs_data(runs: Path, data: dict) -> None:
    """A cell with results.json is not run again, so RUNS filled on other data would answer for this data."""
    path = runs / DATA_FILE
    if not path.is_file():
        return
    try:
        before = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UsageError(f"{path} is unreadable ({e}): cannot tell what data {runs} holds") from None
    if before != data:
        raise UsageError(f"{runs} holds a benchmark on other data (see {path}): use another --runs, or "
                         "remove it to start over")


def weights_rows(pairs: list[str], imagenet: str | None, random: bool) -> dict[str, Path | None]:
    """imagenet first (the reference of the differences), then --weights in order, random last."""
    if not pairs and imagenet is None:
        raise UsageError("nothing to benchmark: give --imagenet PATH and/or --weights NAME=PATH")
    rows: dict[str, Path | None] = {}
    if imagenet is not None:
        if not Path(imagenet).is_file():
            raise UsageError(f"--imagenet weights file not found: {imagenet}")
        rows[IMAGENET] = Path(imagenet).resolve()
    others = parse_weights(pairs, None, random) if pairs else ({RANDOM: None} if random else {})
    if IMAGENET in others:
        raise UsageError("the imagenet row is --imagenet PATH, not --weights imagenet=PATH")
    rows.update((k, v) for k, v in others.items() if k != RANDOM)
    if RANDOM in others:
        rows[RANDOM] = None
    return rows


def is_caffe2(path: Path) -> bool:
    """MSRA's Caffe2 ImageNet weights (R-50.pkl, or transfer.imagenet_weights' .pth copy of it), recognised as
    the trainer recognises them (__author__ "Caffe2"), without unpickling anything but numpy arrays."""
    from transfer import convert, imagenet_weights

    if path.suffix == ".pkl":
        try:
            imagenet_weights.read_caffe2(str(path))
            return True
        except convert.ConvertError:  # not Caffe2 (or unreadable: the trainer says why)
            return False
    try:
        ckpt = convert.load_checkpoint(str(path))
    except convert.ConvertError:
        return False
    return isinstance(ckpt, dict) and ckpt.get("__author__") == "Caffe2"


def configs_for(rows: dict, configs: list[Path], caffe2: bool) -> dict[str, list[Path]]:
    """Per row, the config to plan it with for each --config: the config itself (for the random row, plan()
    takes its _random twin); for Caffe2 ImageNet weights its twin in msra/ beside it (BGR, Caffe mean: the
    trainer refuses the torchvision-convention config for them)."""
    stems = [c.stem for c in configs]
    for cfg in configs:
        if not cfg.is_file():
            raise UsageError(f"config not found: {cfg}")
        if cfg.parent.name == "msra":
            raise UsageError(f"{cfg} is an msra/ twin: give the protocol config; the benchmark picks the "
                             "twin itself for Caffe2 --imagenet weights")
        if stems.count(cfg.stem) > 1:
            raise UsageError(f"two --config files named {cfg.name}: their runs would share "
                             f"RUNS/<name>/{cfg.stem}")
    out = {}
    for name, path in rows.items():
        if name == IMAGENET and caffe2:
            twins = [c.parent / "msra" / c.name for c in configs]
            for twin in twins:
                if not twin.is_file():
                    raise UsageError(f"--imagenet {path} is a Caffe2 (MSRA) file, which needs the config's "
                                     f"msra/ twin (BGR, Caffe mean, std 1): {twin} does not exist")
            out[name] = twins
        else:
            out[name] = list(configs)
    return out
