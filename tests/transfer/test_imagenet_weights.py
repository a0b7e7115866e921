"""The ImageNet baselines command: detectron2's MSRA R-50 (checked, copied or re-saved, loaded by the msra/
twin configs) and torchvision's IMAGENET1K_V1 (hash check, cache reuse, conversion). Nothing is downloaded:
urlopen is replaced in every test, and the MSRA file is a synthetic Caffe2 pickle of a random ResNet-50."""
import hashlib
import io
import os
import pickle
import urllib.error

import numpy as np
import pytest
import torch
import torchvision

from tests.transfer.conftest import REPO
from tests.transfer.test_convert import moco_rename, random_resnet_sd, shape_only_sd
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
def fake_file(module_tmp):
    """A file with the real torchvision ResNet-50 layout (fc included) but not torchvision's bytes."""
    path = module_tmp("fake") / iw.FILENAME
    torch.save(shape_only_sd("resnet50"), path)
    return str(path), hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_constants_match_torchvision():
    """The URL is torchvision's own IMAGENET1K_V1 entry; the full digest starts with its file-name prefix."""
    assert iw.URL == torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url
    assert iw.URL.endswith("/" + iw.FILENAME)
    assert len(iw.SHA256) == 64 and iw.SHA256.startswith(iw.FILENAME.split("-")[1].split(".")[0])


