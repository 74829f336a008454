"""Readers of the external (V9) nucleus data sets, each in its original layout, read in place.

Every reader is a generator of `Sample`s (HxWx3 uint8 RGB image + int32 instance label, 0 = background,
objects numbered 1..n). Readers run a plain loop; the V9 builder wraps them in tqdm.

- MoNuSeg: `*.tif` H&E tiles + Aperio `*.xml` polygons, paired by file stem anywhere under the root.
- Cell Tracking Challenge 2D: `<Dataset>/NN/tXXX.tif` + `<Dataset>/NN_GT/SEG/man_segXXX.tif` (or `NN_ST/SEG`).
- A generic folder of image + label image pairs.
- Kaggle DSB2018 (stage1_train masks, or stage1_test with the published solution CSV).
"""
from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
from skimage.draw import polygon as draw_polygon
from skimage.segmentation import relabel_sequential

from ..errors import DataError
from ..rle import rles_to_label
from . import kaggle
from .kaggle import imread

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
# CTC frames are dim and low-contrast (SIM+ nuclei are ~1.5x background): stretch between robust percentiles.
CTC_PERCENTILES = (1.0, 99.8)
SOURCE_KINDS = ("monuseg", "ctc", "folder", "kaggle")


@dataclass
class Sample:
    """One annotated image of an external source."""

    image: np.ndarray  # HxWx3 uint8 RGB
    label: np.ndarray  # HxW int32, 0 = background, objects 1..n
    source: str  # data set name, e.g. "monuseg", "Fluo-N2DH-GOWT1", "kaggle"
    source_image: str  # image name inside the source, unique within it
    modality: str | None  # "fluorescence" | "brightfield" | "histology"; None = let the builder tag it
    # Unit of leakage for fold assignment: frames of one CTC time-lapse show the same cells, so they share a group.
    # None means the image is its own group.
    group: str | None = None


# ----------------------------------------------------------------------------------------------- helpers


def to_uint8_rgb(image: np.ndarray, path: Path | str = "<array>",
                 percentiles: tuple[float, float] | None = None) -> np.ndarray:
    """Gray/BGR/BGRA, 8/16-bit or float (as OpenCV decodes them) -> HxWx3 uint8 RGB.

    Non-uint8 images are stretched between the given intensity percentiles (default CTC_PERCENTILES);
    uint8 images are stretched only when `percentiles` is given explicitly.
    """
    if image.dtype != np.uint8 or percentiles is not None:
        lo, hi = np.percentile(image, percentiles or CTC_PERCENTILES)
        scaled = (image.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / max(float(hi - lo), 1e-6))
        image = np.clip(scaled, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4):
        raise DataError(f"{path}: unsupported image shape {image.shape}")
    if image.shape[2] <= 2:  # gray, or gray + alpha
        return np.repeat(image[..., :1], 3, axis=2)
    return cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_BGR2RGB)


def read_instance_label(path: Path) -> np.ndarray:
    """A single-channel instance label image -> int32 with ids relabelled 1..n."""
    raw = imread(path)
    if raw.ndim == 3:
        if raw.shape[2] == 1 or all(np.array_equal(raw[..., 0], raw[..., k]) for k in range(1, raw.shape[2])):
            raw = raw[..., 0]
        else:
            raise DataError(f"{path}: label image has {raw.shape[2]} different channels; expected one channel of ids")
    if not np.issubdtype(raw.dtype, np.integer):
        raise DataError(f"{path}: label image has non-integer pixel type {raw.dtype}")
    if raw.min() < 0:
        raise DataError(f"{path}: label image has negative ids")
    return relabel(raw)


def relabel(label: np.ndarray) -> np.ndarray:
    """Renumber object ids 1..n in order of their old ids (0 stays background)."""
    return relabel_sequential(label.astype(np.int64, copy=False))[0].astype(np.int32)


def _check_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{path}: {what} folder not found")
    return path


# ----------------------------------------------------------------------------------------------- MoNuSeg


@dataclass
class PolygonReport:
    """What rasterising one XML file did, for the warnings."""

    n_regions: int = 0
    n_degenerate: int = 0  # fewer than 3 vertices: skipped
    n_empty: int = 0  # no pixel centre inside the polygon: skipped
    n_overlapping: int = 0  # regions that lost pixels to a smaller region
    n_overlap_pixels: int = 0
    n_vanished: int = 0  # regions entirely covered by smaller ones (only exact duplicates can be)


