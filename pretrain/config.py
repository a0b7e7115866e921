"""Pretraining configuration: a dataclass of every key, a YAML loader and strict typed `key=value` overrides.

Unknown keys, wrong types and unparsable YAML raise `ConfigError` with one line naming the problem; the CLI
turns it into exit status 2 before any work starts. Defaults are the paper's FastSiam run (ResNet-50, batch
32, 4 views, 25 ep).
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass

import yaml


class ConfigError(ValueError):
    """A user's configuration mistake: reported as one line, exit status 2."""


ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101")
CHOICES = {
    "arch": ARCHS,
    "lr_rule": ("fastsiam", "simsiam"),
    "augment": ("fast", "reference"),
    "bn_mode": ("per_view", "joint"),
    "device": ("auto", "cpu", "cuda"),
    "amp": ("auto", "off", "fp32", "bf16", "fp16"),
}


@dataclass
class Config:
    # ---- paths (normally given on the command line) ----
    data: str = ""  # folder of images, searched recursively; labels ignored
    output_dir: str = ""  # checkpoint.pth, log.jsonl, config.yaml, TensorBoard events
    # ---- model ----
    arch: str = "resnet50"  # paper: ResNet-50
    cifar_stem: bool = False  # 3x3 stride-1 conv1 and no max-pool, for 32 px images
    dim: int = 2048  # projector output width (hidden layers: the backbone width, as SimSiam builder.py)
    pred_dim: int = 512  # predictor bottleneck, SimSiam
    # per_view: each view its own BN batch (SimSiam semantics); joint: all V views as one batch (faster)
    bn_mode: str = "per_view"
    # ---- method ----
    num_views: int = 4  # V = K+1; paper: K = 3 target views; 2 = SimSiam
    image_size: int = 224
    crop_scale_min: float = 0.2  # RandomResizedCrop scale (0.2, 1), MoCo v2 / SimSiam
    blur: bool = True
    # fast: uint8 crops on the CPU + batched colour ops on the device; reference: the PIL recipe on the CPU
    augment: str = "fast"
    # ---- optimisation ----
    epochs: int = 25  # paper Sec. 4.1
    batch_size: int = 32  # GLOBAL images per step (all GPUs together); paper: 32 on one GPU
    lr: float | None = None  # None: lr_rule scaling of batch_size
    lr_rule: str = "fastsiam"  # fastsiam: 0.125 * batch / 32 (paper); simsiam: 0.05 * batch / 256
    warmup_epochs: float = 0.0
    fix_pred_lr: bool = True  # SimSiam README's --fix-pred-lr
    momentum: float = 0.9
    weight_decay: float = 1e-4
    # ---- engine ----
    seed: int = 0
    workers: int = 8  # DataLoader processes per GPU
    device: str = "auto"
    # auto: CUDA bf16 where supported, else fp16 + GradScaler; CPU bf16 with AMX/AVX512-BF16, else fp32.
    # off (= fp32), bf16, fp16 (CUDA only) force one. Resolved at start: pretrain/precision.py
    amp: str = "auto"
    channels_last: bool = True  # NHWC on CUDA and in CPU bf16 runs (where it helps); false: never
    compile: bool = False  # torch.compile the model
    sync_bn: bool = False  # SyncBatchNorm under DDP
    max_images: int = 0  # 0 = all; else the first N files of the sorted list (proxy runs)
    max_image_pixels: int = 89_478_485  # larger headers are refused (decompression bombs); PIL's default
    checkpoint_every: int = 0  # also write checkpoint.pth every N iterations (0 = once per epoch)
    save_every_epochs: int = 5  # keep checkpoint_XXXX.pth every N epochs (and at the end)
    log_every: int = 20  # iterations between log.jsonl lines
    collapse_threshold: float = 0.1  # warn when z_std * sqrt(dim) drops below this (1 healthy, 0 collapsed)
    tensorboard: bool = True
    # ---- optional kNN monitor (labelled ImageFolder-style dirs) ----
    knn_train: str | None = None
    knn_val: str | None = None
    knn_every: int = 1  # epochs
    knn_k: int = 200
    knn_t: float = 0.1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_HINTS = typing.get_type_hints(Config)


