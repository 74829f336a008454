"""`prepare`: read the Kaggle layout once and write the compact cache that every later stage reads.

The cache records a fingerprint of its source files (names, sizes, modification times) and is rebuilt when
the source changes. Problems that can be survived (overlapping or empty masks) are counted in one warning.
"""
from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tqdm import tqdm

from ..atomic import atomic_write_text
from ..errors import DataError
from .cache import INDEX, write_image, write_index, write_label
from .kaggle import image_path, list_ids, masks_dir, read_kaggle_image, read_kaggle_label
from .modality import image_type

logger = logging.getLogger(__name__)

FINGERPRINT = "source.json"


def source_fingerprint(split_dir: Path, ids: list[str]) -> str:
    digest = hashlib.sha256()
    for image_id in ids:
        for path in sorted((split_dir / image_id).rglob("*.png")):
            stat = path.stat()
            digest.update(f"{path.relative_to(split_dir)}:{stat.st_size}:{int(stat.st_mtime)}\n".encode())
    return digest.hexdigest()


def _prepare_one(split_dir: Path, out_dir: Path, image_id: str, labelled: bool) -> dict:
    image = read_kaggle_image(image_path(split_dir, image_id))
    row = {"image_id": image_id, "height": image.shape[0], "width": image.shape[1], "type": image_type(image)}
    write_image(out_dir / "images" / f"{image_id}.webp", image)
    if labelled:
        label, report = read_kaggle_label(masks_dir(split_dir, image_id), image.shape[:2])
        write_label(out_dir / "labels" / f"{image_id}.png", label)
        row.update(n_nuclei=report.n_masks, overlap_pixels=report.n_overlap_pixels, empty_masks=report.n_empty_masks)
    return row


def prepare_split(data_root: str | Path, split: str, cache_root: str | Path, limit: int | None = None,
                  workers: int = 2, force: bool = False) -> Path:
    """Write `<cache_root>/<split>/`; skip when its fingerprint matches the source. Returns the cache folder."""
    split_dir = Path(data_root) / split
    ids = list_ids(split_dir)
    if not ids:
        raise DataError(f"{split_dir}: no images found")
    if limit:
        ids = ids[:limit]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:
        raise DataError(f"{split_dir}: duplicate ImageIds {sorted(dupes)[:5]}")
    labelled = (split_dir / ids[0] / "masks").is_dir()
    out_dir = Path(cache_root) / split
    fingerprint = {"source": str(split_dir.resolve()), "n": len(ids), "hash": source_fingerprint(split_dir, ids)}
    stamp = out_dir / FINGERPRINT
    if not force and stamp.is_file() and (out_dir / INDEX).is_file() and json.loads(stamp.read_text()) == fingerprint:
        logger.info("cache %s is up to date (%d images)", out_dir, len(ids))
        return out_dir
    (out_dir / INDEX).unlink(missing_ok=True)  # an index marks a complete cache; drop it while rebuilding
    with ProcessPoolExecutor(max_workers=workers) as pool:
        jobs = [pool.submit(_prepare_one, split_dir, out_dir, i, labelled) for i in ids]
        rows = [job.result() for job in tqdm(jobs, desc=f"prepare {split}", unit="img")]
    if labelled:
        overlaps = [r for r in rows if r["overlap_pixels"]]
        empties = sum(r["empty_masks"] for r in rows)
        if overlaps or empties:
            logger.warning("%s: %d images have overlapping masks (%d pixels, kept by the first mask in file order); "
                           "%d empty mask files skipped", split, len(overlaps),
                           sum(r["overlap_pixels"] for r in overlaps), empties)
    write_index(out_dir, rows)
    atomic_write_text(stamp, json.dumps(fingerprint))
    return out_dir
