"""Image -> probability maps: padding to the network stride, dihedral TTA, scales, and model averaging.

Models map a normalised float tensor (B, 3, H, W), H and W multiples of 32, to (B, 3, H, W) logits
(mask, borderless, touching). Every prediction here comes back at the input's own H x W.
"""
from __future__ import annotations

import logging
import os
from typing import Sequence

import cv2
import numpy as np
import torch
from torch import nn

from .atomic import atomic_write
from .errors import DataError

logger = logging.getLogger(__name__)

DIHEDRAL = 8
# TTA sets by size: identity; + horizontal flip; the four flips (id, hflip, vflip, rot180); all eight.
_TTA_SETS = {1: [0], 2: [0, 4], 4: [0, 4, 6, 2], 8: list(range(DIHEDRAL))}


def pad_to_multiple(
    image: np.ndarray, multiple: int = 32, mode: str = "reflect"
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Pad H x W (x C) up to multiples of `multiple`, split evenly with the extra pixel at bottom/right.

    Returns the padded image and (top, bottom, left, right). Reflection needs at least two pixels
    along an axis, so a 1-pixel axis is padded with "symmetric" (which repeats the pixel) instead.
    """
    if image.ndim < 2 or multiple < 1:
        raise ValueError(f"need an H x W (x C) image and multiple >= 1, got shape {image.shape}, multiple {multiple}")
    pads: list[tuple[int, int]] = []
    for size in image.shape[:2]:
        total = -size % multiple
        pads.append((total // 2, total - total // 2))
    padded = image
    for axis, pad in enumerate(pads):
        if pad == (0, 0):
            continue
        axis_mode = "symmetric" if mode == "reflect" and image.shape[axis] < 2 else mode
        widths = [(0, 0)] * image.ndim
        widths[axis] = pad
        padded = np.pad(padded, widths, mode=axis_mode)
    (top, bottom), (left, right) = pads
    return padded, (top, bottom, left, right)


def crop_padding(array: np.ndarray | torch.Tensor, pads: tuple[int, int, int, int]):
    """Undo `pad_to_multiple` on an array whose last two axes are H and W."""
    top, bottom, left, right = pads
    height, width = array.shape[-2:]
    return array[..., top : height - bottom, left : width - right]


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """Transform k of the dihedral group on the last two axes: rot90 by k % 4, then a horizontal flip if k >= 4."""
    if not 0 <= k < DIHEDRAL:
        raise ValueError(f"dihedral transform index must be in 0..7, got {k}")
    x = torch.rot90(x, k % 4, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if k >= 4 else x


def dihedral_inverse(x: torch.Tensor, k: int) -> torch.Tensor:
    """Exact inverse of `dihedral(x, k)`: undo the flip, then rotate back."""
    if not 0 <= k < DIHEDRAL:
        raise ValueError(f"dihedral transform index must be in 0..7, got {k}")
    if k >= 4:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, -(k % 4), dims=(-2, -1))


def tta_transforms(n: int) -> list[int]:
    """Dihedral indices for n TTA variants: 1 = identity, 2 = + hflip, 4 = flips, 8 = all dihedral."""
    if n not in _TTA_SETS:
        raise ValueError(f"TTA size must be one of {sorted(_TTA_SETS)}, got {n}")
    return list(_TTA_SETS[n])


def average_probs(probs_list: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """Weighted mean of equally shaped probability arrays (weights normalised; default equal), as float32."""
    if not probs_list:
        raise ValueError("nothing to average")
    shapes = {p.shape for p in probs_list}
    if len(shapes) != 1:
        raise ValueError(f"probability arrays differ in shape: {sorted(shapes)}")
    if weights is None:
        weights = [1.0] * len(probs_list)
    if len(weights) != len(probs_list):
        raise ValueError(f"{len(weights)} weights for {len(probs_list)} probability arrays")
    weights_arr = np.asarray(weights, dtype=np.float64)
    if (weights_arr < 0).any() or weights_arr.sum() <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
    weights_arr = weights_arr / weights_arr.sum()
    total = np.zeros(probs_list[0].shape, dtype=np.float32)
    for probs, weight in zip(probs_list, weights_arr):
        total += np.float32(weight) * probs.astype(np.float32, copy=False)
    return total


def save_probs(path: str | os.PathLike, probs: np.ndarray) -> None:
    """Save probabilities as float16 .npy (half the size; ample precision for thresholds), atomically."""
    with atomic_write(path, "wb") as handle:
        np.save(handle, np.asarray(probs, dtype=np.float16), allow_pickle=False)


def load_probs(path: str | os.PathLike) -> np.ndarray:
    """Load probabilities saved by `save_probs` as float32 of shape (3, H, W)."""
    try:
        probs = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: cannot read probabilities ({error})") from error
    if probs.ndim != 3 or probs.shape[0] != 3:
        raise DataError(f"{path}: probabilities must have shape (3, H, W), got {probs.shape}")
    return probs.astype(np.float32)


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """cv2.resize an H x W x C array, keeping the channel axis even when C == 1."""
    if image.shape[:2] == (height, width):
        return image
    resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    return resized.reshape(height, width, image.shape[2])


def _forward_tta(
    model: nn.Module,
    x: torch.Tensor,
    transforms: Sequence[int],
    max_batch: int,
    amp_dtype: torch.dtype | None,
) -> torch.Tensor:
    """Mean over `transforms` of sigmoid(model(T(x))) mapped back by T^-1, for x of shape (N, 3, H, W).

    One forward pass holds at most `max_batch` inputs (images x variants), but always at least all N images.
    """
    autocast = amp_dtype is not None and x.device.type == "cuda"
    total = torch.zeros((x.shape[0], 3) + tuple(x.shape[-2:]), dtype=torch.float32, device=x.device)
    per_forward = max(1, max_batch // x.shape[0])
    # Odd rotations swap H and W, so variants of different shapes go in separate batches.
    groups = [[k for k in transforms if k % 2 == parity] for parity in (0, 1)]
    for group in groups:
        for start in range(0, len(group), per_forward):
            chunk = group[start : start + per_forward]
            batch = torch.cat([dihedral(x, k) for k in chunk])
            with torch.autocast(x.device.type, dtype=amp_dtype, enabled=autocast):
                logits = model(batch)
            probs = torch.sigmoid(logits.float()).reshape(len(chunk), *total.shape[:2], *batch.shape[-2:])
            for k, prob in zip(chunk, probs):
                total += dihedral_inverse(prob, k)
    return total / len(transforms)


def _predict_scale(
    model: nn.Module,
    images: Sequence[np.ndarray],
    scale: float,
    transforms: Sequence[int],
    device: torch.device,
    max_batch: int,
    amp_dtype: torch.dtype | None,
) -> list[np.ndarray]:
    """TTA-averaged probabilities of one model at one scale for same-sized images, back at their H x W."""
    height, width = images[0].shape[:2]
    scaled_h, scaled_w = max(1, round(height * scale)), max(1, round(width * scale))
    padded = []
    for image in images:
        pad, pads = pad_to_multiple(_resize(image, scaled_h, scaled_w), 32)
        padded.append(pad.transpose(2, 0, 1))
    # Same-sized images get the same padding, so the last `pads` serves them all.
    x = torch.from_numpy(np.ascontiguousarray(np.stack(padded))).to(device=device, dtype=torch.float32)
    probs = crop_padding(_forward_tta(model, x, transforms, max_batch, amp_dtype), pads).cpu().numpy()
    return [np.ascontiguousarray(_resize(p.transpose(1, 2, 0), height, width).transpose(2, 0, 1)) for p in probs]


def inputs_per_forward(height: int, width: int, batch_size: int, reference: int = 256) -> int:
    """How many network inputs of height x width fit the memory of `batch_size` inputs of reference x reference."""
    return max(1, (batch_size * reference * reference) // max(1, height * width))


def predict_probs(
    models: Sequence[nn.Module],
    image: np.ndarray,
    tta: int = 8,
    scales: Sequence[float] = (1.0,),
    weights: Sequence[float] | None = None,
    device: str | torch.device = "cpu",
    amp_dtype: torch.dtype | None = None,
    max_batch: int = 8,
) -> np.ndarray:
    """Probabilities (3, H, W) float32 for a normalised H x W x 3 float32 image.

    Each model's prediction is averaged over the TTA variants and scales; the models (folds, or
    different networks) are then averaged with `weights`. Models are moved to `device` and run in
    eval mode (their previous mode is restored); autocast with `amp_dtype` is used on CUDA only.
    `max_batch` caps how many TTA variants go through one forward pass.
    """
    return predict_probs_batch(models, [image], tta, scales, weights, device, amp_dtype, max_batch)[0]


def predict_probs_batch(
    models: Sequence[nn.Module],
    images: Sequence[np.ndarray],
    tta: int = 8,
    scales: Sequence[float] = (1.0,),
    weights: Sequence[float] | None = None,
    device: str | torch.device = "cpu",
    amp_dtype: torch.dtype | None = None,
    max_batch: int = 8,
) -> list[np.ndarray]:
    """`predict_probs` for several images of one size, sharing forward passes (at most `max_batch` inputs each)."""
    if not images:
        return []
    for image in images:
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be H x W x 3, got shape {image.shape}")
    if len({image.shape for image in images}) != 1:
        raise ValueError(f"images of one batch must share a size, got {sorted({i.shape for i in images})}")
    if not models:
        raise ValueError("need at least one model")
    if not scales or min(scales) <= 0:
        raise ValueError(f"scales must be positive, got {list(scales)}")
    transforms = tta_transforms(tta)
    device = torch.device(device)
    images = [np.asarray(image, dtype=np.float32) for image in images]
    per_model = []
    with torch.inference_mode():
        for model in models:
            was_training = model.training
            model.to(device).eval()
            try:
                per_scale = [
                    _predict_scale(model, images, scale, transforms, device, max_batch, amp_dtype) for scale in scales
                ]
            finally:
                model.train(was_training)
            per_model.append([average_probs([s[i] for s in per_scale]) for i in range(len(images))])
    return [average_probs([m[i] for m in per_model], weights) for i in range(len(images))]