def parse_aperio_xml(path: str | Path) -> list[np.ndarray]:
    """Polygons of an Aperio ImageScope XML, in document order, each an (N, 2) float array of (X=col, Y=row)."""
    path = Path(path)
    polygons = []
    try:
        # iterparse + clear: each Region is read when complete and then dropped, about twice as fast as a full
        # tree for these 2-4 MB files of tens of thousands of vertices each.
        for _, element in ET.iterparse(path, events=("end",)):
            if element.tag != "Region":
                continue
            try:
                vertices = [(float(v.attrib["X"]), float(v.attrib["Y"])) for v in element.iter("Vertex")]
            except (KeyError, ValueError) as error:
                raise DataError(f"{path}: region {element.attrib.get('Id', '?')} has a vertex without a numeric "
                                f"X/Y ({error})") from error
            polygons.append(np.asarray(vertices, dtype=np.float64).reshape(-1, 2))
            element.clear()
    except (ET.ParseError, OSError) as error:
        raise DataError(f"{path}: not a readable Aperio XML file ({error})") from error
    return polygons


def rasterise_polygons(polygons: Sequence[np.ndarray], shape: tuple[int, int],
                       report: PolygonReport | None = None) -> np.ndarray:
    """Polygons of (X=col, Y=row) vertices -> int32 instance label image, objects numbered 1..n.

    Boundary convention (skimage.draw.polygon): a pixel belongs to a polygon when its centre, at integer
    (row, col) coordinates, lies inside the polygon or on its edge; an axis-aligned rectangle with integer
    corners (r0, c0)-(r1, c1) thus covers (r1 - r0 + 1) * (c1 - c0 + 1) pixels.
    Overlaps: the smaller polygon wins the shared pixels (regions are painted largest first; between equal
    sizes the later region in the file wins). A small nucleus drawn over a large one would otherwise vanish entirely, while the large one only
    loses the overlap; the result does not depend on the order of the regions in the file.
    Objects are numbered in document order of their regions.
    """
    report = report if report is not None else PolygonReport()
    report.n_regions += len(polygons)
    pixels: list[tuple[int, np.ndarray, np.ndarray]] = []
    for index, vertices in enumerate(polygons):
        if len(vertices) < 3:
            report.n_degenerate += 1
            continue
        rr, cc = draw_polygon(vertices[:, 1], vertices[:, 0], shape)
        if rr.size == 0:
            report.n_empty += 1
            continue
        pixels.append((index, rr, cc))
    label = np.zeros(shape, np.int32)
    # Largest first so that smaller regions are painted over them.
    for index, rr, cc in sorted(pixels, key=lambda item: (-item[1].size, item[0])):
        label[rr, cc] = index + 1
    for index, rr, cc in pixels:
        lost = int(np.count_nonzero(label[rr, cc] != index + 1))
        if lost:
            report.n_overlapping += 1
            report.n_overlap_pixels += lost
            report.n_vanished += lost == rr.size
    return relabel(label)


