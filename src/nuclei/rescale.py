"""Test-time size rescaling, in the spirit of Cellpose's size model.

Nuclei in external images can be several times larger or smaller than those the network was trained on.
A first pass at scale 1 gives labels whose median equivalent diameter measures the image's nucleus size; the
image is then resized so that nuclei have the training size (`target_diameter`) and predicted again.

The second pass is post-processed at the rescaled size and its labels are brought back to the original
H x W with nearest-neighbour sampling (`back="labels"`, the default). This keeps small nuclei: `min_size`,
`min_marker_size` and the touching-border widths were tuned on nuclei of the training size, which is exactly
the size the second pass sees, whereas post-processing resized probabilities at the original size
(`back="probs"`) drops every nucleus under `min_size` pixels and blurs the thin touching borders that split
neighbours when the image was enlarged. `predict_rescaled_probs` still returns probabilities at the original
size for stages that store probabilities and post-process later (the test split, ensembles).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np
from skimage.segmentation import relabel_sequential
from tqdm import tqdm

from .data.cropper import median_nucleus_diameter

logger = logging.getLogger(__name__)

PredictFn = Callable[[np.ndarray], np.ndarray]  # HxWx3 uint8 image -> (3, H, W) probabilities
PostprocessFn = Callable[[np.ndarray], np.ndarray]  # (3, H, W) probabilities -> HxW int labels

DEFAULT_CLIP = (0.25, 4.0)
# A second pass that changes the nucleus size by less than this fraction is not worth its cost.
DEFAULT_TOLERANCE = 0.05
BACK_MODES = ("labels", "probs")


def estimate_diameter(label: np.ndarray) -> float:
    """Median equivalent diameter sqrt(4 area / pi) of the objects of a label image; nan when there are none."""
    return median_nucleus_diameter(label)


def rescale_factor(measured: float, target: float, clip: tuple[float, float] = DEFAULT_CLIP) -> float:
    """target / measured, clipped to `clip`; 1.0 when `measured` is nan, infinite or not positive."""
    if not target > 0:
        raise ValueError(f"target diameter must be positive, got {target}")
    if not np.isfinite(measured) or measured <= 0:
        return 1.0
    return float(np.clip(target / measured, *clip))


def scaled_shape(shape: tuple[int, int], factor: float) -> tuple[int, int]:
    """(H, W) multiplied by `factor`, rounded, at least 1 pixel each."""
    return max(1, round(shape[0] * factor)), max(1, round(shape[1] * factor))


def resize_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize an HxW(xC) image to `shape`: INTER_AREA when shrinking (no aliasing), INTER_LINEAR when enlarging."""
    height, width = shape
    if image.shape[:2] == (height, width):
        return image
    shrinking = height * width < image.shape[0] * image.shape[1]
    resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return resized.reshape((height, width) + image.shape[2:])


