"""One (weights x protocol x seed) cell of the matrix and the trainer command that fills it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class Cell:
    name: str
    weights: Path | None  # None: random init (MODEL.WEIGHTS "")
    config: Path
    seed: int
    out: Path

    @property
    def done(self) -> bool:
        return (self.out / "results.json").is_file()

    def command(self, trainer: list[str], flags: list[str], extra: list[str]) -> list[str]:
        """trainer --config-file CFG [flags] [--resume] OUTPUT_DIR OUT MODEL.WEIGHTS W SEED k [extra].

        --resume is decided now, not when the matrix was planned: a requeued job resumes from the checkpoint
        its previous run left."""
        cmd = [*trainer, "--config-file", str(self.config), *flags]
        if (self.out / "last_checkpoint").exists():  # detectron2 resumes from OUTPUT_DIR's last checkpoint
            cmd.append("--resume")
        cmd += ["OUTPUT_DIR", str(self.out)]
        cmd += ["MODEL.WEIGHTS", "" if self.weights is None else str(self.weights)]
        return cmd + ["SEED", str(self.seed), *extra]