def _check_value(key: str, value):
    """Return `value` converted to the declared type of `key`, or raise ConfigError."""
    hint = _HINTS[key]
    if key == "amp" and isinstance(value, bool):  # amp was a bool before it had values: true = auto
        return "auto" if value else "off"
    allowed = typing.get_args(hint) or (hint,)
    if value is None:
        if type(None) in allowed:
            return None
        raise ConfigError(f"config key '{key}' may not be null")
    for t in allowed:
        if t is type(None):
            continue
        if t is bool and isinstance(value, bool):
            return value
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if t is float and isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if t is str and isinstance(value, str):
            if key in CHOICES and value not in CHOICES[key]:
                options = ", ".join(CHOICES[key])
                raise ConfigError(f"config key '{key}' must be one of {options}, got '{value}'")
            return value
    names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
    raise ConfigError(f"config key '{key}' must be {names}, got {type(value).__name__} {value!r}")


def apply(cfg: Config, updates: dict, source: str) -> Config:
    for key, value in updates.items():
        if key not in _HINTS:
            raise ConfigError(f"unknown config key '{key}' in {source}")
        setattr(cfg, key, _check_value(key, value))
    return cfg


def parse_override(text: str) -> tuple[str, object]:
    """`key=value` with a YAML value: `epochs=3`, `lr=0.5`, `knn_train=null`, `amp=false`."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # a string that YAML cannot read (e.g. a path with ': ') stays a string
    if _HINTS.get(key.strip()) is str and not isinstance(value, str) and value is not None:
        value = raw  # e.g. data=2024 stays a path
    return key.strip(), value


def load_config(path: str | None, overrides: list[str] = (), **paths) -> Config:
    """YAML file, then `key=value` overrides, then the CLI paths; validates everything before returning."""
    cfg = Config()
    if path is not None:
        try:
            with open(path) as f:
                d = yaml.safe_load(f)
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
        except yaml.YAMLError as e:
            where = getattr(e, "problem_mark", None)
            at = f" (line {where.line + 1})" if where is not None else ""
            raise ConfigError(f"config file {path} is not valid YAML{at}") from None
        if d is None:
            d = {}
        if not isinstance(d, dict):
            raise ConfigError(f"config file {path} must hold a mapping of key: value")
        d.pop("_run", None)  # what a run wrote about itself into its config.yaml (git sha, world size, ...)
        apply(cfg, d, path)
    apply(cfg, dict(parse_override(o) for o in overrides), "command-line overrides")
    apply(cfg, {k: v for k, v in paths.items() if v is not None}, "command line")
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    positive = ("epochs", "batch_size", "image_size", "dim", "pred_dim", "log_every", "knn_every", "knn_k",
                "save_every_epochs")
    for key in positive:
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"config key '{key}' must be positive, got {getattr(cfg, key)}")
    for key in ("workers", "max_images", "checkpoint_every", "warmup_epochs", "weight_decay", "momentum"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"config key '{key}' must be >= 0, got {getattr(cfg, key)}")
    if cfg.num_views < 2:
        raise ConfigError(f"num_views must be at least 2 (V = K+1 with K >= 1), got {cfg.num_views}")
    if not 0 < cfg.crop_scale_min <= 1:
        raise ConfigError(f"crop_scale_min must be in (0, 1], got {cfg.crop_scale_min}")
    if cfg.lr is not None and cfg.lr <= 0:
        raise ConfigError(f"lr must be positive (or null for the lr_rule), got {cfg.lr}")
    if not cfg.data:
        raise ConfigError("no data folder given (--data DIR)")
    if not os.path.isdir(cfg.data):
        raise ConfigError(f"data folder {cfg.data} does not exist or is not a directory")
    if not cfg.output_dir:
        raise ConfigError("no output folder given (--output-dir DIR)")
    if (cfg.knn_train is None) != (cfg.knn_val is None):
        raise ConfigError("the kNN monitor needs both knn_train and knn_val")
    for key in ("knn_train", "knn_val"):
        d = getattr(cfg, key)
        if d is not None and not os.path.isdir(d):
            raise ConfigError(f"{key} folder {d} does not exist or is not a directory")


def base_lr(cfg: Config) -> float:
    """lr for the global batch: paper Sec. 4.1, 0.125 at batch 32 scaled linearly; SimSiam 0.05 x B / 256."""
    if cfg.lr is not None:
        return cfg.lr
    if cfg.lr_rule == "fastsiam":
        return 0.125 * cfg.batch_size / 32
    return 0.05 * cfg.batch_size / 256


def to_yaml(d: dict) -> str:
    return yaml.safe_dump(d, sort_keys=False)


__all__ = ["Config", "ConfigError", "load_config", "parse_override", "base_lr", "to_yaml"]
