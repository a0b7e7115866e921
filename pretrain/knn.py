"""Weighted kNN classification on frozen backbone features: the SSL monitor and the CIFAR-10 proxy evaluation.

The classifier of Wu et al. (InstDisc, CVPR 2018), as used by lightly's and solo-learn's benchmarks: each
test feature votes with its k nearest training features under cosine similarity s, neighbour i weighted by
exp(s_i / t), and the class with the largest summed weight wins. Defaults k=200, t=0.1.

    acc = evaluate_knn(model.backbone, "data/cifar10/train", "data/cifar10/test", image_size=32, device="cpu")

evaluate_knn streams both folders: a DataLoader decodes one batch at a time and only the features (M x D
float32; ImageNet-1k at D = 2048: 10 GB) are kept, so knn_train can be a large folder.

Lower-level pieces: list_labelled(dir) -> paths, labels, classes; folder_features(backbone, paths, size,
device) -> N x D (streamed); knn_scores / knn_predict on features. The proxy benchmark, whose CIFAR-10 images
fit in memory (150 MB), decodes them once with load_images(paths, size) -> uint8 N x 3 x S x S and reuses them
for every checkpoint through extract_features(backbone, images, device) -> N x D.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as TF

from pretrain.augment import IMAGENET_MEAN, IMAGENET_STD

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".tif", ".tiff"}


# ============ the classifier ============

def knn_scores(features: Tensor, bank: Tensor, bank_labels: Tensor, num_classes: int, k: int = 200,
               t: float = 0.1, chunk: int = 1024) -> Tensor:
    """Class scores N x C: sum over the k most cosine-similar bank entries of exp(sim / t), per class.

    features: N x D, bank: M x D (normalised here, any scale is fine), bank_labels: M int. Queries go in
    chunks so the N x M similarity matrix never exists at once (10,000 x 50,000 floats would be 2 GB).
    """
    features = F.normalize(features.float(), dim=1)
    bank = F.normalize(bank.float(), dim=1)
    bank_labels = bank_labels.to(bank.device)
    k = min(k, bank.shape[0])
    scores = []
    for q in features.split(chunk):
        sim = q @ bank.T  # n x M cosine similarities
        top_sim, top_idx = sim.topk(k, dim=1)  # n x k
        weights = (top_sim / t).exp()  # InstDisc weighting; cos <= 1, so no float32 overflow while t > 0.012
        votes = torch.zeros(q.shape[0], num_classes, device=q.device)  # n x C
        votes.scatter_add_(1, bank_labels[top_idx], weights)
        scores.append(votes)
    return torch.cat(scores) if scores else torch.zeros(0, num_classes, device=features.device)


def knn_predict(features: Tensor, bank: Tensor, bank_labels: Tensor, num_classes: int, k: int = 200,
                t: float = 0.1) -> Tensor:
    """Predicted class per query (int64 N): argmax of knn_scores."""
    return knn_scores(features, bank, bank_labels, num_classes, k, t).argmax(dim=1)


# ============ images and features ============

def list_labelled(root: str | Path, classes: list[str] | None = None) -> tuple[list[Path], Tensor, list[str]]:
    """ImageFolder layout ROOT/<class>/<image>.

    `classes` fixes the label order (the val set uses the train classes)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"kNN folder not found: {root}")
    found = sorted(d.name for d in root.iterdir() if d.is_dir())
    classes = found if classes is None else classes
    unknown = set(found) - set(classes)
    if unknown:
        raise ValueError(f"{root}: classes {sorted(unknown)} are not in the training classes")
    paths, labels = [], []
    for label, name in enumerate(classes):
        folder = root / name
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise ValueError(f"{root}: no images found in class folders")
    return paths, torch.tensor(labels, dtype=torch.int64), classes


def load_image(path: Path, size: int) -> Tensor:
    """uint8 3 x size x size: shorter side resized to `size` (antialiased), centre crop; CIFAR 32 px as is."""
    with Image.open(path) as im:
        img = TF.pil_to_tensor(im.convert("RGB"))
    if min(img.shape[1:]) != size:
        img = TF.resize(img, size, antialias=True)
    return TF.center_crop(img, size)


class _Images(torch.utils.data.Dataset):  # only so that workers > 0 can decode in parallel
    def __init__(self, paths: list[Path], size: int):
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Tensor:
        return load_image(self.paths[i], self.size)


def _loader(paths: list[Path], size: int, batch_size: int, workers: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(_Images(paths, size), batch_size=batch_size, num_workers=workers)


def load_images(paths: list[Path], size: int, batch_size: int = 256, workers: int = 0) -> Tensor:
    """All images decoded into one uint8 N x 3 x S x S tensor (CIFAR-10 train: 150 MB; ImageNet: too big)."""
    return torch.cat(list(_loader(paths, size, batch_size, workers)))


@torch.no_grad()
def extract_features(backbone: nn.Module, images: Tensor | Iterable[Tensor], device: str | torch.device,
                     batch_size: int = 256) -> Tensor:
    """Backbone features N x D (float32, on `device`) in eval mode, of uint8 images: one N x 3 x S x S tensor
    (cut into `batch_size` batches) or an iterable of B x 3 x S x S batches (e.g. a DataLoader, consumed as it
    decodes, so no more than its prefetched batches are ever decoded at once).

    The backbone's train/eval mode is restored afterwards, so the pretraining loop can call this mid-epoch.
    """
    device = torch.device(device)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255
    batches = images.split(batch_size) if isinstance(images, Tensor) else images
    was_training = backbone.training
    backbone.eval()
    cuda = device.type == "cuda"
    out = []
    try:
        for batch in batches:
            x = (batch.to(device, non_blocking=True).float() - mean) / std  # B x 3 x S x S
            # channels_last input: ~1.5x faster ResNet inference on CPU too (oneDNN), measured here at 32 px
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                out.append(backbone(x).float())
    finally:
        backbone.train(was_training)
    return torch.cat(out)


def folder_features(backbone: nn.Module, paths: list[Path], size: int, device, batch_size: int = 256,
                    workers: int = 0) -> Tensor:
    """Features N x D of the images at `paths`, decoded batch by batch as the backbone consumes them."""
    return extract_features(backbone, _loader(paths, size, batch_size, workers), device)


def evaluate_knn(backbone: nn.Module, train_dir: str, val_dir: str, image_size: int, device, k: int = 200,
                 t: float = 0.1, batch_size: int = 256, workers: int = 0) -> float:
    """Top-1 accuracy in [0, 1] of the weighted kNN classifier: bank = train_dir, queries = val_dir.

    Streamed: images are decoded a batch at a time and dropped once featurised; only features are kept."""
    train_paths, train_labels, classes = list_labelled(train_dir)
    val_paths, val_labels, _ = list_labelled(val_dir, classes)
    bank = folder_features(backbone, train_paths, image_size, device, batch_size, workers)  # M x D
    queries = folder_features(backbone, val_paths, image_size, device, batch_size, workers)  # N x D
    pred = knn_predict(queries, bank, train_labels, len(classes), k, t)
    return (pred.cpu() == val_labels).float().mean().item()
