"""Instance label image -> the paper's 3 target channels: full mask, borderless nuclei, touching borders.

Borderless nuclei are each nucleus eroded by a depth that shrinks for small nuclei, so no nucleus vanishes;
touching borders are the pixels where two different nuclei meet (within a small window), gaps between them included.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

CHANNELS = ("mask", "borderless", "touching")


def touching_borders(label: np.ndarray, size: int = 3) -> np.ndarray:
    """Pixels whose size x size neighbourhood holds two different nuclei."""
    if label.max(initial=0) == 0:
        return np.zeros(label.shape, bool)
    top = np.iinfo(np.int32).max
    highest = ndi.maximum_filter(label, size=size, mode="constant", cval=0)
    lowest = ndi.minimum_filter(np.where(label > 0, label, top), size=size, mode="constant", cval=top)
    return (highest > 0) & (lowest != top) & (highest != lowest)


def borderless_nuclei(label: np.ndarray, depth: float = 2.0) -> np.ndarray:
    """Each nucleus eroded by `depth` pixels, or by half its own thickness when it is thinner, so it never disappears."""
    foreground = label > 0
    if not foreground.any():
        return np.zeros(label.shape, bool)
    interior = foreground & ~find_boundaries(label, mode="inner")
    distance = ndi.distance_transform_edt(interior)
    # Thickness of each nucleus = its largest distance to its own edge; vectorised over objects.
    thickness = np.zeros(int(label.max()) + 1)
    ids = np.unique(label[foreground])
    thickness[ids] = ndi.maximum(distance, label, ids)
    threshold = np.minimum(depth, 0.5 * thickness)[label]
    return foreground & (distance >= threshold) & ((distance > 0) | (thickness[label] == 0))


def make_targets(label: np.ndarray, erosion_depth: float = 2.0, touching_size: int = 3) -> np.ndarray:
    """Stack (mask, borderless, touching) as a uint8 array of shape (3, H, W) with values 0/1."""
    label = np.asarray(label, np.int32)
    touching = touching_borders(label, touching_size)
    borderless = borderless_nuclei(label, erosion_depth) & ~touching
    # A nucleus made only of border pixels (a 1-2 px one pressed against another) keeps itself as its core,
    # so every nucleus has a marker.
    lost = np.setdiff1d(np.unique(label[label > 0]), np.unique(label[borderless]))
    if lost.size:
        borderless |= np.isin(label, lost)
    return np.stack([label > 0, borderless, touching]).astype(np.uint8)
