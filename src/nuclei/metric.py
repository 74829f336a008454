"""The 2018 Data Science Bowl metric: mean over images of the precision TP/(TP+FP+FN), averaged over IoU thresholds.

A predicted object hits a true one when their IoU is strictly greater than the threshold t (0.50, 0.55, ..., 0.95).
At t >= 0.5 each object has at most one partner with IoU > t, so TP(t) is simply the number of pairs with IoU > t.
An image with no objects on either side scores 1; objects on one side only scores 0.
One overlap matrix per image from a bincount over (true, pred) label pairs, as in stardist/matching.py.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pandas as pd
from tqdm import tqdm

from .errors import DataError
from .submission import read_solution, read_submission_labels

logger = logging.getLogger(__name__)

IOU_THRESHOLDS = np.round(np.arange(0.5, 1.0, 0.05), 2)


def _dense_fits(high_true: int, high_pred: int, n_pixels: int) -> bool:
    """Whether a dense (ids x ids) overlap matrix costs no more than a few passes over the image."""
    return (high_true + 1) * (high_pred + 1) <= 4 * n_pixels + (1 << 16)


@dataclass(frozen=True)
class MatchCounts:
    """Per-threshold counts for one image (arrays aligned with IOU_THRESHOLDS)."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    n_true: int
    n_pred: int


def _check_label(label: np.ndarray, name: str) -> tuple[np.ndarray, int]:
    """The label image as integers, and its largest id."""
    label = np.asarray(label)
    if label.dtype == bool:
        label = label.view(np.uint8)
    if not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"{name} label image must be integer, got dtype {label.dtype}")
    if label.size == 0:
        return label, 0
    if label.min() < 0:
        raise ValueError(f"{name} label image has negative ids")
    return label, int(label.max())


def _compact(flat: np.ndarray) -> tuple[np.ndarray, int]:
    """Renumber the ids of a flat label image to 0..n in sorted order (0 stays background)."""
    ids, inverse = np.unique(flat, return_inverse=True)
    return (inverse + 1 if ids[0] != 0 else inverse), len(ids) - int(ids[0] == 0)


def _overlaps(true_label: np.ndarray, pred_label: np.ndarray):
    """Overlap of all (true, pred) object pairs that share pixels, and every object's area.

    Returns (ti, pi, inter, true_area, pred_area) where ti, pi index true_area and pred_area; ids absent from an
    image keep area 0 and take part in no pair, so labels need not be contiguous.
    """
    true_label, high_true = _check_label(true_label, "true")
    pred_label, high_pred = _check_label(pred_label, "predicted")
    if true_label.shape != pred_label.shape:
        raise ValueError(f"true and predicted label images differ in shape: {true_label.shape} vs {pred_label.shape}")
    # the same pixel order on both sides, without copying F-ordered images
    order = "F" if true_label.flags.f_contiguous and pred_label.flags.f_contiguous else "C"
    t, p = true_label.ravel(order=order), pred_label.ravel(order=order)
    if not _dense_fits(high_true, high_pred, t.size):  # huge or sparse ids: renumber them first
        (t, high_true), (p, high_pred) = _compact(t), _compact(p)
    if _dense_fits(high_true, high_pred, t.size):
        keys = t.astype(np.intp)
        keys *= high_pred + 1
        keys += p
        overlap = np.bincount(keys, minlength=(high_true + 1) * (high_pred + 1)).reshape(high_true + 1, high_pred + 1)
        true_area, pred_area = overlap.sum(axis=1), overlap.sum(axis=0)
        ti, pi = np.nonzero(overlap[1:, 1:])
        ti, pi = ti + 1, pi + 1
        return ti, pi, overlap[ti, pi], true_area, pred_area
    # more objects than a dense matrix allows: count the pairs that occur
    true_area = np.bincount(t, minlength=high_true + 1)
    pred_area = np.bincount(p, minlength=high_pred + 1)
    both = (t > 0) & (p > 0)
    keys, inter = np.unique(t[both].astype(np.int64) * (high_pred + 1) + p[both], return_counts=True)
    ti, pi = np.divmod(keys, high_pred + 1)
    return ti, pi, inter, true_area, pred_area


