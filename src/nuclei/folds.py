"""A deterministic K-fold split stratified by image type."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .atomic import atomic_write_text
from .errors import DataError


def stratified_folds(image_ids: list[str], types: list[str], k: int = 5, seed: int = 42) -> pd.DataFrame:
    """Each type is shuffled with `seed`, then dealt round-robin over the folds, so every fold gets its share of each type."""
    if len(set(image_ids)) != len(image_ids):
        dup = pd.Series(image_ids)[pd.Series(image_ids).duplicated()].tolist()
        raise DataError(f"duplicate image ids: {dup[:5]}")
    if k < 2:
        raise DataError(f"k must be at least 2, got {k}")
    frame = pd.DataFrame({"image_id": image_ids, "type": types}).sort_values("image_id", ignore_index=True)
    rng = np.random.default_rng(seed)
    frame["fold"] = -1
    offset = 0  # continue dealing where the last type stopped, so small types don't all land in fold 0
    for _, group in frame.groupby("type", sort=True):
        order = rng.permutation(group.index.to_numpy())
        frame.loc[order, "fold"] = (np.arange(len(order)) + offset) % k
        offset += len(order)
    return frame[["image_id", "fold", "type"]]


def write_folds(path, folds: pd.DataFrame) -> None:
    atomic_write_text(path, folds.to_csv(index=False))


def read_folds(path) -> pd.DataFrame:
    try:
        folds = pd.read_csv(path, dtype={"image_id": str})
    except FileNotFoundError as err:
        raise DataError(f"{path}: folds file not found; run `python -m nuclei folds`") from err
    missing = {"image_id", "fold", "type"} - set(folds.columns)
    if missing:
        raise DataError(f"{path}: missing columns {sorted(missing)}")
    return folds
