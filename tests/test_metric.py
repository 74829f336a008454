"""The DSB2018 metric on hand-worked cases, and against a slow per-pair reference on random label images."""
import numpy as np
import pandas as pd
import pytest
from skimage.draw import disk

from nuclei import metric
from nuclei.errors import DataError
from nuclei.metric import (IOU_THRESHOLDS, image_precision, iou_matrix, precision_at_thresholds, score_csv,
                           score_images, scores_by_type)
from nuclei.submission import write_solution, write_submission


def rect(shape, top, left, height, width, value=1, label=None):
    label = np.zeros(shape, dtype=np.int32) if label is None else label
    label[top:top + height, left:left + width] = value
    return label


def discs(shape, centres, radius, first_id=1):
    label = np.zeros(shape, dtype=np.int32)
    for k, centre in enumerate(centres):
        label[disk(centre, radius, shape=shape)] = first_id + k
    return label


def test_thresholds_are_the_ten_competition_values():
    assert IOU_THRESHOLDS.tolist() == [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]


def test_iou_of_exactly_one_half_is_not_a_hit():
    truth = rect((30, 30), 5, 5, 10, 10)
    pred = rect((30, 30), 5, 5, 10, 20)  # covers the truth wholly: 100 / 200
    assert iou_matrix(truth, pred).tolist() == [[0.5]]
    np.testing.assert_array_equal(precision_at_thresholds(truth, pred), np.zeros(10))


def test_iou_of_three_quarters_counts_below_075_only():
    truth = rect((30, 30), 5, 5, 15, 10)
    pred = rect((30, 30), 5, 5, 20, 10)  # 150 / 200
    assert iou_matrix(truth, pred).tolist() == [[0.75]]
    expected = (IOU_THRESHOLDS < 0.75).astype(float)
    np.testing.assert_array_equal(precision_at_thresholds(truth, pred), expected)
    assert image_precision(truth, pred) == pytest.approx(0.5)


def test_no_objects_on_either_side_scores_one():
    empty = np.zeros((16, 16), dtype=np.int32)
    assert image_precision(empty, empty) == 1.0
    assert iou_matrix(empty, empty).shape == (0, 0)


def test_objects_on_one_side_only_score_zero():
    empty = np.zeros((64, 64), dtype=np.int32)
    objects = discs((64, 64), [(16, 16), (40, 40)], 6)
    assert image_precision(empty, objects) == 0.0  # all false positives
    assert image_precision(objects, empty) == 0.0  # all false negatives


def test_one_of_two_objects_found_perfectly_scores_one_half():
    truth = discs((64, 64), [(16, 16), (40, 40)], 6)
    pred = discs((64, 64), [(16, 16)], 6)
    np.testing.assert_array_equal(precision_at_thresholds(truth, pred), np.full(10, 0.5))


def test_false_positive_is_counted():
    truth = discs((64, 64), [(16, 16)], 6)
    pred = discs((64, 64), [(16, 16), (45, 45)], 6)
    np.testing.assert_array_equal(precision_at_thresholds(truth, pred), np.full(10, 0.5))


def test_label_ids_need_not_be_contiguous():
    centres = [(12, 12), (12, 40), (40, 25)]
    truth = discs((64, 64), centres, 7)
    pred = discs((64, 64), [(13, 12), (12, 42), (50, 50)], 7)
    reference = precision_at_thresholds(truth, pred)
    sparse_truth = np.select([truth == 1, truth == 2, truth == 3], [3, 17, 1000], 0).astype(np.int64)
    huge_pred = np.select([pred == 1, pred == 2, pred == 3], [5, 2**40, 99], 0).astype(np.int64)
    np.testing.assert_array_equal(precision_at_thresholds(sparse_truth, huge_pred), reference)
    # rows and columns follow sorted ids: truth 3, 17, 1000; pred 5, 99, 2**40
    np.testing.assert_allclose(iou_matrix(sparse_truth, huge_pred), iou_matrix(truth, pred)[:, [0, 2, 1]])
    assert 0.0 < reference.mean() < 1.0


def test_memory_order_and_bool_input_do_not_change_the_score():
    truth = discs((40, 50), [(12, 12), (25, 30)], 7)
    pred = discs((40, 50), [(13, 12), (25, 33)], 7)
    reference = precision_at_thresholds(truth, pred)
    np.testing.assert_array_equal(precision_at_thresholds(np.asfortranarray(truth), pred), reference)
    np.testing.assert_array_equal(precision_at_thresholds(np.asfortranarray(truth), np.asfortranarray(pred)), reference)
    np.testing.assert_array_equal(precision_at_thresholds(truth[:, ::-1], pred[:, ::-1]), reference)
    assert image_precision(truth > 0, truth == 1) == image_precision((truth > 0).astype(int), (truth == 1).astype(int))


