"""Write, validate and read Kaggle CSVs: submissions (ImageId,EncodedPixels) and solutions (+Height,Width,Usage).

A submission has one row per object and one row with an empty EncodedPixels for an image without objects.
Every problem is reported as a SubmissionError naming the file, the 1-based CSV line (header = line 1) and the reason.
"""
from __future__ import annotations

import csv
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from .atomic import atomic_write
from .errors import DataError, SubmissionError
from .rle import RunError, first_overlap, label_to_rles, paint_runs, parse_rles

logger = logging.getLogger(__name__)

HEADER = ["ImageId", "EncodedPixels"]
SOLUTION_HEADER = ["ImageId", "EncodedPixels", "Height", "Width", "Usage"]


@dataclass
class ParsedSubmission:
    """A validated submission: its rows, and every run with the row it came from.

    `row_image[r]` and `row_line[r]` are the image index (into `image_ids`) and CSV line of row r;
    `starts`, `lengths` and `run_row` hold all runs in file order.
    """

    rows: pd.DataFrame
    image_ids: list[str]
    row_image: np.ndarray
    row_line: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    run_row: np.ndarray

    def labels(self, shapes: Mapping[str, tuple[int, int]], order: str = "C") -> dict[str, np.ndarray]:
        """Each image as an int32 label image; objects are numbered by row order within their image."""
        return _paint_images(self.image_ids, self.row_image, self.starts, self.lengths, self.run_row, shapes, order)


def _fail(source: str, line: int, reason: str) -> None:
    raise SubmissionError(f"{source} line {line}: {reason}")


def _read_text(path: str | os.PathLike, error: type[Exception] = SubmissionError) -> str:
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such file")
    return path.read_text(encoding="utf-8-sig")  # tolerate a byte-order mark from spreadsheet exports


def _read_sample(sample_csv: str | os.PathLike) -> dict[str, int]:
    """ImageId -> line number in a sample submission."""
    reader = csv.reader(io.StringIO(_read_text(sample_csv, DataError), newline=""))
    header = next(reader, None)
    if not header or header[0] != "ImageId":
        raise DataError(f"{sample_csv} line 1: header {header} does not start with ImageId")
    ids: dict[str, int] = {}
    for row in reader:
        if row and row[0] not in ids:
            ids[row[0]] = reader.line_num
    return ids


def read_sample_ids(sample_csv: str | os.PathLike) -> list[str]:
    """The distinct ImageIds of a sample submission, in file order."""
    return list(_read_sample(sample_csv))


def _row_objects(row_image: np.ndarray, row_has_runs: np.ndarray) -> np.ndarray:
    """Object number of each row within its image (1, 2, ... in row order); rows without runs get no number."""
    object_of_row = np.zeros(len(row_image), dtype=np.int32)
    seen: dict[int, int] = {}
    for row in np.flatnonzero(row_has_runs).tolist():
        image = int(row_image[row])
        seen[image] = seen.get(image, 0) + 1
        object_of_row[row] = seen[image]
    return object_of_row


def _image_pixels(image_ids: Sequence[str], shapes: Mapping[str, tuple[int, int]]) -> np.ndarray:
    return np.array([int(shapes[i][0]) * int(shapes[i][1]) for i in image_ids], dtype=np.int64)


def _paint_images(image_ids, row_image, starts, lengths, run_row, shapes, order) -> dict[str, np.ndarray]:
    row_has_runs = np.zeros(len(row_image), dtype=bool)
    row_has_runs[run_row] = True
    object_of_row = _row_objects(row_image, row_has_runs)
    run_image = row_image[run_row]
    by_image = np.argsort(run_image, kind="stable")
    bounds = np.searchsorted(run_image[by_image], np.arange(len(image_ids) + 1))
    labels = {}
    for k, image_id in enumerate(image_ids):
        runs = by_image[bounds[k]:bounds[k + 1]]
        labels[image_id] = paint_runs(starts[runs], lengths[runs], object_of_row[run_row[runs]], shapes[image_id],
                                       order)
    return labels


