"""Tag an image with its imaging type from colour statistics.

fluorescence: dark background, bright nuclei (gray, or tinted but still dark);
brightfield: gray image with a bright background and dark nuclei;
histology: coloured stain (H&E and similar) on a bright background.
The three types stratify the folds and break every score down.
"""
from __future__ import annotations

import numpy as np

TYPES = ("fluorescence", "brightfield", "histology")
# Mean absolute channel difference (0..255) under which an image counts as gray.
GRAY_TOLERANCE = 2.0
# Background is the median intensity: fluorescence backgrounds are black, the others near white.
DARK_BACKGROUND = 100.0


def colourfulness(image: np.ndarray) -> float:
    rgb = image.astype(np.float32)
    return float(np.mean(np.abs(rgb[..., 0] - rgb[..., 1]) + np.abs(rgb[..., 1] - rgb[..., 2])) / 2)


def image_type(image: np.ndarray) -> str:
    """Classify an HxWx3 uint8 RGB image as fluorescence, brightfield or histology."""
    background = float(np.median(image.mean(axis=2)))
    if background < DARK_BACKGROUND:
        return "fluorescence"
    return "brightfield" if colourfulness(image) < GRAY_TOLERANCE else "histology"
