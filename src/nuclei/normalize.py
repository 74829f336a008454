"""Input normalisation modes, identical at train and predict time, stored with every checkpoint.

rgb: the image as it is; gray_invert: gray, bright backgrounds inverted so nuclei are always bright on dark,
percentile stretch; hematoxylin: the hematoxylin channel of a colour deconvolution (`skimage.color.rgb2hed`), which
turns H&E and stained brightfield images into fluorescence-like ones; per_type: one of these chosen by image type.
Every mode yields 3 channels scaled to [0, 1], then (x - mean) / std for the encoder.
"""
from __future__ import annotations

import numpy as np
from skimage.color import rgb2hed

from .data.modality import image_type

MODES = ("rgb", "gray_invert", "hematoxylin", "per_type")


def _stretch(channel: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    lo, hi = np.percentile(channel, percentiles)
    if hi - lo < 1e-6:
        return np.zeros_like(channel, dtype=np.float32)
    return np.clip((channel - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def gray_invert(image: np.ndarray, percentiles=(1.0, 99.0)) -> np.ndarray:
    gray = image.astype(np.float32).mean(axis=2)
    if np.median(gray) > 127:  # bright background: dark nuclei become bright, like fluorescence
        gray = 255.0 - gray
    return np.repeat(_stretch(gray, percentiles)[..., None], 3, axis=2)


def hematoxylin(image: np.ndarray, percentiles=(1.0, 99.0)) -> np.ndarray:
    h = rgb2hed(image)[..., 0].astype(np.float32)
    return np.repeat(_stretch(h, percentiles)[..., None], 3, axis=2)


def mode_for(mode: str, kind: str | None, per_type: dict[str, str]) -> str:
    """The concrete mode for an image: `per_type` routes by its type, other modes apply to every image."""
    if mode != "per_type":
        return mode
    if kind is None:
        raise ValueError("per_type normalisation needs the image type")
    return per_type.get(kind, "rgb")


def normalise(image: np.ndarray, mode: str = "rgb", kind: str | None = None, per_type: dict | None = None,
              percentiles=(1.0, 99.0), mean: float = 0.5, std: float = 0.5) -> np.ndarray:
    """HxWx3 uint8 RGB -> HxWx3 float32 model input. `kind` is the image type; detected when missing and needed."""
    if mode == "per_type" and kind is None:
        kind = image_type(image)
    concrete = mode_for(mode, kind, per_type or {})
    if concrete == "rgb":
        scaled = image.astype(np.float32) / 255.0
    elif concrete == "gray_invert":
        scaled = gray_invert(image, percentiles)
    elif concrete == "hematoxylin":
        scaled = hematoxylin(image, percentiles)
    else:
        raise ValueError(f"unknown normalisation mode {concrete!r} (valid: {MODES})")
    return (scaled - mean) / std


def normaliser_from_config(cfg: dict, mean: float = 0.5, std: float = 0.5):
    """A one-argument callable (image, kind) -> model input, built from the `input` section of a config."""
    section = cfg["input"]

    def apply(image: np.ndarray, kind: str | None = None) -> np.ndarray:
        return normalise(image, section["normalisation"], kind, section["per_type"], tuple(section["percentiles"]),
                         mean, std)

    return apply
