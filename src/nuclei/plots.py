"""Figures people would rather look at than read: training curves, targets, prediction overlays, leaderboard."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are only ever saved
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from skimage.segmentation import find_boundaries  # noqa: E402

from .atomic import atomic_write  # noqa: E402


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_training_curves(log: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Losses and per-channel IoU by epoch, as the paper's Figures 5 and 6."""
    fig, (ax_loss, ax_iou) = plt.subplots(1, 2, figsize=(11, 4))
    for column in ("train_loss", "val_loss"):
        if column in log:
            ax_loss.plot(log["epoch"], log[column], marker="o", label=column)
    ax_loss.set(xlabel="epoch", ylabel="loss", title=f"{title} loss")
    ax_loss.legend()
    for column in [c for c in log.columns if c.startswith("iou_")]:
        ax_iou.plot(log["epoch"], log[column], marker="o", label=column[4:])
    ax_iou.set(xlabel="epoch", ylabel="IoU (val crops, p>0.5)", title=f"{title} IoU", ylim=(0, 1))
    ax_iou.legend()
    return _save(fig, path)


def plot_targets(image: np.ndarray, targets: np.ndarray, path: str | Path, title: str = "") -> Path:
    names = ("image", "mask", "borderless", "touching borders")
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
    for ax, name, data in zip(axes, names, [image, *targets]):
        ax.imshow(data, cmap=None if data.ndim == 3 else "gray", interpolation="nearest")
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle(title)
    return _save(fig, path)


def overlay_contours(image: np.ndarray, label: np.ndarray, colour=(255, 255, 0)) -> np.ndarray:
    """The image with each object's outline drawn in `colour`."""
    out = image.copy()
    out[find_boundaries(label, mode="inner")] = colour
    return out


def plot_overlay(image: np.ndarray, label: np.ndarray, path: str | Path, title: str = "") -> Path:
    height, width = label.shape
    scale = 8 / max(height, width)
    fig, ax = plt.subplots(figsize=(max(width * scale, 2), max(height * scale, 2)))
    ax.imshow(overlay_contours(image, label), interpolation="nearest")
    ax.set_title(f"{title} ({int(label.max())} objects)")
    ax.axis("off")
    return _save(fig, path)


def plot_leaderboard(board: pd.DataFrame, path: str | Path) -> Path:
    fig, ax = plt.subplots(figsize=(9, 4))
    times = pd.to_datetime(board["time"])
    plotted = False
    for column in ("oof_map", "local_score", "public_score", "private_score"):
        scores = pd.to_numeric(board[column], errors="coerce") if column in board else None
        if scores is not None and scores.notna().any():
            ax.plot(times, scores, marker="o", label=column)
            plotted = True
    ax.set(xlabel="submission time", ylabel="mAP", title="submissions")
    if plotted:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no scores yet", ha="center", va="center", transform=ax.transAxes)
    fig.autofmt_xdate()
    return _save(fig, path)
