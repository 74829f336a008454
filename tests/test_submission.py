"""Submission and solution CSVs: round trips, every malformed case with its line number, atomic writes, real data."""
import csv

import cv2
import numpy as np
import pandas as pd
import pytest
from skimage.draw import disk

from nuclei.errors import DataError, SubmissionError
from nuclei.metric import score_csv
from nuclei.rle import rles_to_label
from nuclei.submission import (read_sample_ids, read_solution, read_submission_labels, solution_from_labels,
                               validate_submission, write_solution, write_submission)


def discs(shape, centres, radius, ids=None):
    label = np.zeros(shape, dtype=np.int32)
    for k, centre in enumerate(centres):
        label[disk(centre, radius, shape=shape)] = ids[k] if ids else k + 1
    return label


def contiguous(label):
    """The label image with ids renumbered 1..n in order of the old ids, as decoding numbers them."""
    ids, inverse = np.unique(label, return_inverse=True)
    out = inverse.reshape(label.shape).astype(np.int32)
    return out if ids[0] == 0 else out + 1


@pytest.fixture
def labels():
    return {
        "aaa": discs((40, 60), [(10, 10), (25, 40), (30, 12)], 6, ids=[7, 3, 250]),
        "bbb": np.zeros((32, 32), dtype=np.int32),  # no objects: one row, empty EncodedPixels
        "ccc": discs((50, 30), [(25, 15)], 10),
    }


def shapes_of(labels):
    return {key: label.shape for key, label in labels.items()}


def test_round_trip_labels_csv_labels(tmp_path, labels):
    path = tmp_path / "sub.csv"
    frame = write_submission(path, labels)
    assert path.read_text().splitlines()[0] == "ImageId,EncodedPixels"
    rows = validate_submission(path, shapes=shapes_of(labels))
    pd.testing.assert_frame_equal(rows, frame)
    assert rows["ImageId"].tolist() == ["aaa"] * 3 + ["bbb", "ccc"]
    assert rows.loc[rows["ImageId"] == "bbb", "EncodedPixels"].tolist() == [""]
    decoded = read_submission_labels(path, shapes_of(labels))
    for key, label in labels.items():
        np.testing.assert_array_equal(decoded[key], contiguous(label))
        per_row = rles_to_label(rows.loc[rows["ImageId"] == key, "EncodedPixels"].tolist(), label.shape)
        np.testing.assert_array_equal(per_row, contiguous(label))


def test_image_ids_set_the_rows_and_their_order(tmp_path, labels):
    frame = write_submission(tmp_path / "sub.csv", labels, image_ids=["ccc", "aaa"])
    assert frame["ImageId"].tolist() == ["ccc", "aaa", "aaa", "aaa"]


def test_stack_of_masks_is_accepted_when_disjoint_and_rejected_when_overlapping(tmp_path):
    masks = np.zeros((2, 20, 20), dtype=bool)
    masks[0, 2:6, 2:6] = True
    masks[1, 10:15, 10:15] = True
    frame = write_submission(tmp_path / "sub.csv", {"x": masks})
    assert len(frame) == 2
    masks[1, 5, 5] = True
    with pytest.raises(DataError, match="x: 1 pixel"):
        write_submission(tmp_path / "bad.csv", {"x": masks})


def test_write_is_atomic(tmp_path, labels):
    path = tmp_path / "sub.csv"
    path.write_bytes(b"previous content\n")
    with pytest.raises(DataError, match="no label image for 2 ImageId.*zzz, yyy"):
        write_submission(path, labels, image_ids=["aaa", "zzz", "yyy"])
    overlapping = np.ones((3, 8, 8), dtype=np.uint8)
    with pytest.raises(DataError, match="more than one"):
        write_submission(path, {**labels, "ddd": overlapping})
    assert path.read_bytes() == b"previous content\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub.csv"]  # no temporary left behind


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD = ["ImageId,EncodedPixels", "aaa,1 5 20 3", "aaa,30 2", "bbb,", "ccc,7 4"]
SHAPES = {"aaa": (8, 8), "bbb": (4, 4), "ccc": (4, 4)}


def test_good_lines_validate(tmp_path):
    rows = validate_submission(write_lines(tmp_path / "s.csv", GOOD), shapes=SHAPES)
    assert len(rows) == 4


@pytest.mark.parametrize("replace, reason", [
    ({0: "ImageId,Pixels"}, r"line 1: header"),
    ({0: "ImageId,EncodedPixels,Extra"}, r"line 1: header"),
    ({2: "aaa,30 x"}, r"line 3: bad EncodedPixels of aaa: RLE value 'x' is not a non-negative integer"),
    ({2: "aaa,30 2 31 1"}, r"line 3: .*run 2 \(start 31\) overlaps the previous run"),
    ({2: "aaa,30 2 40"}, r"line 3: .*odd number"),
    ({4: "ccc,15 3"}, r"line 5: .*past the 16 pixels"),
    ({2: "aaa,3 2"}, r"line 3: object of aaa overlaps the one on line 2"),
    ({2: "aaa,1 5 20 3"}, r"line 3: duplicate of line 2"),
    ({3: "bbb,,"}, r"line 4: expected 2 fields"),
    ({3: ",1 1"}, r"line 4: empty ImageId"),
    ({4: "ddd,7 4"}, r"line 5: ImageId ddd is not in the images being scored"),
])
def test_malformed_lines_are_named(tmp_path, replace, reason):
    lines = [replace.get(i, line) for i, line in enumerate(GOOD)]
    with pytest.raises(SubmissionError, match=reason):
        validate_submission(write_lines(tmp_path / "s.csv", lines), shapes=SHAPES)


