"""Training and validation datasets: cached images in RAM -> augmented crops -> (input tensor, 3 target channels)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from .data.cache import CachedDataset
from .targets import make_targets

logger = logging.getLogger(__name__)


@dataclass
class Sample:
    image_id: str
    image: np.ndarray  # HxWx3 uint8 RGB
    label: np.ndarray  # HxW int32 instance labels
    kind: str  # image type: fluorescence | brightfield | histology
    source: str = "v1"
    weight: float = 1.0  # sampling weight


def load_samples(cache: CachedDataset, ids: list[str], source: str = "v1", total_weight: float = 1.0) -> list[Sample]:
    """Decode the cached images once; the source's total sampling weight is shared by its images."""
    kinds = cache.index.set_index("image_id")["type"]
    each = total_weight / max(len(ids), 1)
    return [Sample(i, cache.image(i), cache.label(i), kinds[i], source, each)
            for i in tqdm(ids, desc=f"load {source}", unit="img", leave=False)]


def to_tensors(image: np.ndarray, targets: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))
    return x, torch.from_numpy(targets)


class CropDataset(Dataset):
    """One augmented crop per item; which image each item shows is the sampler's choice."""

    def __init__(self, samples: list[Sample], augment, normaliser: Callable, targets_cfg: dict):
        self.samples = samples
        self.augment = augment
        self.normaliser = normaliser
        self.targets_cfg = targets_cfg

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        out = self.augment(kind=sample.kind, image=sample.image, mask=sample.label)
        targets = make_targets(out["mask"], self.targets_cfg["erosion_depth"], self.targets_cfg["touching_size"])
        return to_tensors(self.normaliser(out["image"], sample.kind), targets)


def seed_worker(worker_id: int) -> None:
    """Give each DataLoader worker its own seeds derived from torch's (the loader's generator), so runs repeat.

    Albumentations 2 keeps its own generator in each Compose, which workers would otherwise all copy.
    """
    import random

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    augment = getattr(info.dataset, "augment", None) if info is not None else None
    if augment is not None and hasattr(augment, "set_random_seed"):
        augment.set_random_seed(seed)
