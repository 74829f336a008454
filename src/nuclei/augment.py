"""Albumentations pipelines built from the `augment` section of a config.

Geometry is applied to the image and to its instance label image together (nearest-neighbour for labels, which keep
their ids); the 3 target channels are made from the augmented labels afterwards, so borders stay one pixel wide
whatever the zoom. Every transform has its probability (and strength) in the config; a probability of 0 leaves it out.
"""
from __future__ import annotations

import cv2
import albumentations as A

from .errors import ConfigError

REFLECT = cv2.BORDER_REFLECT_101


def _p(value) -> float:
    return float(value["p"] if isinstance(value, dict) else value)


def crop_transforms(aug: dict) -> list:
    size = aug["crop_size"]
    if aug["resize_256"]:  # the paper's V1 pipeline: the whole image squashed to one size
        return [A.Resize(size, size, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST)]
    return [A.PadIfNeeded(size, size, border_mode=REFLECT), A.RandomCrop(size, size)]


def geometric_transforms(aug: dict) -> list:
    """The paper's set: flips, rotations, zoom, shear (plus its future-work perspective and piecewise affine)."""
    candidates = [
        A.HorizontalFlip(p=_p(aug["flip"])),
        A.VerticalFlip(p=_p(aug["flip"])),
        A.RandomRotate90(p=_p(aug["rotate90"])),
        A.Affine(rotate=(-aug["rotate"]["limit"], aug["rotate"]["limit"]), border_mode=REFLECT, p=_p(aug["rotate"])),
        A.Affine(scale=tuple(aug["zoom"]["scale"]), border_mode=REFLECT, p=_p(aug["zoom"])),
        A.Affine(shear=(-aug["shear"]["limit"], aug["shear"]["limit"]), border_mode=REFLECT, p=_p(aug["shear"])),
        A.Perspective(scale=(0.02, 0.06), border_mode=REFLECT, p=_p(aug["perspective"])),
        # PiecewiseAffine costs about 2 s per 256x256 crop (measured); GridDistortion is the fast local warp.
        *([A.PiecewiseAffine(scale=(0.01, 0.03), nb_rows=4, nb_cols=4, p=_p(aug["piecewise_affine"]))]
          if _p(aug["piecewise_affine"]) > 0 else []),
        A.GridDistortion(num_steps=5, distort_limit=(-0.2, 0.2), border_mode=REFLECT, p=_p(aug["grid_distortion"])),
    ]
    return [t for t in candidates if t.p > 0]


def colour_transforms(aug: dict) -> list:
    """Channel shuffle (paper) and the future-work pixel-level set, plus stain, colour and inversion levers."""
    candidates = [
        A.ChannelShuffle(p=_p(aug["channel_shuffle"])),
        A.HEStain(method="random_preset", p=_p(aug["he_stain"])),
        A.HueSaturationValue(p=_p(aug["hue_saturation"])),
        A.ToGray(p=_p(aug["to_gray"])),
        A.InvertImg(p=_p(aug["invert"])),
        A.RandomBrightnessContrast(p=_p(aug["brightness_contrast"])),
        A.RandomGamma(p=_p(aug["gamma"])),
        A.Blur(blur_limit=(3, 5), p=_p(aug["blur"])),
        A.GaussNoise(std_range=(0.02, 0.08), p=_p(aug["gauss_noise"])),
        A.PixelDropout(dropout_prob=0.01, p=_p(aug["pixel_dropout"])),
        A.Emboss(p=_p(aug["emboss"])),
    ]
    return [t for t in candidates if t.p > 0]


def build_train_augment(aug: dict) -> A.Compose:
    """Crop first, so every later transform works on a crop-sized array (the cheap order)."""
    return A.Compose(crop_transforms(aug) + geometric_transforms(aug) + colour_transforms(aug))


def merge_overrides(base: dict, overrides: dict, kind: str) -> dict:
    """The augment section (without `by_type`) with one image type's overrides (`augment.by_type.<kind>`) laid over it."""
    merged = dict(base)
    for key, value in overrides.items():
        if key not in merged:
            raise ConfigError(f"augment.by_type.{kind}: unknown key '{key}'")
        merged[key] = {**merged[key], **value} if isinstance(merged[key], dict) and isinstance(value, dict) else value
    return merged


class TypeAugment:
    """One pipeline per image type (stain and colour strength may depend on the type), and a default one."""

    def __init__(self, default: A.Compose, by_type: dict[str, A.Compose] | None = None):
        self.default = default
        self.by_type = by_type or {}

    def __call__(self, kind: str | None = None, **data):
        return self.by_type.get(kind, self.default)(**data)

    def set_random_seed(self, seed: int) -> None:
        for offset, pipeline in enumerate([self.default, *self.by_type.values()]):
            pipeline.set_random_seed(seed + offset)


def build_augment(aug: dict) -> TypeAugment:
    by_type = aug.get("by_type") or {}
    base = {k: v for k, v in aug.items() if k != "by_type"}
    return TypeAugment(build_train_augment(base),
                       {kind: build_train_augment(merge_overrides(base, over or {}, kind)) for kind, over in by_type.items()})


def build_val_crop(size: int) -> A.Compose:
    """A deterministic centre crop (padded when smaller) for the per-epoch validation losses."""
    return A.Compose([A.PadIfNeeded(size, size, border_mode=REFLECT), A.CenterCrop(size, size)])
