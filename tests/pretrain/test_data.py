"""Data: recursive scan, bad files refused in every decode path, deterministic batches and views."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from pretrain import data
from tests.pretrain.conftest import png_bomb, write_bad_files, write_images


def test_scan_skips_and_names_bad_files(tmp_path):
    write_images(tmp_path / "good", 5)
    kinds = write_bad_files(tmp_path / "bad")
    (tmp_path / "notes.txt").write_text("ignored: not an image extension")
    good, bad = data.scan(str(tmp_path), max_pixels=10_000_000)
    assert len(good) == 5 and all(f.startswith("good/class") for f in good)
    reasons = {f.split("/")[-1]: r for f, r in bad}
    assert set(reasons) == set(kinds)
    assert reasons["empty.jpg"] == "empty file"
    assert "not a readable image" in reasons["text.jpg"]
    assert "truncated JPEG" in reasons["truncated.jpg"]
    assert "decompression bomb" in reasons["bomb.png"]


def test_scan_errors(tmp_path):
    with pytest.raises(data.DataError, match="does not exist"):
        data.scan(str(tmp_path / "missing"), 10**7)
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DataError, match="no image files"):
        data.scan(str(tmp_path / "empty"), 10**7)
    write_bad_files(tmp_path / "allbad")
    with pytest.raises(data.DataError, match="none of the 4 image files .* is readable"):
        data.scan(str(tmp_path / "allbad"), 10**7)


def test_max_images_takes_the_first_sorted_files(tmp_path):
    write_images(tmp_path, 6)
    good, _ = data.scan(str(tmp_path), 10**7, max_images=3)
    assert good == sorted(data.list_images(str(tmp_path)))[:3]


def _jpeg(h=70, w=90):
    b = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(b, "JPEG")
    return b.getvalue()


def test_decode_paths():
    jpg = _jpeg()
    x = data.decode(jpg, 10**7)
    assert x.dtype == torch.uint8 and x.shape == (3, 70, 90)
    pil = data.decode_pil(jpg, 10**7)
    assert pil.size == (90, 70) and pil.mode == "RGB"
    b = io.BytesIO()
    Image.new("L", (20, 30)).save(b, "PNG")  # grey PNG -> 3 channels
    assert data.decode(b.getvalue(), 10**7).shape == (3, 30, 20)


@pytest.mark.parametrize("decoder", [data.decode, data.decode_pil], ids=["torchvision", "pil"])
def test_bad_bytes_refused_in_every_decode_path(tmp_path, decoder):
    jpg = _jpeg()
    for cut in (len(jpg) // 2, len(jpg) - 2):  # truncated mid-scan and just before the end-of-image marker
        with pytest.raises(data.BadImage, match="truncated"):
            decoder(jpg[:cut], 10**7)
    with pytest.raises(data.BadImage, match="empty"):
        decoder(b"", 10**7)
    with pytest.raises(data.BadImage, match="not a readable image"):
        decoder(b"GIF89a but not really" * 10, 10**7)
    png_bomb(tmp_path / "bomb.png")
    # refused from the header, before anything is allocated
    with pytest.raises(data.BadImage, match="decompression bomb"):
        decoder((tmp_path / "bomb.png").read_bytes(), 10**8)
    with pytest.raises(data.BadImage, match="exceeds max_image_pixels"):
        decoder(jpg, 70 * 90 - 1)


def _with_segment(jpg: bytes, marker: int, payload: bytes) -> bytes:
    """`jpg` plus one marker segment after its SOI (e.g. APP1, where cameras put EXIF and a thumbnail)."""
    return jpg[:2] + bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload + jpg[2:]


@pytest.mark.parametrize("options", [{}, {"progressive": True}, {"restart_marker_blocks": 2}],
                         ids=["baseline", "progressive", "restart-markers"])
def test_jpeg_end_walks_markers_to_the_real_end_of_image(options):
    b = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(b, "JPEG",
                                                                                                 **options)
    jpg = b.getvalue()
    assert data.jpeg_end(jpg) == len(jpg)
    assert data.jpeg_end(jpg + b"\xff\xd9" * 3 + bytes(5000)) == len(jpg)  # a trailer, even one with EOIs
    assert data.jpeg_end(jpg[:-1]) is None and data.jpeg_end(jpg[: len(jpg) // 2]) is None
    # stray bytes between segments: libjpeg skips them ("extraneous bytes before marker"), so do we
    app0_end = 4 + int.from_bytes(jpg[4:6], "big")
    assert data.jpeg_end(jpg[:app0_end] + b"\x00\x17" + jpg[app0_end:]) == len(jpg) + 2


def test_jpeg_with_a_long_trailer_is_used(tmp_path):
    """Camera tails and appended data can follow the end-of-image marker by far more than 1 KiB."""
    jpg = _jpeg()
    (tmp_path / "trailer.jpg").write_bytes(jpg + b"maker notes " * 400)  # 4.8 KB after the EOI
    (tmp_path / "cut.jpg").write_bytes(jpg[: len(jpg) - 10])
    good, bad = data.scan(str(tmp_path), 10**7)
    assert good == ["trailer.jpg"] and bad == [("cut.jpg", "truncated JPEG (no end-of-image marker)")]
    with_trailer = (tmp_path / "trailer.jpg").read_bytes()
    assert torch.equal(data.decode(with_trailer, 10**7), data.decode(jpg, 10**7))
    assert data.decode_pil(with_trailer, 10**7).size == (90, 70)


@pytest.mark.parametrize("decoder", [data.decode, data.decode_pil], ids=["torchvision", "pil"])
def test_eoi_inside_a_thumbnail_does_not_make_a_truncated_jpeg_complete(tmp_path, decoder):
    """An EXIF thumbnail is a whole JPEG, EOI included, inside an APP1 segment: only the main image's EOI
    counts."""
    thumb = _jpeg(8, 8)
    jpg = _with_segment(_jpeg(16, 16), 0xE1, b"Exif\x00\x00" + thumb)
    assert data.jpeg_end(jpg) == len(jpg)
    cut = jpg[: len(jpg) - 40]  # the thumbnail's EOI is now the last one in the file, within its last KiB
    assert data.JPEG_EOI in cut[-1024:] and data.jpeg_end(cut) is None
    with pytest.raises(data.BadImage, match="truncated JPEG"):
        decoder(cut, 10**7)
    (tmp_path / "cut.jpg").write_bytes(cut)
    (tmp_path / "whole.jpg").write_bytes(jpg)
    assert data.scan(str(tmp_path), 10**7)[0] == ["whole.jpg"]  # not ending in EOI: the scan walks it whole


def test_batches_are_deterministic_and_resumable():
    full = list(data.EpochBatches(50, 8, seed=3).__iter__())
    assert len(full) == 6 and all(len(b) == 8 for b in full)  # drop_last
    idx = [i for b in full for _, i in b]
    assert len(set(idx)) == 48
    again = data.EpochBatches(50, 8, seed=3)
    assert list(again) == full
    again.set_epoch(0, start=4)
    assert list(again) == full[4:] and len(again) == 2  # mid-epoch resume skips the batches already done
    again.set_epoch(1)
    assert list(again) != full  # a new order every epoch
    shards = [list(data.EpochBatches(50, 8, rank=r, world=2, seed=3)) for r in range(2)]
    assert [a + b for a, b in zip(*shards, strict=True)] == full  # sharding does not change the global batch


def test_views_depend_only_on_seed_epoch_index(image_dir):
    files, _ = data.scan(str(image_dir), 10**7)
    ds = data.MultiViewDataset(str(image_dir), files, num_views=3, size=32, scale=(0.2, 1.0), seed=1)
    v, bad, _ = ds[(0, 5)]
    assert v.dtype == torch.uint8 and v.shape == (3, 3, 32, 32) and bad == -1
    _ = ds[(0, 6)]  # other draws in between change nothing
    assert torch.equal(ds[(0, 5)][0], v)
    assert not torch.equal(ds[(1, 5)][0], v)
    ref = data.MultiViewDataset(str(image_dir), files, 2, 32, (0.2, 1.0), augment="reference", seed=1)
    r = ref[(0, 5)][0]
    assert r.dtype == torch.float32 and r.shape == (2, 3, 32, 32) and torch.equal(ref[(0, 5)][0], r)


def test_file_going_bad_after_scan_is_replaced(tmp_path):
    write_images(tmp_path, 6)
    files, _ = data.scan(str(tmp_path), 10**7)
    ds = data.MultiViewDataset(str(tmp_path), files, 2, 32, (0.2, 1.0), seed=0)
    (tmp_path / files[2]).write_bytes(b"")  # e.g. a flaky network filesystem
    views, bad, reason = ds[(0, 2)]
    assert bad == 2 and reason == "empty file" and views.shape == (2, 3, 32, 32)
    assert torch.equal(views, ds.views(0, 3))  # deterministic substitute: the next index
