"""V9 builder: cache format, crop ids, per-image folds (leakage guard), and a build from the real shared samples."""
from __future__ import annotations

import re
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from skimage.draw import disk

from nuclei.data.cache import CachedDataset
from nuclei.data.v9 import build_v9, check_grouped_folds, crop_id, group_fold, read_manifest, training_crops
from nuclei.errors import DataError


def discs(shape, n, radius, seed) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.int32)
    for k in range(1, n + 1):
        label[disk(tuple(rng.integers(0, shape)), radius, shape=shape)] = k
    image = np.zeros(shape + (3,), np.uint8)
    image[label > 0] = 180
    return image, label


def write_folder_source(root: Path, n_images: int, shape=(300, 400), radius=10) -> Path:
    root.mkdir(parents=True)
    for i in range(n_images):
        image, label = discs(shape, 40, radius, seed=i)
        cv2.imwrite(str(root / f"img{i}.png"), image)
        cv2.imwrite(str(root / f"img{i}_label.png"), label.astype(np.uint16))
    return root


def write_kaggle_train(root: Path, ids: list[str]) -> Path:
    for i, image_id in enumerate(ids):
        image, label = discs((300, 300), 30, 9, seed=100 + i)
        folder = root / "stage1_train" / image_id
        (folder / "images").mkdir(parents=True)
        (folder / "masks").mkdir()
        cv2.imwrite(str(folder / "images" / f"{image_id}.png"), image)
        for k in range(1, label.max() + 1):
            if (label == k).any():
                cv2.imwrite(str(folder / "masks" / f"m{k:03d}.png"), (label == k).astype(np.uint8) * 255)
    return root


def test_crop_ids_are_file_safe():
    assert crop_id("Fluo-N2DH-SIM+", "01_t000", 0, 256) == "Fluo-N2DH-SIM__01_t000__0_256"
    assert re.fullmatch(r"[A-Za-z0-9._-]+", crop_id("a b/c", "x:y\\z", 1, 2))


def test_group_fold_is_stable_and_spreads():
    folds = [group_fold("monuseg", f"image{i}", 5) for i in range(40)]
    assert folds == [group_fold("monuseg", f"image{i}", 5) for i in range(40)]
    assert set(folds) == set(range(5))


def test_build_generated_sources_leakage_guard(tmp_path):
    pytest.importorskip("nuclei.data.kaggle")
    pytest.importorskip("nuclei.data.modality")
    folder = write_folder_source(tmp_path / "ext", 6)
    ids = [f"v1img{i}" for i in range(6)]
    kaggle = write_kaggle_train(tmp_path / "dsb", ids)
    folds = pd.DataFrame({"image_id": ids, "fold": [0, 1, 2, 0, 1, 2]})
    sources = [{"kind": "kaggle", "path": kaggle},
               {"kind": "folder", "path": folder, "name": "ext", "modality": "brightfield", "weight": 0.5}]
    out = tmp_path / "v9"
    manifest = build_v9(sources, out, crop_size=128, stride=128, min_foreground=0, folds=folds)

    # V1 crops carry their image's fold; external images get one fold each, from {0, 1, 2}.
    v1 = manifest[manifest["source"] == "kaggle"]
    assert dict(zip(v1["source_image"], v1["fold"])) == dict(zip(folds["image_id"], folds["fold"]))
    assert (manifest.groupby("source_image")["fold"].nunique() == 1).all()
    assert set(manifest["fold"]) <= {0, 1, 2}
    assert (manifest.loc[manifest["source"] == "ext", "weight"] == 0.5).all()
    for held_out in range(3):
        train = training_crops(manifest, held_out)
        held_v1 = set(folds.loc[folds["fold"] == held_out, "image_id"])
        assert held_v1 and not held_v1 & set(train["source_image"])
        assert (train["fold"] != held_out).all()
        assert len(train) + (manifest["fold"] == held_out).sum() == len(manifest)

    # A crop-level fold mix-up is refused.
    broken = manifest.copy()
    broken.loc[broken.index[0], "fold"] = (broken["fold"].iloc[0] + 1) % 3
    with pytest.raises(DataError, match="folds"):
        training_crops(broken, 0)

    # Written in the cache format, readable back; manifest on disk equals the returned one.
    dataset = CachedDataset(out)
    assert dataset.ids == manifest["crop_id"].tolist()
    assert {"image_id", "height", "width", "type", "n_nuclei", "source", "source_image", "y", "x", "scale",
            "fold"} <= set(dataset.index.columns)
    pd.testing.assert_frame_equal(read_manifest(out)[["crop_id", "fold"]], manifest[["crop_id", "fold"]])
    for crop in manifest.sample(5, random_state=0).itertuples():
        assert dataset.image(crop.crop_id).shape == (128, 128, 3)
        assert dataset.label(crop.crop_id).max() == crop.n_nuclei
    assert set(manifest.loc[manifest["source"] == "kaggle", "modality"]) == {"fluorescence"}


