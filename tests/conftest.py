"""Shared test setup: import the package from src/ and find the real data when DSB_DATA is set."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SHARED = ROOT.parent / "shared" / "data"


def _data_root() -> Path | None:
    env = os.environ.get("DSB_DATA")
    root = Path(env) if env else SHARED / "dsb2018"
    return root if (root / "stage1_train").is_dir() else None


@pytest.fixture(scope="session")
def dsb_root() -> Path:
    root = _data_root()
    if root is None:
        pytest.skip("real DSB2018 data not found (set DSB_DATA)")
    return root


@pytest.fixture(scope="session")
def external_root() -> Path:
    root = Path(os.environ.get("DSB_EXTERNAL", SHARED / "external"))
    if not (root / "monuseg").is_dir():
        pytest.skip("external samples not found (set DSB_EXTERNAL)")
    return root


def draw_nuclei(rng, size=(128, 128), n=8, radius=(5, 10), touching=False):
    """A fluorescence-like image (bright discs on dark noise) and its instance labels."""
    import numpy as np
    from skimage.draw import disk

    label = np.zeros(size, np.int32)
    image = rng.normal(20, 5, size)
    placed = 0
    for _ in range(n * 20):
        if placed == n:
            break
        r = int(rng.integers(*radius))
        cy, cx = int(rng.integers(r, size[0] - r)), int(rng.integers(r, size[1] - r))
        rr, cc = disk((cy, cx), r, shape=size)
        if not touching and (label[max(cy - r - 2, 0):cy + r + 3, max(cx - r - 2, 0):cx + r + 3] > 0).any():
            continue
        free = label[rr, cc] == 0
        placed += 1
        label[rr[free], cc[free]] = placed
        image[rr[free], cc[free]] = rng.normal(180, 20, free.sum())
    gray = np.clip(image, 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2), label


def write_synthetic_cache(root, n_images=20, seed=0, size=(128, 128), kind="fluorescence"):
    """A cached dataset (the format `prepare` writes) of generated nuclei images."""
    import numpy as np

    from nuclei.data.cache import write_image, write_index, write_label

    rng = np.random.default_rng(seed)
    rows = []
    for index in range(n_images):
        image, label = draw_nuclei(rng, size)
        image_id = f"synth{index:03d}"
        write_image(Path(root) / "images" / f"{image_id}.png", image)
        write_label(Path(root) / "labels" / f"{image_id}.png", label)
        rows.append({"image_id": image_id, "height": size[0], "width": size[1], "type": kind, "n_nuclei": int(label.max())})
    write_index(root, rows)
    return Path(root)
