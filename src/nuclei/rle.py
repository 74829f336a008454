"""Kaggle run-length encoding: column-major (Fortran order), 1-indexed "start length" pairs, space separated.

Pixel k (1-based) of an HxW image is row (k-1) % H, column (k-1) // H. Runs within one RLE must be increasing and
disjoint; an empty string is an empty mask. Parsing and checks work on many RLEs at once, so that a submission of
tens of thousands of objects is read with a handful of numpy passes rather than one per object.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from .errors import SubmissionError

# one space between values and at most 15 digits each: then np.fromstring parses the text exactly
_CANONICAL = re.compile(r"(?:[0-9]{1,15}(?: [0-9]{1,15})*)?")


class RunError(SubmissionError):
    """A problem in one RLE among several; `index` is its 0-based position and `reason` says what is wrong."""

    def __init__(self, index: int, reason: str):
        super().__init__(reason)
        self.index = index
        self.reason = reason


def _format_runs(starts: np.ndarray, lengths: np.ndarray) -> list[str]:
    return [f"{s} {n}" for s, n in zip(starts.tolist(), lengths.tolist())]


def rle_encode(mask: np.ndarray) -> str:
    """Encode a 2-D mask (non-zero = object) as a Kaggle RLE string; "" for an empty mask."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"rle_encode needs a 2-D mask, got shape {mask.shape}")
    pixels = np.concatenate([[False], mask.ravel(order="F") != 0, [False]])
    changes = np.flatnonzero(pixels[1:] != pixels[:-1])  # 0-based index of the first pixel after each change
    starts, ends = changes[0::2], changes[1::2]
    return " ".join(_format_runs(starts + 1, ends - starts))


def _canonical(rle: object) -> str:
    """The RLE with single spaces, or a SubmissionError naming the first value that is not a plain integer."""
    if rle is None or (isinstance(rle, float) and np.isnan(rle)):
        return ""
    if not isinstance(rle, str):
        raise SubmissionError(f"RLE must be a string, got {type(rle).__name__}")
    if _CANONICAL.fullmatch(rle):
        return rle
    tokens = rle.split()
    for token in tokens:
        if not token.isascii() or not token.isdigit():
            raise SubmissionError(f"RLE value {token!r} is not a non-negative integer")
        if len(token) > 15:
            raise SubmissionError(f"RLE value {token} is too large for any image")
    return " ".join(tokens)


def _first_problem(starts, lengths, owners, n_pixels) -> tuple[int, str] | None:
    """(run index, reason) of the first bad run in order, or None."""
    same = owners[1:] == owners[:-1]
    checks = [
        (starts < 1, lambda i: f"starts at {starts[i]}; starts are 1-based"),
        (lengths <= 0, lambda i: f"(start {starts[i]}) has length {lengths[i]}; lengths must be > 0"),
        (np.r_[False, same & (starts[1:] <= starts[:-1])],
         lambda i: f"starts at {starts[i]}, not after the previous run (start {starts[i - 1]}); starts must increase"),
        (np.r_[False, same & (starts[1:] < starts[:-1] + lengths[:-1])],
         lambda i: f"(start {starts[i]}) overlaps the previous run (start {starts[i - 1]}, length {lengths[i - 1]})"),
    ]
    if n_pixels is not None:
        limit = np.asarray(n_pixels, dtype=np.int64)
        limit = np.broadcast_to(limit, owners.shape) if limit.ndim == 0 else limit[owners]
        checks.append((starts + lengths - 1 > limit,
                       lambda i: f"(start {starts[i]}, length {lengths[i]}) ends at pixel {starts[i] + lengths[i] - 1}, "
                                 f"past the {limit[i]} pixels of the image"))
    found = [(int(np.argmax(bad)), describe) for bad, describe in checks if bad.any()]
    if not found:
        return None
    run, describe = min(found, key=lambda item: item[0])
    return run, describe(run)


