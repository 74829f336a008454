"""Probability maps -> instance labels (marker watershed or random walker), and threshold tuning.

Probabilities are arrays of shape (3, H, W): channel 0 = full nucleus mask, 1 = borderless (shrunk)
nuclei, 2 = touching borders between nuclei. Seeds are "borderless and not touching": the touching
channel cuts apart shrunk nuclei that still bridge, so each nucleus gets its own marker.
Everything here is a pure function of the probabilities, so thresholds can be tuned on saved
out-of-fold predictions without running the network again.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage
from skimage.segmentation import random_walker, watershed

from .errors import ConfigError

logger = logging.getLogger(__name__)

MASK, BORDERLESS, TOUCHING = 0, 1, 2
METHODS = ("watershed", "random_walker")
_RW_DIRECT_MAX_PIXELS = 200_000

ScoreFn = Callable[[np.ndarray, np.ndarray], float]


@dataclass(frozen=True)
class PostprocessParams:
    """Thresholds and sizes that turn probabilities into labels; `rw_beta` only affects random_walker."""

    method: str = "watershed"
    t_borderless: float = 0.5
    t_touching: float = 0.5
    t_mask: float = 0.5
    min_size: int = 10
    min_marker_size: int = 5
    fill_holes: bool = True
    rw_beta: float = 130.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"postprocess method {self.method!r} is not one of {METHODS}")
        for name in ("t_borderless", "t_touching", "t_mask"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"postprocess {name}={value} is outside [0, 1]")
        for name in ("min_size", "min_marker_size"):
            if getattr(self, name) < 0:
                raise ConfigError(f"postprocess {name}={getattr(self, name)} is negative")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "PostprocessParams":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown postprocess keys {unknown}; known keys are {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "PostprocessParams":
        return dataclasses.replace(self, **changes)


def _check_probs(probs: np.ndarray) -> None:
    if probs.ndim != 3 or probs.shape[0] != 3:
        raise ValueError(f"probabilities must have shape (3, H, W), got {probs.shape}")


def _remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Zero out labels with fewer than `min_size` pixels (one bincount, no loop over objects)."""
    if min_size <= 1 or labels.max() == 0:
        return labels
    sizes = np.bincount(labels.ravel())
    too_small = sizes < min_size
    too_small[0] = False
    if too_small.any():
        labels = labels.copy()
        labels[too_small[labels]] = 0
    return labels


def _relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Map the ids present to 1..n in order, through one lookup table."""
    present = np.flatnonzero(np.bincount(labels.ravel()))
    present = present[present > 0]
    lookup = np.zeros(int(labels.max(initial=0)) + 1, dtype=np.int32)
    lookup[present] = np.arange(1, len(present) + 1, dtype=np.int32)
    return lookup[labels]


def _fill_holes_per_object(labels: np.ndarray) -> np.ndarray:
    """Fill background holes enclosed by a single object; gaps enclosed by several touching objects stay empty.

    Holes of the foreground union are the background components that do not reach the image edge
    (one ndimage.label); only objects next to one are visited, each in its bounding box.
    """
    background, n_background = ndimage.label(labels == 0)
    not_hole = np.zeros(n_background + 1, dtype=bool)
    not_hole[0] = True  # foreground
    not_hole[background[0]] = not_hole[background[-1]] = True
    not_hole[background[:, 0]] = not_hole[background[:, -1]] = True
    holes = ~not_hole[background]
    if not holes.any():
        return labels
    # Holes never touch the image edge, so their 4-neighbours are always inside the image.
    rows, cols = np.nonzero(holes)
    neighbours = np.concatenate(
        [labels[rows - 1, cols], labels[rows + 1, cols], labels[rows, cols - 1], labels[rows, cols + 1]]
    )
    candidates = np.unique(neighbours[neighbours > 0])
    boxes = ndimage.find_objects(labels)
    labels = labels.copy()
    for label_id in candidates:
        crop = labels[boxes[label_id - 1]]
        filled = ndimage.binary_fill_holes(crop == label_id)
        crop[filled & (crop == 0)] = label_id
    return labels


def _finish(labels: np.ndarray, params: PostprocessParams) -> np.ndarray:
    labels = _remove_small(labels.astype(np.int32, copy=False), params.min_size)
    if params.fill_holes:
        labels = _fill_holes_per_object(labels)
    return _relabel_sequential(labels)


def markers_from_probs(probs: np.ndarray, params: PostprocessParams) -> np.ndarray:
    """Connected components of (borderless > t_borderless) & ~(touching > t_touching), small ones removed."""
    _check_probs(probs)
    seeds = (probs[BORDERLESS] > params.t_borderless) & ~(probs[TOUCHING] > params.t_touching)
    markers, _ = ndimage.label(seeds)
    markers = _remove_small(markers.astype(np.int32), params.min_marker_size)
    return _relabel_sequential(markers)


def _mask_and_markers(probs: np.ndarray, params: PostprocessParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Foreground mask, its components, and markers in which every component has at least one marker.

    A faint nucleus can pass the mask threshold without any seed; it becomes its own marker so it is
    kept as an object instead of vanishing.
    """
    mask = probs[MASK] > params.t_mask
    markers = markers_from_probs(probs, params)
    markers[~mask] = 0
    components, n_components = ndimage.label(mask)
    has_marker = np.zeros(n_components + 1, dtype=bool)
    has_marker[components[markers > 0]] = True
    has_marker[0] = True
    unmarked = ~has_marker[components]
    if unmarked.any():
        markers = np.where(unmarked, components + markers.max(), markers).astype(np.int32)
    return mask, components, markers


