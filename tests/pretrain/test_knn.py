import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from pretrain import knn


def naive_knn_scores(features, bank, bank_labels, num_classes, k, t):
    """The slow obvious way: per query, sort all cosine similarities, add exp(s/t) to each neighbour's."""
    scores = []
    for f in features.tolist():
        sims = []
        for j, b in enumerate(bank.tolist()):
            dot = sum(x * y for x, y in zip(f, b, strict=True))
            cos = dot / (math.sqrt(sum(x * x for x in f)) * math.sqrt(sum(y * y for y in b)))
            sims.append((cos, j))
        sims.sort(reverse=True)
        row = [0.0] * num_classes
        for cos, j in sims[:k]:
            row[int(bank_labels[j])] += math.exp(cos / t)
        scores.append(row)
    return torch.tensor(scores)


def test_scores_match_naive_reference():
    g = torch.Generator().manual_seed(0)
    # norms vary: cosine must ignore them
    bank = torch.randn(60, 5, generator=g) * torch.rand(60, 1, generator=g) * 3
    labels = torch.randint(0, 4, (60,), generator=g)
    queries = torch.randn(9, 5, generator=g)
    for k, t in [(7, 0.1), (60, 0.5), (200, 0.1)]:  # k > bank size is clamped to the bank
        got = knn.knn_scores(queries, bank, labels, 4, k=k, t=t, chunk=4)  # chunk < N exercises the split
        want = naive_knn_scores(queries, bank, labels, 4, min(k, 60), t)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        assert torch.equal(knn.knn_predict(queries, bank, labels, 4, k=k, t=t), want.argmax(1))


def test_weighting_lets_close_neighbours_outvote_many_far_ones():
    # 1 bank vector of class 0 identical to the query; 3 of class 1 at cosine 0.5. Unweighted majority says 1;
    # exp(1/0.1) = 22026 > 3 * exp(0.5/0.1) = 445, so the weighted vote says 0.
    q = torch.tensor([[1.0, 0.0]])
    bank = torch.tensor([[1.0, 0.0]] + [[0.5, math.sqrt(0.75)]] * 3)
    labels = torch.tensor([0, 1, 1, 1])
    assert knn.knn_predict(q, bank, labels, 2, k=4, t=0.1).item() == 0
    assert knn.knn_predict(q, bank, labels, 2, k=4, t=100.0).item() == 1  # near-uniform weights: majority


def test_separable_clusters_are_classified_perfectly():
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(5, 16, generator=g) * 4
    train_y = torch.arange(5).repeat_interleave(40)
    test_y = torch.arange(5).repeat_interleave(10)
    train = centres[train_y] + torch.randn(200, 16, generator=g) * 0.3
    test = centres[test_y] + torch.randn(50, 16, generator=g) * 0.3
    # k=40 = one class's worth of neighbours, so a query's votes come from its own cluster
    assert torch.equal(knn.knn_predict(test, train, train_y, 5, k=40), test_y)


def write_tree(root, per_class, colours):
    for c, rgb in colours.items():
        (root / c).mkdir(parents=True)
        rng = np.random.default_rng(abs(hash(c)) % 1000)
        for i in range(per_class):
            # not square
            px = np.clip(np.array(rgb) + rng.normal(0, 10, (40, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(root / c / f"{i}.png")


class MeanColour(nn.Module):
    """A 'backbone' whose features are the mean colour: the expected accuracy is known (colour classes: 1)."""

    def forward(self, x):
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 24, 24)
        return x.mean(dim=(2, 3))


def test_evaluate_knn_on_image_folders(tmp_path):
    colours = {"blue": (20, 40, 220), "green": (30, 200, 40), "red": (220, 30, 30)}
    write_tree(tmp_path / "train", 6, colours)
    write_tree(tmp_path / "val", 3, colours)
    backbone = MeanColour().train()
    acc = knn.evaluate_knn(backbone, str(tmp_path / "train"), str(tmp_path / "val"), image_size=24,
                           device="cpu", k=5, batch_size=4)
    assert acc == 1.0
    assert backbone.training  # mode restored for the pretraining loop

    # labels follow the training classes even when the val folder lacks one, and a foreign class is an error
    paths, labels, classes = knn.list_labelled(tmp_path / "train")
    assert classes == ["blue", "green", "red"] and labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    (tmp_path / "val" / "blue").rename(tmp_path / "val" / "purple")
    with pytest.raises(ValueError, match="purple"):
        knn.list_labelled(tmp_path / "val", classes)


class CountingBackbone(nn.Module):
    """A small random conv net that records, at every forward, how many images had been decoded by then."""

    def __init__(self, decoded):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                                 nn.Flatten())
        self.decoded, self.seen, self.backlog = decoded, 0, []

    def forward(self, x):
        self.backlog.append(self.decoded[0] - self.seen)  # decoded but not yet featurised
        self.seen += x.shape[0]
        return self.net(x)


def test_knn_streams_the_bank_and_gives_the_in_memory_result(tmp_path, monkeypatch):
    colours = {"a": (200, 60, 60), "b": (60, 200, 60), "c": (60, 60, 200), "d": (128, 128, 128)}
    write_tree(tmp_path / "train", 10, colours)
    write_tree(tmp_path / "val", 4, colours)
    paths, labels, classes = knn.list_labelled(tmp_path / "train")
    val_paths, val_labels, _ = knn.list_labelled(tmp_path / "val", classes)

    # the in-memory way (every image decoded first), as evaluate_knn did before it streamed
    ref = CountingBackbone([0])
    bank_ref = knn.extract_features(ref, knn.load_images(paths, 24), "cpu", batch_size=4)
    query_ref = knn.extract_features(ref, knn.load_images(val_paths, 24), "cpu", batch_size=4)
    want = (knn.knn_predict(query_ref, bank_ref, labels, 4, k=5) == val_labels).float().mean().item()

    decoded = [0]
    real_load = knn.load_image

    def counting_load(path, size):
        decoded[0] += 1
        return real_load(path, size)

    monkeypatch.setattr(knn, "load_image", counting_load)
    net = CountingBackbone(decoded)
    bank = knn.folder_features(net, paths, 24, "cpu", batch_size=4)
    assert torch.equal(bank, bank_ref)  # same features, batch for batch
    assert decoded[0] == 40 and max(net.backlog) == 4  # never more than one batch decoded ahead
    acc = knn.evaluate_knn(net, str(tmp_path / "train"), str(tmp_path / "val"), image_size=24, device="cpu",
                           k=5, batch_size=4)
    assert acc == want and max(net.backlog) == 4


def test_load_image_resizes_shorter_side_then_centre_crops(tmp_path):
    px = np.zeros((40, 80, 3), np.uint8)
    px[:, 20:60] = 255  # a white centre band as wide as the crop
    Image.fromarray(px).save(tmp_path / "a.png")
    img = knn.load_image(tmp_path / "a.png", 20)
    assert img.dtype == torch.uint8 and img.shape == (3, 20, 20)
    assert img.float().mean() > 250  # the crop kept the centre (the black sides are gone)
