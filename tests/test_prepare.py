"""`prepare`: Kaggle layout -> compact cache; round trip, reuse, rebuild, and what a failure leaves behind."""
import json
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from skimage.draw import disk

from nuclei.atomic import atomic_write, atomic_write_bytes
from nuclei.data import kaggle, prepare
from nuclei.data.cache import INDEX, CachedDataset, image_file, read_image, write_image
from nuclei.data.kaggle import image_path, list_ids, masks_dir, read_kaggle_image, read_kaggle_label
from nuclei.data.prepare import FINGERPRINT, prepare_split
from nuclei.errors import DataError

SPLIT = "stage1_train"


def make_layout(root: Path, n: int = 3, size=(24, 32), colour_index: int | None = None, seed: int = 0) -> dict:
    """A tiny Kaggle split of gray images with 2 disc masks each (image `colour_index` is coloured).

    Returns {image_id: (rgb image, expected label)}."""
    rng = np.random.default_rng(seed)
    expected = {}
    for index in range(n):
        image_id = f"img{index}"
        folder = root / SPLIT / image_id
        (folder / "images").mkdir(parents=True)
        (folder / "masks").mkdir()
        label = np.zeros(size, np.int32)
        for k, centre in enumerate([(6, 7), (15, 22)], start=1):
            mask = np.zeros(size, np.uint8)
            mask[disk(centre, 4 + index % 2, shape=size)] = 255
            cv2.imwrite(str(folder / "masks" / f"m{k}.png"), mask)
            label[mask > 0] = k
        gray = rng.integers(0, 60, size).astype(np.uint8)
        gray[label > 0] = 200
        if index == colour_index:
            rgb = np.dstack([gray, gray // 2, 255 - gray])
        else:
            rgb = np.dstack([gray] * 3)
        cv2.imwrite(str(folder / "images" / f"{image_id}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        expected[image_id] = (rgb, label)
    return expected


def mtimes(folder: Path) -> dict:
    return {p.relative_to(folder): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_round_trip(tmp_path):
    expected = make_layout(tmp_path / "data", colour_index=1)
    out = prepare_split(tmp_path / "data", SPLIT, tmp_path / "cache", workers=1)
    assert out == tmp_path / "cache" / SPLIT
    dataset = CachedDataset(out)
    assert dataset.ids == sorted(expected)
    assert dataset.has_labels()
    index = dataset.index.set_index("image_id")
    for image_id, (rgb, label) in expected.items():
        np.testing.assert_array_equal(dataset.image(image_id), rgb)  # lossless, channel order kept
        np.testing.assert_array_equal(dataset.label(image_id), label)
        assert (index.loc[image_id, "height"], index.loc[image_id, "width"]) == rgb.shape[:2]
        assert index.loc[image_id, "n_nuclei"] == 2
        assert index.loc[image_id, "type"] == "fluorescence"
    assert (out / FINGERPRINT).is_file()


def test_unlabelled_split_has_no_labels(tmp_path):
    make_layout(tmp_path / "data", n=2)
    for folder in (tmp_path / "data" / SPLIT).iterdir():
        for mask in (folder / "masks").iterdir():
            mask.unlink()
        (folder / "masks").rmdir()
    out = prepare_split(tmp_path / "data", SPLIT, tmp_path / "cache", workers=1)
    dataset = CachedDataset(out)
    assert not dataset.has_labels()
    assert "n_nuclei" not in dataset.index.columns
    assert dataset.image("img0").shape == (24, 32, 3)


def test_one_pixel_image_goes_through_the_cache(tmp_path):
    folder = tmp_path / "data" / SPLIT / "dot"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    cv2.imwrite(str(folder / "images" / "dot.png"), np.array([[[10, 20, 30]]], np.uint8))
    cv2.imwrite(str(folder / "masks" / "m.png"), np.array([[255]], np.uint8))
    dataset = CachedDataset(prepare_split(tmp_path / "data", SPLIT, tmp_path / "cache", workers=1))
    np.testing.assert_array_equal(dataset.image("dot"), [[[30, 20, 10]]])
    np.testing.assert_array_equal(dataset.label("dot"), [[1]])


def test_gray_stored_as_one_channel_in_png_and_exact_in_webp(tmp_path):
    gray = np.random.default_rng(0).integers(0, 255, (10, 12)).astype(np.uint8)
    rgb = np.dstack([gray] * 3)
    write_image(tmp_path / "g.png", rgb)
    assert cv2.imread(str(tmp_path / "g.png"), cv2.IMREAD_UNCHANGED).shape == (10, 12)
    # WebP has no gray mode (OpenCV stores 3 equal channels); what matters is that it reads back exactly.
    write_image(tmp_path / "g.webp", rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "g.webp"), rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), rgb)


def test_cache_is_reused_when_nothing_changed(tmp_path, caplog):
    make_layout(tmp_path / "data")
    out = prepare_split(tmp_path / "data", SPLIT, tmp_path / "cache", workers=1)
    before = mtimes(out)
    with caplog.at_level(logging.INFO, logger="nuclei.data.prepare"):
        prepare_split(tmp_path / "data", SPLIT, tmp_path / "cache", workers=1)
    assert mtimes(out) == before
    assert "up to date" in caplog.text


def test_cache_is_rebuilt_when_a_mask_is_touched(tmp_path):
    make_layout(tmp_path / "data")
    out = prepare_split(tmp_path / "data", SPLIT, tmp_path / "cache", workers=1)
    before = mtimes(out)
    mask = tmp_path / "data" / SPLIT / "img1" / "masks" / "m1.png"
    stat = mask.stat()
    os.utime(mask, (stat.st_atime, stat.st_mtime + 10))
    prepare_split(tmp_path / "data", SPLIT, tmp_path / "cache", workers=1)
    after = mtimes(out)
    assert after[Path(INDEX)] != before[Path(INDEX)]
    assert after[Path("labels/img1.png")] != before[Path("labels/img1.png")]


def test_cache_is_rebuilt_when_a_mask_changes(tmp_path):
    make_layout(tmp_path / "data")
    out = prepare_split(tmp_path / "data", SPLIT, tmp_path / "cache", workers=1)
    mask_file = tmp_path / "data" / SPLIT / "img2" / "masks" / "m3.png"
    new_mask = np.zeros((24, 32), np.uint8)
    new_mask[18:22, 2:6] = 255  # a third nucleus, drawn later
    cv2.imwrite(str(mask_file), new_mask)
    prepare_split(tmp_path / "data", SPLIT, tmp_path / "cache", workers=1)
    label = CachedDataset(out).label("img2")
    assert label.max() == 3 and (label[18:22, 2:6] == 3).all()
    assert CachedDataset(out).index.set_index("image_id").loc["img2", "n_nuclei"] == 3
    # Now redraw an existing mask in place (new content, same name).
    moved = np.zeros((24, 32), np.uint8)
    moved[2:5, 26:30] = 255
    cv2.imwrite(str(mask_file.with_name("m2.png")), moved)
    prepare_split(tmp_path / "data", SPLIT, tmp_path / "cache", workers=1)
    label = CachedDataset(out).label("img2")
    assert (label[2:5, 26:30] == 2).all() and (label == 2).sum() == 12


def test_force_rebuilds(tmp_path):
    make_layout(tmp_path / "data", n=1)
    out = prepare_split(tmp_path / "data", SPLIT, tmp_path / "cache", workers=1)
    before = mtimes(out)
    prepare_split(tmp_path / "data", SPLIT, tmp_path / "cache", workers=1, force=True)
    assert mtimes(out)[Path(INDEX)] != before[Path(INDEX)]


def test_limit_takes_the_first_ids(tmp_path):
    make_layout(tmp_path / "data", n=4)
    out = prepare_split(tmp_path / "data", SPLIT, tmp_path / "cache", limit=2, workers=1)
    assert CachedDataset(out).ids == ["img0", "img1"]
    assert json.loads((out / FINGERPRINT).read_text())["n"] == 2


def test_overlapping_masks_are_counted_and_warned(tmp_path, caplog):
    make_layout(tmp_path / "data", n=2)
    masks = tmp_path / "data" / SPLIT / "img0" / "masks"
    first = cv2.imread(str(masks / "m1.png"), cv2.IMREAD_GRAYSCALE)
    shifted = np.roll(first, 2, axis=1)  # overlaps m1, and sorts after it
    cv2.imwrite(str(masks / "m1b.png"), shifted)
    n_overlap = int(((first > 0) & (shifted > 0)).sum())
    with caplog.at_level(logging.WARNING, logger="nuclei.data.prepare"):
        out = prepare_split(tmp_path / "data", SPLIT, tmp_path / "cache", workers=1)
    index = CachedDataset(out).index.set_index("image_id")
    assert index.loc["img0", "overlap_pixels"] == n_overlap
    assert index.loc["img1", "overlap_pixels"] == 0
    assert "1 images have overlapping masks" in caplog.text and f"({n_overlap} pixels" in caplog.text
    label = CachedDataset(out).label("img0")
    assert (label[first > 0] == 1).all()  # m1 kept its pixels


def test_duplicate_ids_are_refused(tmp_path, monkeypatch):
    make_layout(tmp_path / "data", n=2)
    monkeypatch.setattr(prepare, "list_ids", lambda split_dir: ["img0", "img1", "img1"])
    with pytest.raises(DataError, match="duplicate.*img1"):
        prepare_split(tmp_path / "data", SPLIT, tmp_path / "cache", workers=1)


def test_empty_split_is_refused(tmp_path):
    (tmp_path / "data" / SPLIT).mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        prepare_split(tmp_path / "data", SPLIT, tmp_path / "cache", workers=1)


def test_too_large_image_fails_prepare(tmp_path, monkeypatch):
    make_layout(tmp_path / "data", n=1)
    monkeypatch.setattr(kaggle, "MAX_PIXELS", 100)  # the pool forks, so workers see the patch
    with pytest.raises(DataError, match="img0.png.*larger"):
        prepare_split(tmp_path / "data", SPLIT, tmp_path / "cache", workers=1)


def test_failed_prepare_leaves_no_index_and_keeps_earlier_files(tmp_path):
    expected = make_layout(tmp_path / "data")
    out = prepare_split(tmp_path / "data", SPLIT, tmp_path / "cache", workers=1)
    old_third = image_file(out, "img2").read_bytes()
    source = image_path(tmp_path / "data" / SPLIT, "img2")
    data = source.read_bytes()
    source.write_bytes(data[: len(data) // 2])  # truncated PNG in the 3rd image
    with pytest.raises(DataError, match="img2.png"):
        prepare_split(tmp_path / "data", SPLIT, tmp_path / "cache", workers=1)
    assert not (out / INDEX).exists()  # no index claims a complete cache
    with pytest.raises(DataError, match="no cache index"):
        CachedDataset(out)
    for image_id in ("img0", "img1"):  # the other images' files survive, intact
        np.testing.assert_array_equal(read_image(image_file(out, image_id)), expected[image_id][0])
    assert image_file(out, "img2").read_bytes() == old_third
    assert not list(out.rglob("*.tmp"))
    # Once the source is repaired, the next prepare rebuilds instead of trusting the old stamp.
    source.write_bytes(data)
    prepare_split(tmp_path / "data", SPLIT, tmp_path / "cache", workers=1)
    assert CachedDataset(out).ids == ["img0", "img1", "img2"]


def test_atomic_write_keeps_old_file_when_writer_raises(tmp_path):
    path = tmp_path / "index.csv"
    atomic_write_bytes(path, b"complete")
    with pytest.raises(RuntimeError):
        with atomic_write(path, "wb") as handle:
            handle.write(b"half")
            raise RuntimeError("writer died")
    assert path.read_bytes() == b"complete"
    assert [p.name for p in tmp_path.iterdir()] == ["index.csv"]


def test_real_images_round_trip(dsb_root, tmp_path):
    out = prepare_split(dsb_root, SPLIT, tmp_path / "cache", limit=3, workers=1)
    dataset = CachedDataset(out)
    split = dsb_root / SPLIT
    assert dataset.ids == list_ids(split)[:3]
    index = dataset.index.set_index("image_id")
    for image_id in dataset.ids:
        original = read_kaggle_image(image_path(split, image_id))
        cached = dataset.image(image_id)
        assert cached.shape == original.shape and cached.dtype == np.uint8
        np.testing.assert_array_equal(cached, original)
        label = dataset.label(image_id)
        assert label.shape == original.shape[:2]
        files = sorted(masks_dir(split, image_id).glob("*.png"))
        union = np.zeros(label.shape, bool)
        for path in files:
            union |= cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) > 0
        np.testing.assert_array_equal(label > 0, union)
        expected, _ = read_kaggle_label(masks_dir(split, image_id), original.shape[:2])
        np.testing.assert_array_equal(label, expected)
        assert index.loc[image_id, "n_nuclei"] == label.max() == len(np.unique(label)) - 1
    assert isinstance(dataset.index, pd.DataFrame) and len(dataset.index) == 3