def watershed_labels(probs: np.ndarray, params: PostprocessParams) -> np.ndarray:
    """Marker watershed on the inverted mask probability, restricted to mask > t_mask."""
    _check_probs(probs)
    mask, _, markers = _mask_and_markers(probs, params)
    if not mask.any():
        return np.zeros(mask.shape, dtype=np.int32)
    relief = -probs[MASK].astype(np.float32)
    labels = watershed(relief, markers, mask=mask)
    return _finish(labels, params)


def random_walker_labels(probs: np.ndarray, params: PostprocessParams) -> np.ndarray:
    """Random walker from the same markers, solved per mask component in its bounding box.

    The walker diffuses over the mask probability with the touching borders carved out, so it
    splits at contact lines. Components with a single marker need no solve: they are that object.
    """
    _check_probs(probs)
    mask, components, markers = _mask_and_markers(probs, params)
    labels = np.zeros(mask.shape, dtype=np.int32)
    if not mask.any():
        return labels
    relief = (probs[MASK].astype(np.float32) * (1.0 - probs[TOUCHING].astype(np.float32)))
    next_id = 1
    for component_id, box in enumerate(ndimage.find_objects(components), start=1):
        inside = components[box] == component_id
        crop_markers = np.where(inside, markers[box], 0)
        ids = np.unique(crop_markers[inside])
        ids = ids[ids > 0]
        out = labels[box]
        if len(ids) == 1:
            out[inside] = next_id
            next_id += 1
            continue
        # Consecutive seed ids (random_walker renumbers otherwise); -1 = pixels outside this component.
        lookup = np.zeros(int(ids.max()) + 1, dtype=np.int32)
        lookup[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
        seeds = np.where(inside, lookup[crop_markers], -1).astype(np.int32)
        crop_relief = relief[box]
        if np.ptp(crop_relief) == 0:
            # random_walker scales beta by the data's spread and divides by zero on a flat crop;
            # with no contrast the nearest seed is the only sensible choice.
            walked = watershed(np.zeros(seeds.shape, np.float32), np.maximum(seeds, 0), mask=inside)
        else:
            # A direct LU solve is fastest for nucleus-sized crops; very large clumps use conjugate gradients.
            mode = "bf" if inside.size <= _RW_DIRECT_MAX_PIXELS else "cg_j"
            walked = random_walker(crop_relief, seeds, beta=params.rw_beta, mode=mode)
        out[inside] = walked[inside] + (next_id - 1)
        next_id += len(ids)
    return _finish(labels, params)


def labels_from_probs(probs: np.ndarray, params: PostprocessParams) -> np.ndarray:
    """Instance labels (int32, 0 = background, 1..n sequential) with the method named in `params`."""
    if params.method == "watershed":
        return watershed_labels(probs, params)
    return random_walker_labels(probs, params)


def _mean_score(
    probs_list: Sequence[np.ndarray], truths_list: Sequence[np.ndarray], params: PostprocessParams, score_fn: ScoreFn
) -> float:
    scores = [score_fn(truth, labels_from_probs(probs, params)) for probs, truth in zip(probs_list, truths_list)]
    return float(np.mean(scores))


def tune(
    probs_list: Sequence[np.ndarray],
    truths_list: Sequence[np.ndarray],
    grid: Mapping[str, Sequence[Any]],
    base: PostprocessParams,
    score_fn: ScoreFn,
    rounds: int = 2,
) -> tuple[PostprocessParams, float, float, pd.DataFrame]:
    """Coordinate-wise grid search maximising the mean of score_fn(truth, labels) over images.

    For each parameter in grid order, try its values holding the others and keep the best; repeat
    `rounds` times. Ties keep the current value, so the result never scores below `base`.
    Returns (best params, best score, baseline score of `base`, table of every setting tried).
    """
    if len(probs_list) != len(truths_list) or not probs_list:
        raise ValueError(f"need as many truths as probabilities (>0), got {len(probs_list)} and {len(truths_list)}")
    known = {f.name for f in dataclasses.fields(PostprocessParams)}
    unknown = sorted(set(grid) - known)
    if unknown:
        raise ConfigError(f"unknown postprocess keys in tuning grid {unknown}; known keys are {sorted(known)}")

    cache: dict[tuple, float] = {}
    rows: list[dict[str, Any]] = []

    def evaluate(params: PostprocessParams, round_no: int, varied: str) -> float:
        key = tuple(sorted(params.to_dict().items()))
        if key not in cache:
            cache[key] = _mean_score(probs_list, truths_list, params, score_fn)
            rows.append({"round": round_no, "varied": varied, **params.to_dict(), "score": cache[key]})
        return cache[key]

    best = base
    baseline = best_score = evaluate(base, 0, "baseline")
    for round_no in range(1, rounds + 1):
        for name, values in grid.items():
            for value in values:
                candidate = best.replace(**{name: value})
                score = evaluate(candidate, round_no, name)
                if score > best_score:
                    best, best_score = candidate, score
        logger.info("tuning round %d: best score %.4f (baseline %.4f)", round_no, best_score, baseline)
    return best, best_score, baseline, pd.DataFrame(rows)


def tune_by_type(
    probs_list: Sequence[np.ndarray],
    truths_list: Sequence[np.ndarray],
    types: Sequence[Hashable],
    grid: Mapping[str, Sequence[Any]],
    base: PostprocessParams,
    score_fn: ScoreFn,
    min_images: int = 5,
    global_params: PostprocessParams | None = None,
    rounds: int = 2,
) -> dict[Hashable, PostprocessParams]:
    """Parameters per image type; types with fewer than `min_images` images get the global parameters.

    The global parameters are tuned over all images unless given, and each type's search starts from them.
    """
    if len(types) != len(probs_list):
        raise ValueError(f"need one type per image, got {len(types)} types for {len(probs_list)} images")
    if global_params is None:
        global_params, *_ = tune(probs_list, truths_list, grid, base, score_fn, rounds=rounds)
    by_type: dict[Hashable, PostprocessParams] = {}
    for image_type in dict.fromkeys(types):
        index = [i for i, t in enumerate(types) if t == image_type]
        if len(index) < min_images:
            logger.info("type %s: %d images < %d, using global parameters", image_type, len(index), min_images)
            by_type[image_type] = global_params
            continue
        params, score, baseline, _ = tune(
            [probs_list[i] for i in index], [truths_list[i] for i in index], grid, global_params, score_fn, rounds=rounds
        )
        logger.info("type %s: %d images, score %.4f (global parameters %.4f)", image_type, len(index), score, baseline)
        by_type[image_type] = params
    return by_type


def params_for_type(
    params_by_type: Mapping[Hashable, PostprocessParams], image_type: Hashable, default: PostprocessParams
) -> PostprocessParams:
    """The parameters tuned for `image_type`, or `default` for a type that was not tuned."""
    return params_by_type.get(image_type, default)