def parse_submission(text: str, source: str, shapes: Mapping[str, tuple[int, int]] | None = None,
                     expected: Mapping[str, int | None] | None = None,
                     expected_source: str = "the sample") -> ParsedSubmission:
    """Validate submission text; `expected` maps every required ImageId to its line in `expected_source` (or None).

    Reports the first problem in file order: header, field count, empty or unknown ImageId (not in `expected`,
    else not in `shapes`), duplicate row, bad RLE, run leaving the image (when `shapes` is given); then rows of one
    image that overlap (named by the later line), then ImageIds of `expected` without any row.
    """
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header != HEADER:
        _fail(source, 1, f"header is {','.join(header) if header else 'missing'!r}, expected {','.join(HEADER)!r}")
    known = expected if expected is not None else shapes
    seen: dict[tuple[str, str], int] = {}
    image_index: dict[str, int] = {}
    rows: list[tuple[str, str]] = []
    row_image: list[int] = []
    row_line: list[int] = []
    row_error: tuple[int, str] | None = None
    for row in reader:
        line = reader.line_num
        if len(row) != 2:
            row_error = line, f"expected 2 fields (ImageId,EncodedPixels), got {len(row)}"
        elif not row[0]:
            row_error = line, "empty ImageId"
        elif known is not None and row[0] not in known:
            where = expected_source if expected is not None else "the images being scored"
            row_error = line, f"ImageId {row[0]} is not in {where}"
        elif (row[0], row[1].strip()) in seen:
            row_error = line, f"duplicate of line {seen[row[0], row[1].strip()]}"
        if row_error is not None:
            break  # rows above this one may still hold an earlier problem, found below
        image_id, rle = row
        seen[image_id, rle.strip()] = line
        rows.append((image_id, rle.strip()))
        row_image.append(image_index.setdefault(image_id, len(image_index)))
        row_line.append(line)
    image_ids = list(image_index)
    row_image_arr, row_line_arr = np.array(row_image, dtype=np.int64), np.array(row_line, dtype=np.int64)
    n_pixels = None if shapes is None else _image_pixels(image_ids, shapes)[row_image_arr]
    try:
        starts, lengths, run_row = parse_rles([rle for _, rle in rows], n_pixels)
    except RunError as exc:
        _fail(source, row_line[exc.index], f"bad EncodedPixels of {rows[exc.index][0]}: {exc.reason}")
    if row_error is not None:
        _fail(source, *row_error)
    clash = first_overlap(starts, starts + lengths, run_row, groups=row_image_arr[run_row])
    if clash is not None:
        first, second = clash
        _fail(source, row_line[second], f"object of {rows[second][0]} overlaps the one on line {row_line[first]}")
    if expected is not None:
        missing = [i for i in expected if i not in image_index]
        if missing:
            where = f"{expected_source} line {expected[missing[0]]}" if expected[missing[0]] else expected_source
            raise SubmissionError(f"{source}: ImageId {missing[0]} ({where}) has no row; "
                                  f"{len(missing)} ImageId(s) missing in all")
    return ParsedSubmission(rows=pd.DataFrame(rows, columns=HEADER), image_ids=image_ids, row_image=row_image_arr,
                            row_line=row_line_arr, starts=starts, lengths=lengths, run_row=run_row)


def validate_submission(path: str | os.PathLike, sample_csv: str | os.PathLike | None = None,
                        shapes: Mapping[str, tuple[int, int]] | None = None) -> pd.DataFrame:
    """Check a submission CSV; returns its rows (ImageId, EncodedPixels) or raises SubmissionError naming the line."""
    expected = _read_sample(sample_csv) if sample_csv is not None else None
    parsed = parse_submission(_read_text(path), str(path), shapes=shapes, expected=expected,
                              expected_source=str(sample_csv))
    logger.info("%s: valid, %d rows, %d images", path, len(parsed.rows), len(parsed.image_ids))
    return parsed.rows


def read_submission_labels(path: str | os.PathLike, shapes: Mapping[str, tuple[int, int]],
                           order: str = "C") -> dict[str, np.ndarray]:
    """Validate a submission against known image shapes and decode each of its images into an int32 label image.

    order="F" gives column-major arrays, cheaper to decode and just as good for scoring.
    """
    return parse_submission(_read_text(path), str(path), shapes=shapes).labels(shapes, order)


def _as_label(value: np.ndarray, image_id: str) -> np.ndarray:
    """An instance label image from a label image (H, W) or a stack of binary masks (N, H, W) that must not overlap."""
    array = np.asarray(value)
    if array.ndim == 3:
        masks = array != 0
        shared = int((masks.sum(axis=0) > 1).sum())
        if shared:
            raise DataError(f"{image_id}: {shared} pixel(s) belong to more than one of its {len(masks)} masks")
        index = np.arange(1, len(masks) + 1, dtype=np.int32)[:, None, None]
        return (masks * index).sum(axis=0, dtype=np.int32)
    if array.ndim != 2:
        raise DataError(f"{image_id}: expected a label image (H, W) or masks (N, H, W), got shape {array.shape}")
    if array.dtype == bool:
        return array.astype(np.int32)
    if not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"{image_id}: label image must be integer, got dtype {array.dtype}")
    if array.size and array.min() < 0:
        raise DataError(f"{image_id}: label image has negative ids")
    return array


