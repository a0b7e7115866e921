"""What the figure scripts share: headless matplotlib, atomic PNG writes, NAME=DIR pairs, pretraining configs,
downstream AP per weights name, and image loading."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files; never open a window (CI, SSH)
import matplotlib.pyplot as plt
import yaml

from tools.results.paper import load_paper
from tools.results.runs import Run, load_runs
from tools.results.stats import Stat, stat

# task and metric plotted for each protocol unless --metric says otherwise (the paper's headline column)
DEFAULT_METRIC = {"coco_R_50_FPN_1x": "bbox/AP", "coco_R_50_C4_1x": "bbox/AP",
                  "cityscapes_R_50_FPN": "segm/AP",
                  "keypoint_R_50_FPN_2x": "keypoints/AP", "keypoint_R_50_FPN_1x": "keypoints/AP"}

# the panels of the paper's Figs. 4 and 5: COCO with the R50-C4 detector (AP^bb) and Cityscapes (AP^mk)
PAPER_PANELS = ("coco_R_50_C4_1x", "cityscapes_R_50_FPN")


class UsageError(Exception):
    """Bad input from the user: main() prints it on one line and exits with status 2."""


def run_main(main) -> None:
    try:
        sys.exit(main())
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def save_figure(fig, path: Path, dpi: int = 150) -> None:
    """savefig to a temp file beside `path`, then rename: no half-written PNG."""
    path = Path(path)
    if not path.parent.is_dir():
        raise UsageError(f"output directory not found: {path.parent}")
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.png")  # the umask's mode (mkstemp's would be 0600)
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
    print(f"wrote {path}", file=sys.stderr)


@dataclass
class Pretrain:
    name: str  # weights name in the runs tree
    dir: Path
    epochs: float  # from config.yaml, or the @EPOCHS override (for a converted intermediate checkpoint)
    num_views: int
    batch_size: int


def parse_pretrain(pairs: list[str]) -> list[Pretrain]:
    """NAME=DIR[@EPOCHS]: link a weights name of the runs tree to its pretraining output dir (config.yaml)."""
    out = []
    for pair in pairs:
        name, sep, rest = pair.partition("=")
        if not sep or not name or not rest:
            raise UsageError(f"bad --pretrain entry {pair!r}: expected NAME=DIR or NAME=DIR@EPOCHS")
        d, _, ep = rest.partition("@")
        cfg_path = Path(d) / "config.yaml"
        if not cfg_path.is_file():
            raise UsageError(f"{name}: no pretraining config.yaml in {d}")
        try:
            cfg = yaml.safe_load(cfg_path.read_text())
            epochs = float(ep) if ep else float(cfg["epochs"])
            out.append(Pretrain(name, Path(d), epochs, int(cfg["num_views"]), int(cfg["batch_size"])))
        except (yaml.YAMLError, KeyError, TypeError, ValueError) as e:
            raise UsageError(f"{cfg_path}: cannot read epochs/num_views/batch_size ({e!r})") from None
    if not out:
        raise UsageError("no --pretrain NAME=DIR given")
    return out


def metric_for(protocol: str, metric: str | None) -> tuple[str, str]:
    m = metric or DEFAULT_METRIC.get(protocol)
    if not m or "/" not in m:
        raise UsageError(f"give --metric TASK/METRIC (e.g. bbox/AP) for protocol {protocol!r}")
    task, name = m.split("/", 1)
    return task, name


def runs_for(runs_dir: Path) -> list[Run]:
    if not runs_dir.is_dir():
        raise UsageError(f"runs directory not found: {runs_dir}")
    # beside the paper's points only runs on the paper's data (builtin COCO/Cityscapes splits), as the tables
    runs = load_runs(runs_dir, load_paper())
    others = [r for r in runs if not r.data.builtin]
    if others:
        print(f"leaving out {len(others)} runs on other data (tools.tables shows them in tables of their own), "
              f"first: {others[0].path}", file=sys.stderr)
    return [r for r in runs if r.data.builtin]


def downstream(runs: list[Run], weights: str, protocol: str, task: str, name: str, toy: bool) -> Stat | None:
    """Mean/std over seeds of one metric for one weights name and protocol (None if never measured)."""
    mine = [r for r in runs if r.weights == weights and r.protocol == protocol and r.toy == toy]
    return stat(mine, task, name)


def scores_by(runs: list[Run], pretrain: list[Pretrain], protocol: str, task: str, name: str, toy: bool,
              key, point) -> dict:
    """Downstream scores of the pretraining runs: {key(p): [point(p, stat), ...]}; missing ones warned."""
    series: dict = {}
    for p in pretrain:
        s = downstream(runs, p.name, protocol, task, name, toy)
        if s is None:
            print(f"warning: no {task}/{name} for {p.name} on {protocol}", file=sys.stderr)
            continue
        series.setdefault(key(p), []).append(point(p, s))
    return series


def prefer_real(runs: list[Run]) -> tuple[list[Run], bool]:
    """Real runs if there are any, else the `_instant` toy runs (the demo): (runs, toy)."""
    real = [r for r in runs if not r.toy]
    return (real, False) if real else (runs, True)


def load_image(path: str | Path, size: int, crop: bool = True):
    """uint8 3 x H x W. crop: shorter side resized to `size`, centre-cropped to size x size. Otherwise the
    whole image, shrunk (never enlarged) so that its shorter side is at most `size`."""
    import torch
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
    except (OSError, UnidentifiedImageError) as e:
        raise UsageError(f"cannot read image {path}: {e}") from None
    w, h = im.size
    s = size / min(w, h) if crop else min(1.0, size / min(w, h))
    im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR)
    if crop:  # the rounded shorter side is exactly `size`
        left, top = (im.width - size) // 2, (im.height - size) // 2
        im = im.crop((left, top, left + size, top + size))
    hwc = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(im.height, im.width, 3)
    return hwc.permute(2, 0, 1).contiguous()  # 3 x H x W