@pytest.mark.parametrize("replace, line", [
    ({2: "aaa,30 x", 4: "ddd,7 4"}, 3),  # bad RLE first, unknown ImageId later
    ({2: "ddd,30 2", 4: "ccc,7 x"}, 3),  # unknown ImageId first, bad RLE later
    ({2: "aaa,3 2", 4: "ccc,15 3"}, 5),  # overlap between rows is only checked once every row parsed
])
def test_the_first_problem_in_the_file_is_reported(tmp_path, replace, line):
    lines = [replace.get(i, text) for i, text in enumerate(GOOD)]
    with pytest.raises(SubmissionError, match=f"s.csv line {line}:"):
        validate_submission(write_lines(tmp_path / "s.csv", lines), shapes=SHAPES)


def test_sample_ids_missing_or_unknown(tmp_path):
    sample = write_lines(tmp_path / "sample.csv", ["ImageId,EncodedPixels", "aaa,1 1", "bbb,1 1", "ccc,1 1"])
    assert read_sample_ids(sample) == ["aaa", "bbb", "ccc"]
    validate_submission(write_lines(tmp_path / "ok.csv", GOOD), sample_csv=sample)
    with pytest.raises(SubmissionError, match=r"ImageId ccc \(.*sample.csv line 4\) has no row"):
        validate_submission(write_lines(tmp_path / "s.csv", GOOD[:4]), sample_csv=sample)
    with pytest.raises(SubmissionError, match=r"s2.csv line 6: ImageId eee is not in .*sample.csv"):
        validate_submission(write_lines(tmp_path / "s2.csv", GOOD + ["eee,1 1"]), sample_csv=sample)


def test_solution_round_trip(tmp_path, labels):
    frame = solution_from_labels(labels)
    assert frame.columns.tolist() == ["ImageId", "EncodedPixels", "Height", "Width", "Usage"]
    assert set(frame["Usage"]) == {"Public"}
    assert frame.loc[frame["ImageId"] == "aaa", ["Height", "Width"]].drop_duplicates().values.tolist() == [[40, 60]]
    write_solution(tmp_path / "solution.csv", labels)
    decoded = read_solution(tmp_path / "solution.csv")
    assert list(decoded) == list(labels)
    for key, label in labels.items():
        np.testing.assert_array_equal(decoded[key], contiguous(label))


def test_solution_with_inconsistent_shape_is_rejected(tmp_path):
    path = write_lines(tmp_path / "solution.csv", ["ImageId,EncodedPixels,Height,Width,Usage",
                                                   "a,1 2,4,4,Public", "a,9 2,4,5,Public"])
    with pytest.raises(DataError, match="line 3: a is 4x5 here but 4x4"):
        read_solution(path)


def load_train_labels(root, n_images):
    labels = {}
    for image_dir in sorted((root / "stage1_train").iterdir())[:n_images]:
        mask_paths = sorted((image_dir / "masks").glob("*.png"))
        first = cv2.imread(str(mask_paths[0]), cv2.IMREAD_GRAYSCALE)
        label = np.zeros(first.shape, dtype=np.int32)
        for k, mask_path in enumerate(mask_paths, 1):
            label[cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE) > 0] = k
        labels[image_dir.name] = label
    return labels


def test_real_solution_scores_itself_one_and_sample_style_zero(tmp_path, dsb_root):
    labels = load_train_labels(dsb_root, 20)
    solution = tmp_path / "solution.csv"
    frame = write_solution(solution, labels)
    assert frame["ImageId"].nunique() == 20 and len(frame) > 100

    write_submission(tmp_path / "self.csv", labels)
    assert score_csv(tmp_path / "self.csv", solution)["score"].tolist() == [1.0] * 20
    frame[["ImageId", "EncodedPixels"]].to_csv(tmp_path / "columns.csv", index=False)
    assert score_csv(tmp_path / "columns.csv", solution)["score"].mean() == 1.0

    with (tmp_path / "ones.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ImageId", "EncodedPixels"])
        writer.writerows([image_id, "1 1"] for image_id in labels)
    per_image = score_csv(tmp_path / "ones.csv", solution)
    assert per_image["score"].tolist() == [0.0] * 20
    assert per_image["n_pred"].tolist() == [1] * 20


def test_real_sample_submission_is_valid(dsb_root):
    sample = dsb_root / "stage1_sample_submission.csv"
    ids = read_sample_ids(sample)
    assert len(ids) == len(list((dsb_root / "stage1_test").iterdir()))
    rows = validate_submission(sample, sample_csv=sample)
    assert set(rows["EncodedPixels"]) == {"1 1"}
