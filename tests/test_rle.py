"""Kaggle RLE: column-major, 1-based runs; round trips and every malformed case."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from nuclei.errors import SubmissionError
from nuclei.rle import RunError, label_to_rles, parse_rle, parse_rles, rle_decode, rle_encode, rles_to_label

shapes = st.tuples(st.integers(1, 12), st.integers(1, 12))


def test_encode_is_column_major_and_one_based():
    mask = np.zeros((4, 3), dtype=bool)
    mask[1:3, 0] = True  # pixels 2, 3 in column-major order
    mask[0, 2] = True  # pixel 9: row 0 of column 2
    assert rle_encode(mask) == "2 2 9 1"
    assert rle_encode(np.zeros((4, 3), dtype=bool)) == ""


def test_run_crossing_a_column_wraps_to_the_next_column():
    mask = rle_decode("3 3", (4, 2))
    assert np.argwhere(mask).tolist() == [[0, 1], [2, 0], [3, 0]]


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (5, 9)])
def test_full_and_empty_masks(shape):
    full = np.ones(shape, dtype=bool)
    assert rle_encode(full) == f"1 {shape[0] * shape[1]}"
    assert rle_decode(rle_encode(full), shape).all()
    assert not rle_decode("", shape).any()


@settings(max_examples=300, deadline=None)
@given(shapes.flatmap(lambda shape: arrays(bool, shape)))
def test_encode_decode_round_trip(mask):
    rle = rle_encode(mask)
    np.testing.assert_array_equal(rle_decode(rle, mask.shape), mask)
    starts, lengths = parse_rle(rle)
    assert lengths.sum() == mask.sum()


@settings(max_examples=300, deadline=None)
@given(shapes.flatmap(lambda shape: arrays(np.int32, shape, elements=st.sampled_from([0, 0, 1, 2, 5, 40, 1000]))))
def test_label_round_trip(label):
    rles = label_to_rles(label)
    ids = [i for i in np.unique(label) if i]
    # one pass over the image gives exactly what encoding each object alone gives
    assert rles == [rle_encode(label == i) for i in ids]
    decoded = rles_to_label(rles, label.shape)
    assert decoded.dtype == np.int32
    expected = np.zeros(label.shape, dtype=np.int32)
    for k, i in enumerate(ids, 1):
        expected[label == i] = k
    np.testing.assert_array_equal(decoded, expected)


@pytest.mark.parametrize("rle, reason", [
    ("1 2 2 2", r"run 2 \(start 2\) overlaps the previous run \(start 1, length 2\)"),
    ("5 1 3 1", "run 2 starts at 3, not after the previous run"),
    ("5 1 5 1", "run 2 starts at 5, not after the previous run"),
    ("1 0", "run 1 .* has length 0"),
    ("1 -1", "'-1' is not a non-negative integer"),
    ("0 2", "run 1 starts at 0; starts are 1-based"),
    ("1 2 3", "odd number of values"),
    ("1 a", "'a' is not a non-negative integer"),
    ("1.5 2", "'1.5' is not a non-negative integer"),
    ("1 2 99999999999999999999 1", "too large"),
    ("16 2", "ends at pixel 17, past the 16 pixels"),
])
def test_decode_rejects_malformed_rle(rle, reason):
    with pytest.raises(SubmissionError, match=reason):
        rle_decode(rle, (4, 4))


def test_adjacent_runs_last_pixel_and_loose_whitespace_are_accepted():
    mask = rle_decode(" 1 2\t3  2 16 1 ", (4, 4))
    assert mask.sum() == 5 and mask[3, 3]


def test_parse_rles_names_the_first_bad_rle():
    starts, lengths, owners = parse_rles(["1 2 5 1", "", "9 3"], n_pixels=[16, 16, 16])
    assert starts.tolist() == [1, 5, 9] and lengths.tolist() == [2, 1, 3] and owners.tolist() == [0, 0, 2]
    # the run problem in RLE 1 comes before the syntax problem in RLE 2
    with pytest.raises(RunError, match="run 2 starts at 1") as info:
        parse_rles(["1 1", "4 1 1 1", "x"])
    assert info.value.index == 1
    with pytest.raises(RunError) as info:
        parse_rles(["1 1", "4 1 9 1", "x"])
    assert info.value.index == 2
    with pytest.raises(RunError, match="past the 4 pixels") as info:
        parse_rles(["1 1", "4 1 9 1"], n_pixels=[16, 4])
    assert info.value.index == 1


def test_rles_to_label_rejects_overlapping_objects():
    with pytest.raises(SubmissionError, match="objects 1 and 3"):
        rles_to_label(["1 4", "6 2", "3 1"], (4, 4))


def test_rles_to_label_names_the_bad_rle():
    with pytest.raises(SubmissionError, match="RLE 2: .*past the 16 pixels"):
        rles_to_label(["1 4", "15 3"], (4, 4))