def resize_labels(label: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label image, ids renumbered 1..n (objects smaller than a sample step vanish)."""
    if label.shape == tuple(shape):
        return label.astype(np.int32, copy=False)
    # NEAREST_EXACT samples at pixel centres like INTER_LINEAR did for the image; INTER_NEAREST would shift the
    # labels by up to half a (scaled) pixel towards the origin.
    resized = cv2.resize(label.astype(np.int32), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST_EXACT)
    return relabel_sequential(resized.astype(np.int64))[0].astype(np.int32)


def resize_probs(probs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize (C, H, W) probabilities to (C, *shape): bilinear when enlarging, area average when shrinking."""
    channels_last = np.ascontiguousarray(np.asarray(probs, dtype=np.float32).transpose(1, 2, 0))
    return np.ascontiguousarray(resize_image(channels_last, shape).transpose(2, 0, 1))


@dataclass
class RescaledPrediction:
    """What the two passes found for one image."""

    label: np.ndarray  # HxW int32 at the original size
    diameter: float  # median nucleus diameter of the first-pass labels (nan: no objects)
    factor: float  # scale of the second pass; 1.0 when it was skipped
    probs: np.ndarray | None = None  # (3, H, W) at the original size, when asked for


def rescaled_prediction(predict_fn: PredictFn, postprocess_fn: PostprocessFn, image: np.ndarray,
                        target_diameter: float, clip: tuple[float, float] = DEFAULT_CLIP,
                        tolerance: float = DEFAULT_TOLERANCE, back: str = "labels") -> RescaledPrediction:
    """Two-pass prediction: measure the nucleus size at scale 1, predict again at target / measured.

    `back="labels"` post-processes at the rescaled size and resizes the labels back (nearest); `back="probs"`
    resizes the probabilities back (`resize_probs`) and post-processes at the original size, and also returns them.
    Without objects in the first pass, or a factor within `tolerance` of 1, the first pass is the result.
    """
    if back not in BACK_MODES:
        raise ValueError(f"back must be one of {BACK_MODES}, got {back!r}")
    shape = image.shape[:2]
    probs = predict_fn(image)
    label = np.asarray(postprocess_fn(probs), dtype=np.int32)
    diameter = estimate_diameter(label)
    factor = rescale_factor(diameter, target_diameter, clip)
    if abs(factor - 1.0) <= tolerance:
        return RescaledPrediction(label, diameter, 1.0, probs if back == "probs" else None)
    scaled_probs = predict_fn(resize_image(image, scaled_shape(shape, factor)))
    logger.debug("nucleus diameter %.1f px -> rescale x%.2f to %s", diameter, factor, scaled_probs.shape[1:])
    if back == "labels":
        return RescaledPrediction(resize_labels(np.asarray(postprocess_fn(scaled_probs)), shape), diameter, factor)
    probs = resize_probs(scaled_probs, shape)
    return RescaledPrediction(np.asarray(postprocess_fn(probs), dtype=np.int32), diameter, factor, probs)


def predict_rescaled(predict_fn: PredictFn, postprocess_fn: PostprocessFn, image: np.ndarray,
                     target_diameter: float, clip: tuple[float, float] = DEFAULT_CLIP,
                     tolerance: float = DEFAULT_TOLERANCE) -> np.ndarray:
    """Labels (HxW int32, the image's own size) of a prediction made at the scale where nuclei are
    `target_diameter` pixels across; see `rescaled_prediction`."""
    return rescaled_prediction(predict_fn, postprocess_fn, image, target_diameter, clip, tolerance).label


def predict_rescaled_probs(predict_fn: PredictFn, postprocess_fn: PostprocessFn, image: np.ndarray,
                           target_diameter: float, clip: tuple[float, float] = DEFAULT_CLIP,
                           tolerance: float = DEFAULT_TOLERANCE) -> np.ndarray:
    """Probabilities (3, H, W) at the image's own size from the rescaled second pass, for stages that store
    probabilities and post-process them later."""
    return rescaled_prediction(predict_fn, postprocess_fn, image, target_diameter, clip, tolerance,
                               back="probs").probs


def training_median_diameter(cache, ids: Iterable[str]) -> float:
    """Median over images of each image's median nucleus diameter (images without objects ignored); nan if none.

    `cache` is a `data.cache.CachedDataset` (anything with `.label(image_id)`).
    """
    ids = list(ids)
    diameters = np.array([estimate_diameter(cache.label(i)) for i in tqdm(ids, desc="nucleus sizes", unit="img",
                                                                          disable=len(ids) < 50)])
    diameters = diameters[np.isfinite(diameters)]
    return float(np.median(diameters)) if diameters.size else float("nan")


def resolve_target_diameter(cfg: dict) -> float:
    """`infer.target_diameter`, or the median nucleus diameter of the cached training split when it is null."""
    from .data.cache import CachedDataset
    from .errors import ConfigError

    target = cfg["infer"]["target_diameter"]
    if target is not None:
        if not float(target) > 0:
            raise ConfigError(f"infer.target_diameter must be positive, got {target!r}")
        return float(target)
    cache = CachedDataset(Path(cfg["data"]["cache"]) / cfg["data"]["train_split"])
    target = training_median_diameter(cache, cache.ids)
    if not np.isfinite(target):
        raise ConfigError(f"{cache.root}: no labelled nuclei to measure; set infer.target_diameter")
    logger.info("target nucleus diameter %.1f px (median of %s)", target, cache.root)
    return target