def parse_rles(rles: Sequence[str],
               n_pixels: int | Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse many RLE strings at once into (starts, lengths, owners): owners[i] is the index of the RLE of run i.

    `n_pixels` (one number, or one per RLE) adds the check that every run ends inside its image.
    Raises RunError for the first bad RLE in order: non-integers, an odd count, start < 1, length <= 0,
    starts not increasing, a run overlapping the previous one, or a run leaving the image.
    """
    texts: list[str] = []
    syntax_error: RunError | None = None
    for index, rle in enumerate(rles):
        try:
            text = _canonical(rle)
            if text.count(" ") % 2 == 0 and text:
                raise SubmissionError(f"RLE has an odd number of values ({text.count(' ') + 1}); "
                                      "it needs start/length pairs")
        except SubmissionError as exc:
            syntax_error = RunError(index, str(exc))
            break
        texts.append(text)
    counts = np.array([text.count(" ") + 1 if text else 0 for text in texts], dtype=np.int64) // 2
    values = np.fromstring(" ".join(t for t in texts if t), dtype=np.int64, sep=" ")
    starts, lengths = values[0::2], values[1::2]
    owners = np.repeat(np.arange(len(texts)), counts)
    if n_pixels is not None and np.ndim(n_pixels):
        n_pixels = np.asarray(n_pixels, dtype=np.int64)[: len(texts)]
    problem = _first_problem(starts, lengths, owners, n_pixels)
    if problem is not None:  # an earlier RLE's problem comes before a later syntax error
        run, reason = problem
        owner = int(owners[run])
        number = run - int(np.searchsorted(owners, owner)) + 1
        raise RunError(owner, f"run {number} {reason}")
    if syntax_error is not None:
        raise syntax_error
    return starts, lengths, owners


def parse_rle(rle: str | None, shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Parse one RLE into (starts, lengths), 1-based; with `shape`, also check that it stays inside the image."""
    n_pixels = None if shape is None else int(shape[0]) * int(shape[1])
    try:
        starts, lengths, _ = parse_rles([rle], n_pixels)
    except RunError as exc:
        raise SubmissionError(exc.reason) from None
    return starts, lengths


def first_overlap(starts: np.ndarray, ends: np.ndarray, owners: np.ndarray,
                  groups: np.ndarray | None = None) -> tuple[int, int] | None:
    """Owners of two runs that share a pixel (within one group, e.g. one image), or None; runs are [start, end).

    Of all clashing pairs it returns the one whose later owner comes first. After sorting by start, any overlap
    implies one between neighbours, so comparing neighbours finds every clash.
    """
    if len(starts) < 2:
        return None
    groups = np.zeros(len(starts), dtype=np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
    order = np.argsort(groups * (int(ends.max()) + 1) + starts)  # by group, then start
    s, e, o, g = starts[order], ends[order], owners[order], groups[order]
    clash = np.flatnonzero((s[1:] < e[:-1]) & (g[1:] == g[:-1]))
    if clash.size == 0:
        return None
    first, second = np.minimum(o[clash], o[clash + 1]), np.maximum(o[clash], o[clash + 1])
    best = int(np.argmin(second))
    return int(first[best]), int(second[best])


def paint_runs(starts: np.ndarray, lengths: np.ndarray, ids: np.ndarray, shape: tuple[int, int],
               order: str = "C") -> np.ndarray:
    """An int32 label image with run i (1-based start) set to ids[i]; runs must be disjoint and inside the image.

    Painted column-major as a difference array (+id at a run's start, -id past its end) and one cumulative sum.
    order="F" returns that column-major array as is, which the metric reads without a copy.
    """
    h, w = int(shape[0]), int(shape[1])
    delta = np.zeros(h * w + 1, dtype=np.int32)
    ids = np.asarray(ids, dtype=np.int32)
    delta[starts - 1] = ids  # starts are distinct, and so are ends, as runs are disjoint
    delta[starts - 1 + lengths] -= ids
    label = np.cumsum(delta[:-1], dtype=np.int32).reshape((h, w), order="F")
    return label if order == "F" else np.ascontiguousarray(label)


def rle_decode(rle: str | None, shape: tuple[int, int]) -> np.ndarray:
    """Decode a Kaggle RLE string into a boolean mask of `shape` (H, W)."""
    starts, lengths = parse_rle(rle, shape)
    return paint_runs(starts, lengths, np.ones(len(starts), dtype=np.int32), shape) > 0


def rles_to_label(rles: Sequence[str], shape: tuple[int, int]) -> np.ndarray:
    """Decode one RLE per object into an int32 label image (object k = rles[k-1]); raises when objects overlap."""
    try:
        starts, lengths, owners = parse_rles(rles, int(shape[0]) * int(shape[1]))
    except RunError as exc:
        raise SubmissionError(f"RLE {exc.index + 1}: {exc.reason}") from None
    clash = first_overlap(starts, starts + lengths, owners)
    if clash is not None:
        a, b = clash[0] + 1, clash[1] + 1
        raise SubmissionError(f"objects {a} and {b} (RLE {a} and {b} of the image) share pixels")
    return paint_runs(starts, lengths, owners + 1, shape)


def label_to_rles(label: np.ndarray) -> list[str]:
    """One RLE per object of a label image (0 = background), ordered by label id.

    One pass over the image: sort the object pixels by label (stable, so F order is kept within an object),
    then split into runs where the label changes or pixels stop being consecutive.
    """
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label_to_rles needs a 2-D label image, got shape {label.shape}")
    if label.dtype == bool:
        label = label.view(np.uint8)
    if not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"label image must be integer, got dtype {label.dtype}")
    flat = label.ravel(order="F")
    index = np.flatnonzero(flat)
    if index.size == 0:
        return []
    ids = flat[index]
    if ids.min() < 0:
        raise ValueError("label image has negative ids")
    order = np.argsort(ids, kind="stable")
    index, ids = index[order], ids[order]
    new_run = np.ones(index.size, dtype=bool)
    new_run[1:] = (ids[1:] != ids[:-1]) | (index[1:] != index[:-1] + 1)
    run_first = np.flatnonzero(new_run)
    run_starts = index[run_first] + 1
    run_lengths = np.diff(np.append(run_first, index.size))
    run_ids = ids[run_first]
    object_bounds = np.append(np.flatnonzero(np.r_[True, run_ids[1:] != run_ids[:-1]]), run_ids.size).tolist()
    pairs = _format_runs(run_starts, run_lengths)
    return [" ".join(pairs[a:b]) for a, b in zip(object_bounds[:-1], object_bounds[1:])]
