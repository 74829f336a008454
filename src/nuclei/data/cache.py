"""The compact, lossless dataset cache that training reads.

One folder per dataset (`<cache>/<name>/`): `images/<id>.webp` (lossless WebP, about 20% smaller than PNG; `.png` is read too),
`labels/<id>.png` (uint16 instance labels, 0 = background; absent for unlabelled test images) and `index.csv`
(one row per image: image_id, height, width, type, n_nuclei, plus any extra columns such as source or fold).
Both are lossless; the whole stage-1 cache is about 48 MB against 196 MB of raw PNGs.
"""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ..atomic import atomic_write_bytes, atomic_write_text
from ..errors import DataError

logger = logging.getLogger(__name__)

INDEX = "index.csv"


def is_gray(image: np.ndarray) -> bool:
    """True when all three channels are equal, as in most fluorescence images stored as RGB."""
    return image.ndim == 2 or (np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2]))


IMAGE_SUFFIXES = (".webp", ".png")
# Quality above 100 asks OpenCV's WebP encoder for lossless compression.
_ENCODE_FLAGS = {".png": [cv2.IMWRITE_PNG_COMPRESSION, 6], ".webp": [cv2.IMWRITE_WEBP_QUALITY, 101]}


def encode_lossless(array: np.ndarray, suffix: str = ".png") -> bytes:
    ok, buf = cv2.imencode(suffix, array, _ENCODE_FLAGS[suffix])
    if not ok:
        raise DataError(f"could not encode array of shape {array.shape} as {suffix}")
    return buf.tobytes()


def write_image(path: Path, image: np.ndarray) -> None:
    """Write an HxWx3 RGB uint8 image losslessly (format from the suffix: .webp or .png), as one channel when gray."""
    path = Path(path)
    stored = image[..., 0] if is_gray(image) else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    atomic_write_bytes(path, encode_lossless(np.ascontiguousarray(stored), path.suffix.lower()))


def image_file(root: Path, image_id: str) -> Path:
    """Where the cached image of `image_id` lies (WebP, or PNG in caches written that way)."""
    for suffix in IMAGE_SUFFIXES:
        path = Path(root) / "images" / f"{image_id}{suffix}"
        if path.is_file():
            return path
    return Path(root) / "images" / f"{image_id}{IMAGE_SUFFIXES[0]}"


def write_label(path: Path, label: np.ndarray) -> None:
    if label.max(initial=0) > np.iinfo(np.uint16).max:
        raise DataError(f"{path}: {label.max()} objects do not fit a uint16 label image")
    atomic_write_bytes(path, encode_lossless(label.astype(np.uint16), ".png"))


def read_image(path: Path) -> np.ndarray:
    """Read a cached image back as HxWx3 RGB uint8."""
    data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if data is None:
        raise DataError(f"{path}: missing or unreadable cached image (run `prepare` again)")
    if data.ndim == 2:
        return np.repeat(data[..., None], 3, axis=2)
    return cv2.cvtColor(data[..., :3], cv2.COLOR_BGR2RGB)


def read_label(path: Path) -> np.ndarray:
    data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if data is None:
        raise DataError(f"{path}: missing or unreadable cached label image (run `prepare` again)")
    return data.astype(np.int32)


class CachedDataset:
    """Read access to one cached dataset folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        index = self.root / INDEX
        if not index.is_file():
            raise DataError(f"{index}: no cache index; run `python -m nuclei prepare` first")
        self.index = pd.read_csv(index, dtype={"image_id": str})

    @property
    def ids(self) -> list[str]:
        return self.index["image_id"].tolist()

    def image(self, image_id: str) -> np.ndarray:
        return read_image(image_file(self.root, image_id))

    def label(self, image_id: str) -> np.ndarray:
        return read_label(self.root / "labels" / f"{image_id}.png")

    def has_labels(self) -> bool:
        return (self.root / "labels").is_dir()


def write_index(root: str | Path, rows: list[dict] | pd.DataFrame) -> Path:
    """Write index.csv last, so a cache with an index is a complete cache."""
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    path = Path(root) / INDEX
    atomic_write_text(path, frame.to_csv(index=False))
    return path