def test_sparse_pair_counting_matches_the_dense_matrix(monkeypatch):
    rng = np.random.default_rng(1)
    truth = np.arange(1, 31 * 29 + 1, dtype=np.int64).reshape(31, 29)  # every pixel its own object: too many for dense
    truth[rng.random(truth.shape) < 0.2] = 0
    pred = truth.copy()
    pred[:, :10] = np.where(pred[:, :10] > 0, 5000, 0)  # one object swallowing many: IoU < 0.5 for all of them
    pred[rng.random(pred.shape) < 0.1] = 0
    sparse = precision_at_thresholds(truth, pred), iou_matrix(truth, pred)
    monkeypatch.setattr(metric, "_dense_fits", lambda *args: True)
    dense = precision_at_thresholds(truth, pred), iou_matrix(truth, pred)
    np.testing.assert_array_equal(sparse[0], dense[0])
    np.testing.assert_array_equal(sparse[1], dense[1])
    assert 0.0 < sparse[0][0] < 1.0


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="differ in shape"):
        image_precision(np.zeros((4, 4), int), np.zeros((4, 5), int))


def slow_precision(truth, pred):
    """The metric as its description reads: every pair's IoU from masks, greedy matching per threshold."""
    true_ids = [i for i in np.unique(truth) if i]
    pred_ids = [i for i in np.unique(pred) if i]
    if not true_ids and not pred_ids:
        return np.ones(10)
    iou = np.zeros((len(true_ids), len(pred_ids)))
    for a, i in enumerate(true_ids):
        for b, j in enumerate(pred_ids):
            t, p = truth == i, pred == j
            iou[a, b] = (t & p).sum() / (t | p).sum()
    out = []
    for threshold in IOU_THRESHOLDS:
        used_pred, tp = set(), 0
        for a in range(len(true_ids)):
            for b in range(len(pred_ids)):
                if b not in used_pred and iou[a, b] > threshold:
                    used_pred.add(b)
                    tp += 1
                    break
        out.append(tp / (len(true_ids) + len(pred_ids) - tp))
    return np.array(out)


def random_label(rng, shape, n_objects):
    label = np.zeros(shape, dtype=np.int32)
    ids = rng.choice(np.arange(1, 500), size=n_objects, replace=False)
    for k in ids:
        centre = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        label[disk(centre, rng.uniform(2, 9), shape=shape)] = k
    return label


def test_vectorised_matches_slow_reference_on_random_images():
    rng = np.random.default_rng(0)
    values = []
    for _ in range(40):
        truth = random_label(rng, (48, 56), int(rng.integers(0, 10)))
        # a noisy prediction: shifted truth with some objects dropped and some added
        pred = np.roll(truth, shift=tuple(rng.integers(-2, 3, size=2)), axis=(0, 1))
        pred[np.isin(pred, rng.choice(np.unique(pred), size=2))] = 0
        extra = random_label(rng, (48, 56), int(rng.integers(0, 3)))
        pred = np.where(extra > 0, extra + 1000, pred)
        fast, slow = precision_at_thresholds(truth, pred), slow_precision(truth, pred)
        np.testing.assert_allclose(fast, slow)
        values.append(fast.mean())
    assert 0.0 < np.mean(values) < 1.0  # the cases are neither trivial hits nor trivial misses


def test_score_images_and_by_type():
    a = discs((64, 64), [(16, 16), (40, 40)], 6)
    b = discs((64, 64), [(20, 20)], 8)
    truths = {"a": a, "b": b, "c": np.zeros((8, 8), np.int32)}
    preds = {"a": a, "b": discs((64, 64), [(20, 20)], 6), "c": np.zeros((8, 8), np.int32)}
    per_image = score_images(truths, preds)
    assert per_image["image_id"].tolist() == ["a", "b", "c"]
    assert per_image["score"].tolist() == [1.0, image_precision(b, preds["b"]), 1.0]
    assert per_image["n_true"].tolist() == [2, 1, 0]
    table = scores_by_type(per_image, {"a": "fluo", "b": "he", "c": "fluo"})
    assert table["type"].tolist() == ["fluo", "he", "all"]
    assert table["n_images"].tolist() == [2, 1, 3]
    np.testing.assert_allclose(table["mean"], [1.0, per_image["score"][1], per_image["score"].mean()])
    with pytest.raises(DataError, match="no image type"):
        scores_by_type(per_image, {"a": "fluo"})
    with pytest.raises(DataError, match="differ in image ids"):
        score_images(truths, {"a": a, "b": b})


def test_score_csv_matches_score_images(tmp_path):
    shape = (40, 50)
    truths = {f"img{k}": discs(shape, [(10, 10 + 3 * k), (28, 30)], 6) for k in range(4)}
    truths["blank"] = np.zeros(shape, np.int32)
    preds = {key: np.roll(label, k, axis=1) for k, (key, label) in enumerate(truths.items())}
    write_solution(tmp_path / "solution.csv", truths)
    # img3 left out of the submission: it must score as all false negatives
    write_submission(tmp_path / "sub.csv", preds, image_ids=["img0", "img1", "img2", "blank"])
    scored = score_csv(tmp_path / "sub.csv", tmp_path / "solution.csv")
    preds["img3"] = np.zeros(shape, np.int32)
    expected = score_images(truths, preds)
    pd.testing.assert_frame_equal(scored.set_index("image_id").loc[expected["image_id"]].reset_index(), expected)
    assert scored.set_index("image_id").loc["img3", "score"] == 0.0
    assert scored.set_index("image_id").loc["blank", "score"] == 1.0
