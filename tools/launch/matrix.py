"""The matrix: (weights x protocol x seed) cells planned into a runs tree, and run by a launcher.

`python -m tools.launch` and `python -m tools.benchmark` are its command lines; both plan with `plan` and run
with `run`, so a rerun skips the cells whose results.json exists and resumes a cell cut off mid-training.
"""
from __future__ import annotations

import os
from pathlib import Path

from pretrain.request import UsageError
from tools.launch import local, slurm
from tools.launch.cell import Cell

RANDOM = "random"
WEIGHT_SUFFIXES = (".pth", ".pkl")
REPO = Path(__file__).resolve().parents[2]


def random_config(cfg: Path) -> Path:
    """X.yaml -> X_random.yaml; X_instant.yaml -> X_random_instant.yaml, X_instant_random.yaml or itself."""
    stem = cfg.stem
    candidates = [cfg.with_name(f"{stem}_random{cfg.suffix}")]
    if stem.endswith("_instant"):
        candidates.insert(0, cfg.with_name(f"{stem[:-len('_instant')]}_random_instant{cfg.suffix}"))
    for c in candidates:
        if c.is_file():
            return c
    if stem.endswith("_instant"):  # toy configs start from random init unless MODEL.WEIGHTS is given
        return cfg
    raise UsageError(f"no random-init config for {cfg} (looked for {', '.join(str(c) for c in candidates)})")


def parse_weights(pairs: list[str], weights_dir: Path | None, random: bool) -> dict[str, Path | None]:
    """NAME=PATH pairs and/or every .pth/.pkl in a directory (name = file stem); `random` maps to None."""
    weights: dict[str, Path | None] = {}
    if weights_dir is not None:
        if not weights_dir.is_dir():
            raise UsageError(f"weights directory not found: {weights_dir}")
        for p in sorted(weights_dir.iterdir()):
            if p.suffix in WEIGHT_SUFFIXES and p.is_file():
                if p.stem == RANDOM:
                    raise UsageError(f"{p}: 'random' is the from-scratch row and takes no weights file")
                if p.stem in weights:
                    raise UsageError(f"two weights files named {p.stem!r} in {weights_dir}")
                weights[p.stem] = p.resolve()
    for pair in pairs:
        if pair == RANDOM:
            random = True
            continue
        name, sep, path = pair.partition("=")
        if not sep or not name or not path or "/" in name:
            raise UsageError(f"bad --weights entry {pair!r}: expected NAME=PATH (or 'random')")
        if name == RANDOM:
            raise UsageError("the 'random' row takes no weights file: pass --random")
        if not Path(path).is_file():
            raise UsageError(f"weights file not found: {path}")
        weights[name] = Path(path).resolve()
    if random:
        weights[RANDOM] = None
    if not weights:
        raise UsageError("no weights given: use --weights NAME=PATH, --weights-dir DIR or --random")
    return weights


def plan(weights: dict[str, Path | None], configs: list[Path], seeds: list[int], runs: Path) -> list[Cell]:
    for cfg in configs:
        if not cfg.is_file():
            raise UsageError(f"config not found: {cfg}")
    cells = []
    for name, path in weights.items():
        for cfg in configs:
            cfg_used = random_config(cfg) if path is None else cfg
            for seed in seeds:
                cells.append(Cell(name, path, cfg_used, seed, runs / name / cfg_used.stem / f"seed{seed}"))
    return cells


def run(todo: list[Cell], launcher: str, trainer: list[str], extra: list[str], *, jobs: int = 1,
        num_gpus: int | None = None, res=None, dry_run: bool = False) -> list[Cell]:
    """Run (or, with dry_run, print) the cells left to run with `launcher` (local, slurm, submitit-local);
    returns the cells that failed."""
    if launcher == "local":
        # `-m transfer.train_net` must import from this checkout whatever the working directory
        pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        env = dict(os.environ, PYTHONPATH=pythonpath)
        flags = [] if num_gpus is None else ["--num-gpus", str(num_gpus)]
        return local.run(todo, trainer, flags, extra, env, dry_run, jobs)
    return slurm.submit(todo, trainer, extra, res, launcher, dry_run)