def _csv_text(frame: pd.DataFrame) -> str:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, lineterminator="\n")
    return buffer.getvalue()


def _image_rows(labels: Mapping[str, np.ndarray], image_ids: Sequence[str]) -> tuple[list[tuple[str, str]], dict]:
    rows: list[tuple[str, str]] = []
    shapes: dict[str, tuple[int, int]] = {}
    for image_id in tqdm(image_ids, desc="encoding", unit="image", disable=None, leave=False):
        label = _as_label(labels[image_id], image_id)
        shapes[image_id] = label.shape
        rles = label_to_rles(label)
        # an image without objects still needs a row, with empty EncodedPixels
        rows.extend((image_id, rle) for rle in rles or [""])
    return rows, shapes


def write_submission(path: str | os.PathLike, labels: Mapping[str, np.ndarray],
                     image_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """Write one row per object for every id of `image_ids` (default: all of `labels`), atomically and validated.

    Raises DataError, before touching `path`, when a label image is missing for one of `image_ids`.
    """
    ids = list(image_ids) if image_ids is not None else list(labels)
    missing = [i for i in ids if i not in labels]
    if missing:
        raise DataError(f"{path}: no label image for {len(missing)} ImageId(s): {', '.join(missing[:5])}"
                        + (" ..." if len(missing) > 5 else ""))
    if len(set(ids)) != len(ids):
        raise DataError(f"{path}: image_ids repeat an ImageId")
    rows, shapes = _image_rows(labels, ids)
    frame = pd.DataFrame(rows, columns=HEADER)
    text = _csv_text(frame)
    with atomic_write(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
        # validated before the rename: a bad file never replaces a good one
        parse_submission(text, str(path), shapes=shapes, expected=dict.fromkeys(ids), expected_source="image_ids")
    logger.info("wrote %s: %d rows, %d images", path, len(frame), len(ids))
    return frame


def solution_from_labels(labels: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Kaggle's solution format: ImageId,EncodedPixels,Height,Width,Usage (Usage = "Public")."""
    rows, shapes = _image_rows(labels, list(labels))
    frame = pd.DataFrame(rows, columns=HEADER)
    frame["Height"] = [shapes[i][0] for i in frame["ImageId"]]
    frame["Width"] = [shapes[i][1] for i in frame["ImageId"]]
    frame["Usage"] = "Public"
    return frame


def write_solution(path: str | os.PathLike, labels: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Write a solution CSV atomically; returns its rows."""
    frame = solution_from_labels(labels)
    with atomic_write(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(_csv_text(frame))
    return frame


def read_solution(path: str | os.PathLike, order: str = "C") -> dict[str, np.ndarray]:
    """Decode a solution CSV into int32 label images (objects numbered in row order), in file order of ImageIds.

    order="F" gives column-major arrays, cheaper to decode and just as good for scoring.
    """
    source = str(path)
    reader = csv.reader(io.StringIO(_read_text(path, DataError), newline=""))
    header = next(reader, None) or []
    if header[:4] != SOLUTION_HEADER[:4]:
        raise DataError(f"{source} line 1: header {','.join(header)!r} "
                        f"does not start with {','.join(SOLUTION_HEADER[:4])!r}")
    shapes: dict[str, tuple[int, int]] = {}
    image_index: dict[str, int] = {}
    rles: list[str] = []
    row_image: list[int] = []
    row_line: list[int] = []
    for row in reader:
        line = reader.line_num
        try:
            image_id, rle, height, width = row[0], row[1], int(row[2]), int(row[3])
        except (IndexError, ValueError):
            raise DataError(f"{source} line {line}: expected ImageId,EncodedPixels,Height,Width, got {row}") from None
        if shapes.setdefault(image_id, (height, width)) != (height, width):
            raise DataError(f"{source} line {line}: {image_id} is {height}x{width} here but "
                            f"{shapes[image_id][0]}x{shapes[image_id][1]} on an earlier line")
        rles.append(rle)
        row_image.append(image_index.setdefault(image_id, len(image_index)))
        row_line.append(line)
    image_ids = list(image_index)
    row_image_arr = np.array(row_image, dtype=np.int64)
    try:
        starts, lengths, run_row = parse_rles(rles, _image_pixels(image_ids, shapes)[row_image_arr])
    except RunError as exc:
        raise DataError(f"{source} line {row_line[exc.index]}: bad EncodedPixels: {exc.reason}") from None
    clash = first_overlap(starts, starts + lengths, run_row, groups=row_image_arr[run_row])
    if clash is not None:
        raise DataError(f"{source} line {row_line[clash[1]]}: object overlaps the one on line {row_line[clash[0]]}")
    return _paint_images(image_ids, row_image_arr, starts, lengths, run_row, shapes, order)