def iou_matrix(true_label: np.ndarray, pred_label: np.ndarray) -> np.ndarray:
    """IoU of every (true, pred) object pair, shape (n_true, n_pred); rows and columns follow sorted label ids."""
    ti, pi, inter, true_area, pred_area = _overlaps(true_label, pred_label)
    true_ids, pred_ids = np.flatnonzero(true_area[1:]) + 1, np.flatnonzero(pred_area[1:]) + 1
    iou = np.zeros((len(true_ids), len(pred_ids)))
    iou[np.searchsorted(true_ids, ti), np.searchsorted(pred_ids, pi)] = inter / (true_area[ti] + pred_area[pi] - inter)
    return iou


def match_counts(true_label: np.ndarray, pred_label: np.ndarray) -> MatchCounts:
    """TP, FP and FN at each IoU threshold."""
    ti, pi, inter, true_area, pred_area = _overlaps(true_label, pred_label)
    n_true, n_pred = int(np.count_nonzero(true_area[1:])), int(np.count_nonzero(pred_area[1:]))
    iou = inter / (true_area[ti] + pred_area[pi] - inter)
    candidates = iou[iou > IOU_THRESHOLDS[0]]  # unique matches: IoU > 0.5 pairs share no object
    tp = (candidates[None, :] > IOU_THRESHOLDS[:, None]).sum(axis=1)
    return MatchCounts(tp=tp, fp=n_pred - tp, fn=n_true - tp, n_true=n_true, n_pred=n_pred)


def _precision(counts: MatchCounts) -> np.ndarray:
    if counts.n_true == 0 and counts.n_pred == 0:
        return np.ones(len(IOU_THRESHOLDS))
    return counts.tp / (counts.tp + counts.fp + counts.fn)


def precision_at_thresholds(true_label: np.ndarray, pred_label: np.ndarray) -> np.ndarray:
    """TP/(TP+FP+FN) at each of the 10 IoU thresholds."""
    return _precision(match_counts(true_label, pred_label))


def image_precision(true_label: np.ndarray, pred_label: np.ndarray) -> float:
    """The competition score of one image: precision averaged over the IoU thresholds."""
    return float(precision_at_thresholds(true_label, pred_label).mean())


def score_images(truths: Mapping[str, np.ndarray], preds: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Score each image; columns image_id, score, n_true, n_pred, in the order of `truths`.

    Raises DataError when the two mappings do not hold the same image ids.
    """
    missing = [i for i in truths if i not in preds]
    extra = [i for i in preds if i not in truths]
    if missing or extra:
        raise DataError(f"predictions and truths differ in image ids: {len(missing)} without prediction "
                        f"{missing[:3]}, {len(extra)} without truth {extra[:3]}")
    rows = []
    for image_id in tqdm(truths, desc="scoring", unit="image", disable=None, leave=False):
        counts = match_counts(truths[image_id], preds[image_id])
        rows.append((image_id, float(_precision(counts).mean()), counts.n_true, counts.n_pred))
    return pd.DataFrame(rows, columns=["image_id", "score", "n_true", "n_pred"])


def scores_by_type(per_image: pd.DataFrame, types: Mapping[str, str]) -> pd.DataFrame:
    """Mean score per image type (columns type, n_images, mean), sorted by type, plus a final 'all' row."""
    missing = [i for i in per_image["image_id"] if i not in types]
    if missing:
        raise DataError(f"no image type for {len(missing)} scored image(s), e.g. {missing[:3]}")
    frame = per_image.assign(type=[types[i] for i in per_image["image_id"]])
    table = (frame.groupby("type", sort=True)["score"].agg(n_images="size", mean="mean").reset_index())
    total = pd.DataFrame({"type": ["all"], "n_images": [len(frame)], "mean": [frame["score"].mean()]})
    return pd.concat([table, total], ignore_index=True)


def score_csv(submission_csv: str | os.PathLike, solution_csv: str | os.PathLike) -> pd.DataFrame:
    """Score a Kaggle submission CSV against a solution CSV (ImageId,EncodedPixels,Height,Width,Usage).

    Image shapes come from the solution; an image of the solution absent from the submission is scored as
    having no predicted objects. The submission is validated first (SubmissionError names the bad line).
    """
    truths = read_solution(solution_csv, order="F")  # column-major: no transposes, the metric ignores pixel order
    shapes = {image_id: label.shape for image_id, label in truths.items()}
    preds = read_submission_labels(submission_csv, shapes, order="F")
    absent = [i for i in truths if i not in preds]
    if absent:
        logger.warning("%s: %d image(s) of the solution have no row; scored as empty", submission_csv, len(absent))
    for image_id in absent:
        preds[image_id] = np.zeros(shapes[image_id], dtype=np.int32, order="F")
    return score_images(truths, preds)
