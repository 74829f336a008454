"""Build the V9 training set: fixed-size crops of Kaggle stage1_train (V1) and external sources, in the cache format.

Leakage guard: a fold is a property of a whole source image, never of a crop. Crops of a V1 image carry that
image's fold from folds.csv; every other image gets a fold from a stable hash of its leakage group (the image
itself, or e.g. the whole time-lapse sequence of a CTC frame), so all crops of one image (and of one sequence)
always share one fold. Training on fold k then drops every crop with fold == k.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import time
from collections import Counter
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from ..atomic import atomic_write_text
from ..errors import DataError
from .cache import IMAGE_SUFFIXES, write_image, write_index, write_label
from .cropper import crop_tiles, rescale_sample, scale_to_target
from .external import Sample, read_source
from .modality import image_type

logger = logging.getLogger(__name__)

MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ["crop_id", "source", "source_image", "y", "x", "scale", "modality", "n_nuclei", "fold",
                    "group", "weight", "padded", "source_height", "source_width"]
INDEX_COLUMNS = ["image_id", "height", "width", "type", "n_nuclei", "source", "source_image", "y", "x", "scale",
                 "fold", "weight"]
DEFAULT_FOLDS = 5
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str) -> str:
    """File-name-safe form of a source or image name (runs of other characters become '-')."""
    return _UNSAFE.sub("-", str(text)).strip("-") or "x"


def crop_id(source: str, source_image: str, y: int, x: int) -> str:
    return f"{safe_name(source)}__{safe_name(source_image)}__{y}_{x}"


def group_fold(source: str, group: str, n_folds: int) -> int:
    """Stable fold of an external leakage group: sha1 of 'source/group' mod n_folds (same on every machine and
    run, unaffected by other images being added or removed)."""
    digest = hashlib.sha1(f"{source}/{group}".encode("utf-8")).hexdigest()
    return int(digest, 16) % n_folds


def _is_v1(spec: dict) -> bool:
    return spec.get("kind") == "kaggle" and spec.get("split", "stage1_train") == "stage1_train" \
        and not spec.get("solution_csv")


def _fold_of(sample: Sample, spec: dict, v1_folds: dict[str, int], n_folds: int) -> int:
    if sample.source_image in v1_folds and spec.get("kind") == "kaggle":
        return v1_folds[sample.source_image]
    if _is_v1(spec):
        raise DataError(f"stage1_train image {sample.source_image} has no fold in the folds table; "
                        "rebuild folds.csv so that every V1 crop keeps its image's fold")
    return group_fold(sample.source, sample.group or sample.source_image, n_folds)


def _modality(sample: Sample) -> str:
    if sample.modality is None:

        sample.modality = image_type(sample.image)
    return sample.modality


def _swap_in(tmp_dir: Path, out_dir: Path) -> None:
    """Replace out_dir by the finished tmp_dir with renames, so out_dir is never half-written."""
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp_dir, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def build_v9(sources: list[dict], out_dir: str | Path, crop_size: int = 256, stride: int = 256,
             min_foreground: float = 0.02, target_diameter: float | None = None,
             folds: pd.DataFrame | None = None, n_folds: int | None = None,
             image_suffix: str = ".png") -> pd.DataFrame:
    """Crop every sample of every source into `out_dir` (images/, labels/, index.csv, manifest.csv).

    sources: dicts for `read_source` ({"kind", "path", "name"?, ...}) plus optional "weight" (sampling weight,
    recorded per crop, default 1) and "scale" (fixed rescale factor for that source, overriding target_diameter).
    target_diameter: rescale each image so its median nucleus diameter becomes this many pixels (None: keep).
    folds: (image_id, fold) of the Kaggle stage1_train images; required when a source is stage1_train.
    n_folds: folds for external images; default the number of folds in `folds`, else 5.
    image_suffix: ".png" (default) or ".webp" for the crop images; lossless WebP is ~20% smaller but about 8x
    slower to encode with OpenCV (~115 ms against ~14 ms per 256x256 RGB crop), which dominates a build.
    Returns the manifest (one row per crop).
    """
    out_dir = Path(out_dir)
    v1_folds: dict[str, int] = {}
    if folds is not None:
        missing = {"image_id", "fold"} - set(folds.columns)
        if missing:
            raise DataError(f"folds table lacks columns {sorted(missing)}")
        v1_folds = dict(zip(folds["image_id"].astype(str), folds["fold"].astype(int)))
    elif any(_is_v1(spec) for spec in sources):
        raise DataError("a stage1_train source needs the folds table, so V1 crops keep their image's fold")
    if n_folds is None:
        n_folds = int(max(v1_folds.values())) + 1 if v1_folds else DEFAULT_FOLDS
    if n_folds < 1:
        raise ValueError(f"n_folds must be >= 1, got {n_folds}")
    if image_suffix not in IMAGE_SUFFIXES:
        raise ValueError(f"image_suffix must be one of {IMAGE_SUFFIXES}, got {image_suffix!r}")

    start = time.perf_counter()
    tmp_dir = out_dir.with_name(f".{out_dir.name}.building-{os.getpid()}")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    (tmp_dir / "images").mkdir(parents=True)
    (tmp_dir / "labels").mkdir()
    rows: list[dict] = []
    crops_per_source: Counter[str] = Counter()
    images_per_source: Counter[str] = Counter()
    try:
        for spec in sources:
            weight = float(spec.get("weight", 1.0))
            fixed_scale = spec.get("scale")
            desc = f"V9 {spec.get('kind')} {spec.get('name') or Path(str(spec.get('path'))).name}"
            for sample in tqdm(read_source(spec), desc=desc, unit="image"):
                crops = _crop_sample(sample, spec, tmp_dir, crop_size, stride, min_foreground,
                                     target_diameter, fixed_scale, weight, v1_folds, n_folds, image_suffix)
                rows.extend(crops)
                images_per_source[sample.source] += 1
                crops_per_source[sample.source] += len(crops)
        if not rows:
            raise DataError(f"no crops produced from {len(sources)} sources (check paths and min_foreground)")
        manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
        duplicated = manifest["crop_id"][manifest["crop_id"].duplicated()]
        if len(duplicated):
            raise DataError(f"crop id {duplicated.iloc[0]} occurs twice: give each source its own name")
        check_grouped_folds(manifest)
        index = manifest.rename(columns={"crop_id": "image_id", "modality": "type"})
        index["height"] = crop_size
        index["width"] = crop_size
        atomic_write_text(tmp_dir / MANIFEST, manifest.to_csv(index=False))
        write_index(tmp_dir, index[INDEX_COLUMNS])  # last: a folder with index.csv is complete
        _swap_in(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    elapsed = time.perf_counter() - start
    for source in crops_per_source:
        logger.info("V9 %s: %d images -> %d crops", source, images_per_source[source], crops_per_source[source])
    logger.info("V9 built in %s: %d crops from %d images in %.1f s", out_dir, len(manifest),
                sum(images_per_source.values()), elapsed)
    return manifest


def _crop_sample(sample: Sample, spec: dict, out_dir: Path, crop_size: int, stride: int, min_foreground: float,
                 target_diameter: float | None, fixed_scale: float | None, weight: float,
                 v1_folds: dict[str, int], n_folds: int, image_suffix: str) -> list[dict]:
    modality = _modality(sample)
    fold = _fold_of(sample, spec, v1_folds, n_folds)
    if fixed_scale is not None:
        scale = float(fixed_scale)
    elif target_diameter is not None:
        scale = scale_to_target(sample.label, target_diameter)
    else:
        scale = 1.0
    image, label = rescale_sample(sample.image, sample.label, scale)
    rows = []
    for tile in crop_tiles(image, label, crop_size, stride, min_foreground):
        name = crop_id(sample.source, sample.source_image, tile.y, tile.x)
        write_image(out_dir / "images" / f"{name}{image_suffix}", tile.image)
        write_label(out_dir / "labels" / f"{name}.png", tile.label)
        rows.append({"crop_id": name, "source": sample.source, "source_image": sample.source_image,
                     "y": tile.y, "x": tile.x, "scale": round(scale, 6), "modality": modality,
                     "n_nuclei": int(tile.label.max()), "fold": fold,
                     "group": sample.group or sample.source_image, "weight": weight, "padded": tile.padded,
                     "source_height": image.shape[0], "source_width": image.shape[1]})
    return rows


def check_grouped_folds(manifest: pd.DataFrame) -> None:
    """Raise DataError unless every source image (and every leakage group) has exactly one fold."""
    for keys in (["source", "source_image"], ["source", "group"]):
        if not set(keys) <= set(manifest.columns):
            continue
        counts = manifest.groupby(keys)["fold"].nunique()
        split = counts[counts > 1]
        if len(split):
            raise DataError(f"{MANIFEST}: {'/'.join(map(str, split.index[0]))} has crops in {split.iloc[0]} folds")


def training_crops(manifest: pd.DataFrame, held_out_fold: int) -> pd.DataFrame:
    """Crops allowed for training when `held_out_fold` is validated: every crop of another fold."""
    check_grouped_folds(manifest)
    return manifest[manifest["fold"].to_numpy() != held_out_fold]


def read_manifest(out_dir: str | Path) -> pd.DataFrame:
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path}: no V9 manifest; run `build-v9` first")
    return pd.read_csv(path, dtype={"crop_id": str, "source": str, "source_image": str, "group": str})
