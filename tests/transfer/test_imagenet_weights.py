"""The ImageNet baseline command: offline message, hash check, cache reuse, conversion. Nothing is downloaded:
urlopen is replaced in every test, so no test depends on the network."""
import hashlib
import io
import os
import urllib.error

import pytest
import torch
import torchvision

from tests.transfer.test_convert import moco_rename, shape_only_sd
from transfer import imagenet_weights as iw


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty torch hub cache and no network."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(iw.urllib.request, "urlopen", no_network)
    return tmp_path


@pytest.fixture(scope="module")
def fake_file(tmp_path_factory):
    """A file with the real torchvision ResNet-50 layout (fc included) but not torchvision's bytes."""
    path = tmp_path_factory.mktemp("fake") / iw.FILENAME
    torch.save(shape_only_sd("resnet50"), path)
    return str(path), hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_constants_match_torchvision():
    """The URL is torchvision's own IMAGENET1K_V1 entry; the full digest starts with its file-name prefix."""
    assert iw.URL == torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url
    assert iw.URL.endswith("/" + iw.FILENAME)
    assert len(iw.SHA256) == 64 and iw.SHA256.startswith(iw.FILENAME.split("-")[1].split(".")[0])


def test_offline_says_where_to_put_the_file(offline, capsys):
    out = offline / "imagenet.pth"
    assert iw.main([str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: cannot download " + iw.URL)
    assert os.path.join(str(offline / "hub"), "checkpoints", iw.FILENAME) in err and "--from-file" in err
    assert not out.exists()


def test_from_file_rejects_a_file_with_the_wrong_hash(offline, fake_file, capsys):
    out = offline / "imagenet.pth"
    assert iw.main([str(out), "--from-file", fake_file[0]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sha256" in err and "IMAGENET1K_V1" in err
    assert not out.exists()


def test_from_file_missing_and_bad_output_name(offline, fake_file, capsys):
    assert iw.main([str(offline / "x.pth"), "--from-file", str(offline / "nope.pth")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert iw.main([str(offline / "x.pt"), "--from-file", fake_file[0]]) == 2
    assert "must end with" in capsys.readouterr().err
    assert not (offline / "x.pth").exists() and not (offline / "x.pt").exists()


def test_conversion_of_a_hash_checked_file(offline, fake_file):
    """With a hash the test supplies (the test-only parameter), the file goes through the converter."""
    path, digest = fake_file
    s = iw.imagenet_weights(str(offline / "imagenet.pth"), from_file=path, expected_sha256=digest)
    out = torch.load(offline / "imagenet.pth", weights_only=True)
    sd = torch.load(path, weights_only=True)
    assert set(out["model"]) == {moco_rename(k) for k in sd if not k.startswith("fc.")}
    assert s["input_format"] == "torchvision" and s["depth"] == 50 and s["tensors_dropped"] == 2


def test_cached_copy_is_used_without_network(offline, fake_file):
    path, digest = fake_file
    cache = offline / "hub" / "checkpoints" / iw.FILENAME
    cache.parent.mkdir(parents=True)
    cache.write_bytes(open(path, "rb").read())
    s = iw.imagenet_weights(str(offline / "imagenet.pkl"), expected_sha256=digest)
    assert s["source"] == str(cache) and (offline / "imagenet.pkl").is_file()


class _Response(io.BytesIO):
    headers = {"Content-Length": None}


def test_download_checks_the_hash_before_caching(offline, fake_file, monkeypatch):
    path, digest = fake_file
    data = open(path, "rb").read()
    monkeypatch.setattr(iw.urllib.request, "urlopen", lambda url, timeout: _Response(data))
    cache = offline / "hub" / "checkpoints" / iw.FILENAME

    with pytest.raises(iw.ConvertError, match="sha256"):  # the real digest: the fake bytes are refused
        iw.imagenet_weights(str(offline / "a.pth"))
    assert os.listdir(cache.parent) == [] and not (offline / "a.pth").exists()

    iw.imagenet_weights(str(offline / "b.pth"), expected_sha256=digest)
    assert cache.read_bytes() == data and (offline / "b.pth").is_file()
