"""Cut an image + instance label into fixed-size tiles, and rescale samples to a common nucleus size.

Tiles cover the whole image: starts step by `stride` and the last row/column of tiles is aligned to the image
border, so no pixel is lost (the last tiles overlap their neighbours instead). Images smaller than a tile are
padded at the bottom/right (reflect for the image, 0 for the label) and the tile says so. Objects cut by a tile
border stay as partial objects; ids are renumbered 1..n inside each tile.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np
from skimage.segmentation import relabel_sequential

logger = logging.getLogger(__name__)


@dataclass
class Tile:
    """One crop. Iterates as (y, x, image, label) so it unpacks like a tuple."""

    y: int
    x: int
    image: np.ndarray  # size x size x 3 uint8
    label: np.ndarray  # size x size int32, objects 1..n
    valid_height: int  # rows of real image in the tile; the rest is padding
    valid_width: int
    foreground: float  # foreground fraction of the real (unpadded) part

    def __iter__(self):
        return iter((self.y, self.x, self.image, self.label))

    @property
    def padded(self) -> bool:
        return self.valid_height < self.image.shape[0] or self.valid_width < self.image.shape[1]


def tile_starts(length: int, size: int, stride: int) -> list[int]:
    """Start offsets along one axis: every `stride`, plus a last one flush with the border."""
    if size < 1 or not 1 <= stride <= size:
        raise ValueError(f"need size >= 1 and 1 <= stride <= size (got size={size}, stride={stride}): "
                         "a stride larger than the tile would leave pixels out")
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def _pad_to(image: np.ndarray, label: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    pad_h, pad_w = max(size - image.shape[0], 0), max(size - image.shape[1], 0)
    if not (pad_h or pad_w):
        return image, label
    logger.debug("padding a %dx%d image to %dx%d (reflect image, zero label)", *image.shape[:2], size, size)
    # numpy's reflect repeats the reflection when the pad is wider than the image, so any size works.
    mode = "reflect" if min(image.shape[:2]) > 1 else "edge"
    image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode=mode)
    label = np.pad(label, ((0, pad_h), (0, pad_w)), mode="constant")
    return image, label


def crop_tiles(image: np.ndarray, label: np.ndarray, size: int = 256, stride: int | None = None,
               min_foreground: float = 0.02) -> list[Tile]:
    """Tiles of `size` x `size` covering the image; tiles whose foreground fraction (over their real pixels)
    is below `min_foreground` are skipped (0 keeps all). `stride` defaults to `size` (no overlap except the
    border-aligned last tiles)."""
    if image.shape[:2] != label.shape:
        raise ValueError(f"image {image.shape[:2]} and label {label.shape} differ in size")
    stride = size if stride is None else stride
    height, width = label.shape
    ys, xs = tile_starts(height, size, stride), tile_starts(width, size, stride)
    padded_image, padded_label = _pad_to(image, label, size)
    tiles = []
    for y in ys:
        for x in xs:
            valid_h, valid_w = min(size, height - y), min(size, width - x)
            foreground = float(np.count_nonzero(label[y:y + valid_h, x:x + valid_w])) / (valid_h * valid_w)
            if foreground < min_foreground:
                continue
            crop_label = relabel_sequential(padded_label[y:y + size, x:x + size].astype(np.int64))[0]
            tiles.append(Tile(y, x, np.ascontiguousarray(padded_image[y:y + size, x:x + size]),
                              crop_label.astype(np.int32), valid_h, valid_w, foreground))
    return tiles


def rescale_sample(image: np.ndarray, label: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Resize image (linear) and label (nearest) by `scale`; objects that vanish are dropped, ids renumbered."""
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    if scale == 1:
        return image, label
    height, width = label.shape
    size = (max(1, round(width * scale)), max(1, round(height * scale)))  # cv2 wants (width, height)
    resized_image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    # NEAREST_EXACT samples at pixel centres like INTER_LINEAR; plain INTER_NEAREST shifts labels by up to
    # half a pixel towards the origin relative to the image.
    resized_label = cv2.resize(label.astype(np.int32), size, interpolation=cv2.INTER_NEAREST_EXACT)
    return resized_image, relabel_sequential(resized_label.astype(np.int64))[0].astype(np.int32)


def median_nucleus_diameter(label: np.ndarray) -> float:
    """Median equivalent diameter sqrt(4 area / pi) of the objects; nan when there are none."""
    areas = np.bincount(label.ravel().astype(np.int64))[1:]
    areas = areas[areas > 0]
    if areas.size == 0:
        return float("nan")
    return float(np.median(np.sqrt(4.0 * areas / np.pi)))


def scale_to_target(label: np.ndarray, target_diameter: float) -> float:
    """Scale that brings the median nucleus diameter to `target_diameter` (1.0 for an empty label)."""
    if target_diameter <= 0:
        raise ValueError(f"target_diameter must be positive, got {target_diameter}")
    diameter = median_nucleus_diameter(label)
    return 1.0 if not np.isfinite(diameter) or diameter == 0 else float(target_diameter / diameter)
