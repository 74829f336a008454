"""Reader for the Kaggle layout: `<split>/<id>/images/<id>.png` and `<split>/<id>/masks/*.png`.

Every image becomes HxWx3 uint8 RGB (RGBA, RGB, gray, 16-bit all handled); the per-nucleus masks become one int32
instance label image. Problems raise DataError naming the file, or are counted in a warning.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import DataError

logger = logging.getLogger(__name__)

SPLITS = ("stage1_train", "stage1_test", "stage2_test_final")
# Beyond this many pixels an image is almost certainly not a microscopy tile but a corrupt or wrong file.
MAX_PIXELS = 8192 * 8192


@dataclass
class LabelReport:
    """What happened while merging one image's masks; summed into the warnings of `prepare`."""

    n_masks: int = 0
    n_overlap_pixels: int = 0
    n_empty_masks: int = 0


def imread(path: Path, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """Decode an image file with OpenCV, or raise DataError naming the file (missing, corrupt, truncated)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, flags) if data.size else None
    if image is None:
        raise DataError(f"{path}: not a readable image (corrupt, truncated or unsupported compression)")
    return image


def to_rgb_uint8(image: np.ndarray, path: Path | str = "<array>") -> np.ndarray:
    """Gray, gray+alpha, BGR, BGRA, 8 or 16 bit (as OpenCV decodes them) -> HxWx3 uint8 RGB."""
    if image.ndim == 3 and image.shape[2] in (2, 4):
        # Drop alpha first: DSB alphas are constant, and a 16-bit alpha of 65535 would swamp the stretch below.
        image = image[..., :-1]
    if image.dtype == np.uint16:
        # Robust 16-bit -> 8-bit: a plain >> 8 turns dim 12-bit microscopy images black.
        lo, hi = np.percentile(image, (0.5, 99.9))
        image = np.clip((image.astype(np.float32) - lo) * 255.0 / max(hi - lo, 1.0), 0, 255).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise DataError(f"{path}: unsupported pixel type {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:  # gray + alpha, alpha dropped above
        image = image[..., 0]
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise DataError(f"{path}: unsupported image shape {image.shape}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_kaggle_image(path: str | Path) -> np.ndarray:
    path = Path(path)
    image = imread(path)
    h, w = image.shape[:2]
    if h * w > MAX_PIXELS:
        raise DataError(f"{path}: image of {h}x{w} pixels is larger than the {MAX_PIXELS} pixels this reader accepts")
    return to_rgb_uint8(image, path)


def read_kaggle_label(masks_dir: str | Path, shape: tuple[int, int]) -> tuple[np.ndarray, LabelReport]:
    """Merge one binary PNG per nucleus into an int32 label image.

    Masks are read in sorted file order; a pixel claimed by two masks keeps the first one (deterministic),
    and such pixels are counted in the report rather than silently overwritten.
    """
    masks_dir = Path(masks_dir)
    if not masks_dir.is_dir():
        raise DataError(f"{masks_dir}: masks folder not found")
    files = sorted(masks_dir.glob("*.png"))
    if not files:
        raise DataError(f"{masks_dir}: masks folder is empty")
    label = np.zeros(shape, np.int32)
    report = LabelReport()
    next_id = 1
    for path in files:
        mask = imread(path)
        if mask.ndim == 3:  # a colour mask is on where any colour is; its alpha (often constant 255) says nothing
            mask = mask[..., : 1 if mask.shape[2] == 2 else 3].max(axis=2)
        if mask.shape != tuple(shape):
            raise DataError(f"{path}: mask is {mask.shape[0]}x{mask.shape[1]} but its image is {shape[0]}x{shape[1]}")
        on = mask > 0
        if not on.any():
            report.n_empty_masks += 1
            continue
        taken = on & (label > 0)
        report.n_overlap_pixels += int(taken.sum())
        label[on & ~taken] = next_id
        next_id += 1
    report.n_masks = next_id - 1
    return label, report


def list_ids(split_dir: str | Path) -> list[str]:
    """Image ids of one split folder, checking each has its `images/<id>.png`."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: split folder not found")
    ids = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    for image_id in ids:
        if not (split_dir / image_id / "images").is_dir():
            raise DataError(f"{split_dir / image_id}: missing images/ folder")
    return ids


def image_path(split_dir: str | Path, image_id: str) -> Path:
    return Path(split_dir) / image_id / "images" / f"{image_id}.png"


def masks_dir(split_dir: str | Path, image_id: str) -> Path:
    return Path(split_dir) / image_id / "masks"