def _find_by_stem(root: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix.lower() in suffixes and not path.name.startswith("."):
            if path.stem in found:
                raise DataError(f"{path}: same file stem as {found[path.stem]}; cannot pair images and annotations")
            found[path.stem] = path
    return found


def read_monuseg(root: str | Path) -> Iterator[Sample]:
    """MoNuSeg: pair every `*.tif` with the Aperio `*.xml` of the same stem, wherever they sit under root."""
    root = _check_dir(Path(root), "MoNuSeg")
    images = _find_by_stem(root, (".tif", ".tiff"))
    annotations = _find_by_stem(root, (".xml",))
    if not images:
        raise DataError(f"{root}: no .tif images found (expected e.g. 'Tissue Images/*.tif')")
    for stem in sorted(set(annotations) - set(images)):
        logger.warning("%s: annotation without an image, skipped", annotations[stem])
    total = PolygonReport()
    for stem, image_path in sorted(images.items()):
        if stem not in annotations:
            raise DataError(f"{image_path}: no annotation {stem}.xml found under {root}")
        # IMREAD_COLOR decodes LZW and PackBits TIFFs and drops any alpha; OpenCV gives BGR.
        image = cv2.cvtColor(imread(image_path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        report = PolygonReport()
        label = rasterise_polygons(parse_aperio_xml(annotations[stem]), image.shape[:2], report)
        logger.debug("%s: %d regions, %d objects, %d overlapping (%d px), %d degenerate, %d empty",
                     annotations[stem], report.n_regions, label.max(), report.n_overlapping,
                     report.n_overlap_pixels, report.n_degenerate, report.n_empty)
        for field in vars(total):
            setattr(total, field, getattr(total, field) + getattr(report, field))
        yield Sample(image, label, "monuseg", stem, "histology")
    if total.n_overlapping or total.n_degenerate or total.n_empty:
        logger.warning("MoNuSeg %s: of %d regions, %d lost pixels to a smaller overlapping region (%d pixels, "
                       "%d lost entirely), %d with < 3 vertices and %d without pixels skipped", root,
                       total.n_regions, total.n_overlapping, total.n_overlap_pixels, total.n_vanished,
                       total.n_degenerate, total.n_empty)


# ----------------------------------------------------------------------------------------------- CTC

_SEQUENCE = re.compile(r"^\d{2,}$")
_SEG = re.compile(r"^man_seg(\d+)\.tiff?$")


def _ctc_sequences(dataset: Path) -> list[Path]:
    return sorted(p for p in dataset.iterdir() if p.is_dir() and _SEQUENCE.match(p.name)
                  and any((dataset / f"{p.name}_{kind}" / "SEG").is_dir() for kind in ("GT", "ST")))


def _ctc_datasets(root: Path) -> list[Path]:
    if _ctc_sequences(root):
        return [root]
    return [p for p in sorted(root.iterdir()) if p.is_dir() and _ctc_sequences(p)]


def read_ctc(root: str | Path, percentiles: tuple[float, float] = CTC_PERCENTILES) -> Iterator[Sample]:
    """Cell Tracking Challenge 2D: the annotated frames of every sequence of one dataset folder, or of each
    dataset folder directly under root. GT segmentations are preferred; silver truth (`NN_ST/SEG`) fills the
    frames without GT. Raw 8/16-bit frames are stretched to uint8 between `percentiles`; label ids (track ids,
    not contiguous) are renumbered 1..n."""
    root = _check_dir(Path(root), "CTC")
    datasets = _ctc_datasets(root)
    if not datasets:
        raise DataError(f"{root}: no CTC dataset found (expected <Dataset>/NN/ with NN_GT/SEG or NN_ST/SEG)")
    for dataset in datasets:
        for sequence in _ctc_sequences(dataset):
            frames: dict[str, Path] = {}
            for kind in ("ST", "GT"):  # GT last, so it replaces silver truth of the same frame
                seg_dir = dataset / f"{sequence.name}_{kind}" / "SEG"
                if seg_dir.is_dir():
                    for path in sorted(seg_dir.iterdir()):
                        match = _SEG.match(path.name)
                        if match:
                            frames[match.group(1)] = path
            for frame, seg_path in sorted(frames.items()):
                image_path = next((sequence / f"t{frame}{ext}" for ext in (".tif", ".tiff")
                                   if (sequence / f"t{frame}{ext}").is_file()), sequence / f"t{frame}.tif")
                if not image_path.is_file():
                    raise DataError(f"{seg_path}: annotated frame has no image {image_path}")
                raw = imread(image_path)
                if raw.ndim != 2:
                    raise DataError(f"{image_path}: expected a 2D single-channel frame, got shape {raw.shape}")
                label = read_instance_label(seg_path)
                if label.shape != raw.shape:
                    raise DataError(f"{seg_path}: label is {label.shape} but frame {image_path} is {raw.shape}")
                image = to_uint8_rgb(raw, image_path, percentiles)
                yield Sample(image, label, dataset.name, f"{sequence.name}_t{frame}", "fluorescence",
                             group=f"{dataset.name}/{sequence.name}")


# ----------------------------------------------------------------------------------------------- folder


def _find_label(folder: Path, stem: str, suffixes: Sequence[str]) -> Path | None:
    for name in suffixes:
        for ext in IMAGE_SUFFIXES:
            path = folder / f"{stem}{name}{ext}"
            if path.is_file():
                return path
    return None


def read_label_folder(root: str | Path, image_glob: str = "*", label_suffix: str = "_label",
                      source: str | None = None, modality: str | None = None) -> Iterator[Sample]:
    """Pairs of an image and a single-channel instance label image, in one of two layouts:

    - `root/images/<stem>.*` + `root/labels/<stem>.*` (or `root/labels/<stem><label_suffix>.*`; `masks/` also works);
    - `root/<stem>.*` + `root/<stem><label_suffix>.*` side by side.
    Label ids need not be contiguous. `source` defaults to the folder name.
    """
    root = _check_dir(Path(root), "labelled image")
    source = source or root.name
    if (root / "images").is_dir():
        image_dir = root / "images"
        label_dir = next((root / n for n in ("labels", "masks") if (root / n).is_dir()), None)
        if label_dir is None:
            raise DataError(f"{root}: has images/ but no labels/ (or masks/) folder")
        label_names = (label_suffix, "")
    else:
        image_dir = label_dir = root
        label_names = (label_suffix,)
    images = sorted(p for p in image_dir.glob(image_glob) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                    and not (label_suffix and p.stem.endswith(label_suffix)) and not p.name.startswith("."))
    if not images:
        raise DataError(f"{image_dir}: no images matching {image_glob!r}")
    for image_path in images:
        label_path = _find_label(label_dir, image_path.stem, label_names)
        if label_path is None:
            raise DataError(f"{image_path}: no label image {image_path.stem}{label_suffix}.* in {label_dir}")
        image = to_uint8_rgb(imread(image_path), image_path)
        label = read_instance_label(label_path)
        if label.shape != image.shape[:2]:
            raise DataError(f"{label_path}: label is {label.shape} but image {image_path} is {image.shape[:2]}")
        yield Sample(image, label, source, image_path.stem, modality)


# ----------------------------------------------------------------------------------------------- Kaggle


def _kaggle_split_dir(root: Path, split: str) -> Path:
    if (root / split).is_dir():
        return root / split
    if root.name == split and root.is_dir():
        return root
    raise DataError(f"{root / split}: Kaggle split folder not found")


def read_kaggle(root: str | Path, split: str = "stage1_train",
                solution_csv: str | Path | None = None) -> Iterator[Sample]:
    """DSB2018 images with labels: `split` with its per-nucleus masks, or (for a test split) the run-length
    encoded labels of the published solution CSV (ImageId, EncodedPixels, Height, Width, Usage).
    `root` is the folder holding the split folder, or the split folder itself. Modality is left to the builder."""

    split_dir = _kaggle_split_dir(Path(root), split)
    ids = kaggle.list_ids(split_dir)
    if solution_csv is None:
        for image_id in ids:
            image = kaggle.read_kaggle_image(kaggle.image_path(split_dir, image_id))
            masks = kaggle.masks_dir(split_dir, image_id)
            if not masks.is_dir():
                raise DataError(f"{masks}: no masks for {split} image {image_id}; a test split needs solution_csv")
            label, _ = kaggle.read_kaggle_label(masks, image.shape[:2])
            yield Sample(image, relabel(label), "kaggle", image_id, None)
        return

    import pandas as pd


    solution_csv = Path(solution_csv)
    if not solution_csv.is_file():
        raise DataError(f"{solution_csv}: solution CSV not found")
    solution = pd.read_csv(solution_csv, dtype={"ImageId": str, "EncodedPixels": str})
    missing = {"ImageId", "EncodedPixels", "Height", "Width"} - set(solution.columns)
    if missing:
        raise DataError(f"{solution_csv}: missing columns {sorted(missing)}")
    solution = solution.dropna(subset=["EncodedPixels"])
    unlabelled = sorted(set(ids) - set(solution["ImageId"]))
    if unlabelled:
        logger.warning("%s: %d images of %s have no rows in %s, skipped (e.g. %s)", split_dir, len(unlabelled),
                       split, solution_csv, unlabelled[0])
    unknown = sorted(set(solution["ImageId"]) - set(ids))
    if unknown:
        raise DataError(f"{solution_csv}: ImageId {unknown[0]} (and {len(unknown) - 1} more) not in {split_dir}")
    for image_id, rows in solution.groupby("ImageId", sort=True):
        path = kaggle.image_path(split_dir, image_id)
        image = kaggle.read_kaggle_image(path)
        height, width = int(rows["Height"].iloc[0]), int(rows["Width"].iloc[0])
        if (height, width) != image.shape[:2]:
            raise DataError(f"{solution_csv}: {image_id} is {height}x{width} there but {path} is "
                            f"{image.shape[0]}x{image.shape[1]}")
        try:
            label = rles_to_label(rows["EncodedPixels"].tolist(), (height, width))
        except ValueError as error:  # SubmissionError: a malformed or overlapping run
            raise DataError(f"{solution_csv}: ImageId {image_id}: {error}") from error
        yield Sample(image, relabel(np.asarray(label)), "kaggle", image_id, None)


# ----------------------------------------------------------------------------------------------- dispatch


def read_source(spec: dict) -> Iterator[Sample]:
    """Samples of one source described by a dict: {"kind": "monuseg"|"ctc"|"folder"|"kaggle", "path": ...,
    "name": optional source name, "weight"/"scale": used by the builder}, plus per-kind options
    (ctc: percentiles; folder: image_glob, label_suffix, modality; kaggle: split, solution_csv)."""
    kind, path = spec.get("kind"), spec.get("path")
    if kind not in SOURCE_KINDS:
        raise DataError(f"source {spec!r}: kind must be one of {SOURCE_KINDS}")
    if not path:
        raise DataError(f"source {spec!r}: no path")
    if kind == "monuseg":
        samples = read_monuseg(path)
    elif kind == "ctc":
        samples = read_ctc(path, tuple(spec.get("percentiles", CTC_PERCENTILES)))
    elif kind == "folder":
        samples = read_label_folder(path, spec.get("image_glob", "*"), spec.get("label_suffix", "_label"),
                                    source=spec.get("name"), modality=spec.get("modality"))
    else:
        samples = read_kaggle(path, spec.get("split", "stage1_train"), spec.get("solution_csv"))
    name = spec.get("name")
    for sample in samples:
        if name:
            sample.source = name
        yield sample