def test_build_refuses_v1_without_its_fold(tmp_path):
    pytest.importorskip("nuclei.data.kaggle")
    kaggle = write_kaggle_train(tmp_path / "dsb", ["a", "b"])
    with pytest.raises(DataError, match="folds table"):
        build_v9([{"kind": "kaggle", "path": kaggle}], tmp_path / "v9")
    with pytest.raises(DataError, match="b has no fold"):
        build_v9([{"kind": "kaggle", "path": kaggle}], tmp_path / "v9",
                 folds=pd.DataFrame({"image_id": ["a"], "fold": [0]}))
    assert not (tmp_path / "v9").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["dsb"]  # no half-built folder left behind


def test_target_diameter_rescales_and_rebuild_replaces(tmp_path):
    folder = write_folder_source(tmp_path / "ext", 2, shape=(300, 300), radius=12)
    spec = {"kind": "folder", "path": folder, "modality": "fluorescence"}
    out = tmp_path / "v9"
    manifest = build_v9([spec], out, crop_size=64, stride=64, min_foreground=0, target_diameter=12.0)
    # Discs of radius 12 are ~25 px across: halved.
    assert manifest["scale"].between(0.45, 0.52).all()
    assert manifest["source_height"].iloc[0] == round(300 * manifest["scale"].iloc[0])
    fixed = build_v9([{**spec, "scale": 1.0}], out, crop_size=64, stride=64, min_foreground=0, image_suffix=".webp")
    assert (fixed["scale"] == 1.0).all() and len(fixed) == 2 * 25
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(f"{c}.webp" for c in fixed["crop_id"])
    assert CachedDataset(out).image(fixed["crop_id"].iloc[0]).shape == (64, 64, 3)


def test_build_real_shared_samples(external_root, tmp_path):
    sources = [{"kind": "monuseg", "path": external_root / "monuseg"},
               {"kind": "ctc", "path": external_root / "ctc"}]
    start = time.perf_counter()
    manifest = build_v9(sources, tmp_path / "v9", crop_size=256, stride=256, min_foreground=0.02)
    elapsed = time.perf_counter() - start
    counts = manifest.groupby("source")["source_image"].nunique().to_dict()
    assert counts == {"monuseg": 13, "Fluo-N2DH-GOWT1": 4, "Fluo-N2DH-SIM+": 6}
    crops = manifest["source"].value_counts().to_dict()
    # 1000x1000 -> 4x4 tiles, all with nuclei; CTC tiles without enough nuclei are skipped.
    assert crops["monuseg"] == 13 * 16
    assert 0 < crops["Fluo-N2DH-GOWT1"] < 4 * 16 and 0 < crops["Fluo-N2DH-SIM+"] <= 6 * 9
    dataset = CachedDataset(tmp_path / "v9")
    assert len(dataset.ids) == len(manifest) == len(list((tmp_path / "v9" / "labels").iterdir()))
    assert dataset.index["source"].value_counts().to_dict() == crops
    assert (dataset.index[["height", "width"]] == 256).all().all()
    for crop in manifest.groupby("source").head(3).itertuples():
        image, label = dataset.image(crop.crop_id), dataset.label(crop.crop_id)
        assert image.shape == (256, 256, 3) and label.shape == (256, 256)
        assert label.max() == crop.n_nuclei > 0
    # All frames of one CTC sequence share a fold; MoNuSeg images each have one.
    check_grouped_folds(manifest)
    assert manifest[manifest["source"] != "monuseg"].groupby("source")["fold"].nunique().eq(1).all()
    assert set(manifest["modality"]) == {"histology", "fluorescence"}
    print(f"V9 shared samples: {crops} in {elapsed:.1f} s")