def test_offline_says_where_to_put_the_file(offline, capsys):
    out = offline / "imagenet.pth"
    assert iw.main([str(out), "--source", "torchvision"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: cannot download " + iw.URL)
    assert os.path.join(str(offline / "hub"), "checkpoints", iw.FILENAME) in err and "--from-file" in err
    assert not out.exists()


def test_from_file_rejects_a_file_with_the_wrong_hash(offline, fake_file, capsys):
    out = offline / "imagenet.pth"
    assert iw.main([str(out), "--source", "torchvision", "--from-file", fake_file[0]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sha256" in err and "IMAGENET1K_V1" in err
    assert not out.exists()


def test_from_file_missing_and_bad_output_name(offline, fake_file, capsys):
    tv = ["--source", "torchvision"]
    assert iw.main([str(offline / "x.pth"), *tv, "--from-file", str(offline / "nope.pth")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert iw.main([str(offline / "x.pth"), *tv, "--from-file", str(offline)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert iw.main([str(offline / "x.pt"), *tv, "--from-file", fake_file[0]]) == 2
    assert "must end with" in capsys.readouterr().err
    assert not (offline / "x.pth").exists() and not (offline / "x.pt").exists()


def test_conversion_of_a_hash_checked_file(offline, fake_file):
    """With a hash the test supplies (the test-only parameter), the file goes through the converter."""
    path, digest = fake_file
    s = iw.torchvision_weights(str(offline / "imagenet.pth"), from_file=path, expected_sha256=digest)
    out = torch.load(offline / "imagenet.pth", weights_only=True)
    sd = torch.load(path, weights_only=True)
    assert set(out["model"]) == {moco_rename(k) for k in sd if not k.startswith("fc.")}
    assert s["input_format"] == "torchvision" and s["depth"] == 50 and s["tensors_dropped"] == 2


def test_cached_copy_is_used_without_network(offline, fake_file):
    path, digest = fake_file
    cache = offline / "hub" / "checkpoints" / iw.FILENAME
    cache.parent.mkdir(parents=True)
    cache.write_bytes(open(path, "rb").read())
    s = iw.torchvision_weights(str(offline / "imagenet.pkl"), expected_sha256=digest)
    assert s["source"] == str(cache) and (offline / "imagenet.pkl").is_file()


class _Response(io.BytesIO):
    headers = {"Content-Length": None}


def test_download_checks_the_hash_before_caching(offline, fake_file, monkeypatch):
    path, digest = fake_file
    data = open(path, "rb").read()
    monkeypatch.setattr(iw.urllib.request, "urlopen", lambda url, timeout: _Response(data))
    cache = offline / "hub" / "checkpoints" / iw.FILENAME

    with pytest.raises(iw.ConvertError, match="sha256"):  # the real digest: the fake bytes are refused
        iw.torchvision_weights(str(offline / "a.pth"))
    assert os.listdir(cache.parent) == [] and not (offline / "a.pth").exists()

    iw.torchvision_weights(str(offline / "b.pth"), expected_sha256=digest)
    assert cache.read_bytes() == data and (offline / "b.pth").is_file()


# ---------------------------------------------------------------- MSRA R-50 (Caffe2)
def caffe2_name(key: str) -> str:
    """torchvision ResNet key -> the MSRA/Detectron Caffe2 name, written out independently of the module:
    layer1.0.bn2.weight -> res2_0_branch2b_bn_s, layer2.0.downsample.0.weight -> res3_0_branch1_w."""
    suffix = {"weight": "w", "bias": "b", "running_mean": "rm", "running_var": "riv"}
    if key == "conv1.weight":
        return "conv1_w"
    if key.startswith("bn1."):
        return "res_conv1_bn_" + {"weight": "s", "bias": "b"}[key.split(".")[1]]
    layer, block, module, *rest = key.split(".")
    prefix = f"res{int(layer[-1]) + 1}_{block}_"
    if module == "downsample":
        branch, part = "branch1", rest[0]
        is_bn, param = part == "1", rest[1]
    else:
        branch, is_bn, param = "branch2" + "abc"[int(module[-1]) - 1], module.startswith("bn"), rest[0]
    if is_bn:
        return prefix + branch + "_bn_" + {"weight": "s", "bias": "b"}[param]
    return prefix + branch + "_" + suffix[param]


def msra_blobs(seed: int = 0) -> tuple[dict, dict]:
    """A random ResNet-50 as the MSRA file holds it: BN folded into scale and bias (no running statistics),
    float32 numpy arrays, plus the stem conv bias and the classifier the real file carries. Returns the blobs
    and {Caffe2 name: torchvision key} for the backbone."""
    sd = random_resnet_sd("resnet50", seed=seed)
    blobs, names = {}, {}
    for key, v in sd.items():
        if key.startswith("fc.") or key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue
        if v.ndim == 1:  # a BN: fold its statistics into the affine, as MSRA's Caffe2 conversion did
            stem = key.rsplit(".", 1)[0]
            scale = sd[stem + ".weight"] / torch.sqrt(sd[stem + ".running_var"] + 1e-5)
            v = scale if key.endswith("weight") else sd[stem + ".bias"] - sd[stem + ".running_mean"] * scale
        blobs[caffe2_name(key)] = v.numpy().astype(np.float32)
        names[caffe2_name(key)] = key
    blobs["conv1_b"] = np.full(64, 1e-9, dtype=np.float32)  # real file: a near-zero stem conv bias
    blobs["fc1000_w"] = np.zeros((1000, 2048), dtype=np.float32)
    blobs["fc1000_b"] = np.zeros(1000, dtype=np.float32)
    return blobs, names


def write_pkl(path, obj) -> str:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the protocol of the Python 2 era file
    return str(path)


@pytest.fixture(scope="module")
def msra(module_tmp):
    tmp = module_tmp("msra")
    blobs, names = msra_blobs()
    zoo = {"model": blobs, "__author__": "Caffe2", "matching_heuristics": True}  # detectron2's zoo layout
    paths = {"zoo": write_pkl(tmp / "R-50.pkl", zoo), "flat": write_pkl(tmp / "R-50-flat.pkl", blobs)}
    # numpy 1 (and the Python 2 era file) name numpy.core where numpy 2 writes numpy._core
    data = open(paths["flat"], "rb").read()
    assert b"numpy._core.multiarray\n" in data
    old = data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    (tmp / "R-50-numpy1.pkl").write_bytes(old)
    return {"blobs": blobs, "names": names, "numpy1": str(tmp / "R-50-numpy1.pkl"), **paths}


def test_caffe2_names_map_to_torchvision_and_cover_resnet50(msra):
    assert {iw.torchvision_key(k) for k in msra["names"]} == set(msra["names"].values())
    assert all(iw.torchvision_key(k) == v for k, v in msra["names"].items())
    assert len(msra["names"]) == 53 * 2 + 53  # 53 convs, 53 folded BNs of two vectors each
    assert iw.torchvision_key("conv1_b") is None and iw.torchvision_key("res2_0_branch2a_b") is None


@pytest.mark.parametrize("layout", ["zoo", "flat", "numpy1"])
def test_msra_pkl_is_checked_then_copied_byte_for_byte(offline, msra, layout, capsys):
    out = offline / "imagenet.pkl"
    assert iw.main([str(out), "--from-file", msra[layout]]) == 0  # --source msra is the default
    assert out.read_bytes() == open(msra[layout], "rb").read()
    assert "configs/transfer/msra" in capsys.readouterr().out


def test_msra_pth_keeps_caffe2_names_and_loads_safely(offline, msra):
    out = offline / "imagenet.pth"
    s = iw.msra_weights(str(out), from_file=msra["zoo"])
    saved = torch.load(out, weights_only=True)  # torch's safe loader: tensors and plain values only
    assert saved["__author__"] == "Caffe2" and saved["matching_heuristics"] is True
    assert set(saved["model"]) == set(msra["names"])  # conv1_b and fc1000_* left out, listed
    for k, v in saved["model"].items():
        assert np.array_equal(v.numpy(), msra["blobs"][k]), k
    assert s["dropped"] == {"fc1000_* (classifier)": 2,
                            "conv biases (detectron2's convs before a norm have none)": 1}


def test_msra_offline_says_where_to_put_the_file(offline, capsys):
    assert iw.main([str(offline / "imagenet.pth")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: cannot download " + iw.MSRA_HTTPS)
    assert "--from-file R-50.pkl" in err and iw.msra_cached_path() in err
    assert not (offline / "imagenet.pth").exists()


def test_msra_download_is_checked_and_cached_where_detectron2_looks(offline, msra, monkeypatch):
    monkeypatch.setenv("FVCORE_CACHE", str(offline / "iopath"))
    data = open(msra["flat"], "rb").read()
    monkeypatch.setattr(iw.urllib.request, "urlopen", lambda url, timeout: _Response(data))
    iw.msra_weights(str(offline / "a.pth"))
    cache = offline / "iopath" / "detectron2" / "ImageNetPretrained" / "MSRA" / "R-50.pkl"
    assert cache.read_bytes() == data and (offline / "a.pth").is_file()

    cache.unlink()  # a download that is not a ResNet-50 is refused and not cached
    monkeypatch.setattr(iw.urllib.request, "urlopen", lambda url, timeout: _Response(b"<html>404</html>"))
    with pytest.raises(iw.ConvertError, match="not a readable Caffe2"):
        iw.msra_weights(str(offline / "b.pth"))
    assert os.listdir(cache.parent) == [] and not (offline / "b.pth").exists()


def _wrong_layouts(blobs: dict) -> dict:
    """Caffe2 dicts that are not the MSRA ResNet-50, and what the error must say."""
    r101 = dict(blobs) | {f"res4_{i}_{k.split('_', 2)[2]}": v for i in range(6, 23)
                          for k, v in blobs.items() if k.startswith("res4_1_")}
    return {
        "1x1 conv saved as 3x3": (dict(blobs, res2_0_branch2a_w=np.zeros((64, 64, 3, 3), np.float32)),
                                  "layer1.0.conv1.weight is 64x64x3x3 (expected 64x64x1x1)"),
        "BN scale of the wrong length": (dict(blobs, res3_1_branch2b_bn_s=np.zeros(100, np.float32)),
                                         "layer2.1.bn2.weight is 100 (expected 128)"),
        "missing tensor": ({k: v for k, v in blobs.items() if k != "res4_5_branch2c_bn_b"},
                           "missing layer3.5.bn3.bias"),
        "unknown entry": (dict(blobs, some_head_w=np.zeros(3, np.float32)), "some_head_w"),
        "ResNet-101": (r101, "bottleneck blocks 3-4-23-3, not the MSRA ResNet-50"),
    }


@pytest.mark.parametrize("case", ["1x1 conv saved as 3x3", "BN scale of the wrong length", "missing tensor",
                                  "unknown entry", "ResNet-101"])
def test_wrong_layouts_are_refused_in_one_line(msra, case):
    blobs, msg = _wrong_layouts(msra["blobs"])[case]
    with pytest.raises(iw.ConvertError) as e:
        iw.check_msra(blobs, "R-50.pkl")
    assert msg in str(e.value) and "\n" not in str(e.value)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_bad_msra_files_fail_cleanly_and_write_nothing(tmp_path, msra, capsys, monkeypatch):
    """From the command line: one line, exit 2, nothing written; a pickle that would run code is refused
    before it runs."""
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "in"
    src.mkdir()
    torch.save({"conv1.weight": torch.zeros(1)}, src / "torch.pth")
    wrong, msg = _wrong_layouts(msra["blobs"])["1x1 conv saved as 3x3"]
    cases = {"wrong shape": (write_pkl(src / "conv.pkl", wrong), msg),
             "code": (write_pkl(src / "code.pkl", {"conv1_w": _Evil()}), "posix.system"),
             "converted file": (write_pkl(src / "d2.pkl", {"model": {}, "__author__": "FastSiam-convert"}),
                                "detectron2's naming"),
             "a torch file": (str(src / "torch.pth"), "not a readable Caffe2 .pkl"),
             "a directory": (str(src), "is a directory"),
             "no file": (str(src / "nope.pkl"), "no such file")}
    out = tmp_path / "imagenet.pth"
    for case, (path, msg) in cases.items():
        assert iw.main([str(out), "--from-file", path]) == 2, case
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and msg in err, (case, err)
        assert not out.exists(), case
    assert not (tmp_path / "pwned").exists()  # the pickled os.system call never ran
    assert iw.main([str(out), "--format", "torchvision", "--from-file", msra["zoo"]]) == 2
    assert "needs --source torchvision" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["in"]


# ---------------------------------------------------------------- MSRA R-50 in detectron2: the msra/ twins
def twin_model(stem: str, weights: str):
    pytest.importorskip("detectron2")
    from transfer import compat

    compat.apply()
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    import transfer.roi_heads  # noqa: F401  (registers Res5ROIHeadsExtraNorm for the C4 twin)

    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", "transfer", "msra", f"{stem}.yaml"))
    assert cfg.MODEL.WEIGHTS == iw.MSRA_URL  # the twin's own weights; offline, the local copy replaces them
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", weights])
    torch.manual_seed(0)
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return model


def backbone_name(stem: str, torchvision_key: str) -> str:
    """Where a ResNet tensor lives in the twin's model: FPN: backbone.bottom_up; C4: res5 in the box head."""
    d2 = moco_rename(torchvision_key)
    if "FPN" in stem:
        return "backbone.bottom_up." + d2
    return ("roi_heads." if d2.startswith("res5.") else "backbone.") + d2


# the FPN twins build the same backbone (keypoint 1x and Cityscapes differ from the 2x/COCO twins only in
# schedule and classes, which test_configs checks), so three models cover every architecture
@pytest.mark.parametrize("stem,layout", [("coco_R_50_FPN_1x", "zoo"), ("coco_R_50_FPN_1x", "flat"),
                                         ("coco_R_50_FPN_1x", "pth"), ("coco_R_50_C4_1x", "zoo"),
                                         ("keypoint_R_50_FPN_2x", "zoo")])
def test_msra_twin_loads_every_backbone_tensor(tmp_path, msra, stem, layout):
    """Through detectron2's own checkpointer (Caffe2 renaming), every conv weight and folded-BN scale and bias
    of the file lands on its ResNet-50 parameter, and every ResNet parameter of the model comes from the file;
    the running statistics keep detectron2's 0 and 1 (the file has none: its BN is folded)."""
    path = msra[layout] if layout != "pth" else str(tmp_path / "imagenet.pth")
    if layout == "pth":
        iw.msra_weights(path, from_file=msra["zoo"])
    state = twin_model(stem, path).state_dict()
    expected = {backbone_name(stem, tv): torch.from_numpy(msra["blobs"][c2])
                for c2, tv in msra["names"].items()}
    resnet = {k for k in state if k.startswith(("backbone.", "roi_heads.res5."))
              and ".fpn_" not in k and k != "roi_heads.res5.norm.weight" and k != "roi_heads.res5.norm.bias"
              and k.endswith((".weight", ".bias"))}
    assert resnet == set(expected)  # every ResNet parameter has a tensor in the file, and vice versa
    for k, v in expected.items():
        assert torch.equal(state[k], v), k
    stats = [k for k in state if k.startswith(("backbone.", "roi_heads.res5.")) and "running_" in k
             and ".fpn_" not in k and not k.startswith("roi_heads.res5.norm.")]
    assert len(stats) == 2 * 53 and all(
        torch.equal(state[k], torch.zeros_like(state[k]) if "mean" in k else torch.ones_like(state[k]))
        for k in stats)


@pytest.mark.parametrize("layout", ["zoo", "pth"])
def test_caffe2_weights_with_a_torchvision_input_config_are_refused(tmp_path, msra, layout):
    """MSRA's weights under an RGB / torchvision-normalised config would load without a warning and fine-tune
    on inputs the backbone never saw: train_net refuses that before building anything; the msra/ twin passes."""
    pytest.importorskip("detectron2")
    from detectron2.config import get_cfg

    from transfer import train_net

    path = msra["zoo"] if layout == "zoo" else str(tmp_path / "imagenet.pth")
    if layout == "pth":
        iw.msra_weights(path, from_file=msra["zoo"])

    def cfg_for(config: str):
        cfg = get_cfg()
        cfg.merge_from_file(os.path.join(REPO, "configs", "transfer", config))
        cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", path, "OUTPUT_DIR", str(tmp_path / "o")])
        return cfg

    with pytest.raises(train_net.SetupError) as e:
        train_net.check_weights(cfg_for("coco_R_50_FPN_1x.yaml"), resume=False)
    msg = str(e.value)
    assert "Caffe2 (MSRA)" in msg and "configs/transfer/msra/" in msg and "INPUT.FORMAT BGR" in msg
    assert "\n" not in msg
    train_net.check_weights(cfg_for("msra/coco_R_50_FPN_1x.yaml"), resume=False)  # the twin fits
    assert not (tmp_path / "o").exists()  # a check writes nothing


def test_converted_weights_with_an_msra_config_are_refused(tmp_path):
    """The other way round: an RGB-trained ResNet-50 from transfer.convert under an msra/ twin (BGR, Caffe
    mean, std 1) is refused; under the protocol config itself it passes."""
    pytest.importorskip("detectron2")
    import torchvision
    from detectron2.config import get_cfg

    from transfer import convert, train_net

    src, dst = tmp_path / "tv.pth", tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), src)
    assert convert.main([str(src), str(dst)]) == 0

    def cfg_for(config: str):
        cfg = get_cfg()
        cfg.merge_from_file(os.path.join(REPO, "configs", "transfer", config))
        cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", str(dst)])
        return cfg

    with pytest.raises(train_net.SetupError, match="not a Caffe2 .MSRA. file.*not its msra/ twin"):
        train_net.check_weights(cfg_for("msra/coco_R_50_FPN_1x.yaml"), resume=False)
    train_net.check_weights(cfg_for("coco_R_50_FPN_1x.yaml"), resume=False)
