import math

import numpy as np
import pytest
from skimage.draw import disk

from conftest import write_synthetic_cache
from nuclei.data.cache import CachedDataset
from nuclei.errors import ConfigError
from nuclei.metric import image_precision
from nuclei.postprocess import PostprocessParams, labels_from_probs
from nuclei.rescale import (
    estimate_diameter,
    predict_rescaled,
    predict_rescaled_probs,
    resize_image,
    resize_labels,
    rescale_factor,
    rescaled_prediction,
    resolve_target_diameter,
    training_median_diameter,
)


def discs(shape, centres, radii):
    """Bright discs on black (HxWx3 uint8) and their labels."""
    label = np.zeros(shape, np.int32)
    for index, (centre, radius) in enumerate(zip(centres, radii), start=1):
        rr, cc = disk(centre, radius, shape=shape)
        label[rr, cc] = index
    image = np.where(label > 0, 200, 10).astype(np.uint8)
    return np.repeat(image[..., None], 3, axis=2), label


class ThresholdNet:
    """A fake network: nuclei are the bright pixels. Records the size of every image it sees."""

    def __init__(self):
        self.seen = []

    def __call__(self, image: np.ndarray) -> np.ndarray:
        self.seen.append(image.shape[:2])
        mask = (image[..., 0] > 105).astype(np.float32)
        return np.stack([mask, mask, np.zeros_like(mask)])


def postprocess_with(params: PostprocessParams):
    return lambda probs: labels_from_probs(probs, params)


POST = postprocess_with(PostprocessParams(min_size=0, min_marker_size=0))


def test_rescale_factor():
    assert rescale_factor(40.0, 20.0) == pytest.approx(0.5)
    assert rescale_factor(5.0, 20.0) == pytest.approx(4.0)
    assert rescale_factor(2.0, 20.0) == pytest.approx(4.0)  # clipped
    assert rescale_factor(200.0, 20.0, clip=(0.5, 2.0)) == pytest.approx(0.5)
    for measured in (float("nan"), 0.0, -3.0, float("inf")):
        assert rescale_factor(measured, 20.0) == 1.0
    with pytest.raises(ValueError):
        rescale_factor(10.0, 0.0)


def test_estimate_diameter_of_discs():
    _, label = discs((120, 120), [(30, 30), (80, 80)], [10, 20])
    areas = np.bincount(label.ravel())[1:]
    assert estimate_diameter(label) == pytest.approx(np.median(np.sqrt(4 * areas / np.pi)))
    _, big = discs((120, 120), [(60, 60)], [20])
    assert estimate_diameter(big) == pytest.approx(40.0, abs=1.0)
    assert math.isnan(estimate_diameter(np.zeros((10, 10), np.int32)))


def test_resize_helpers_keep_shape_and_ids():
    image = np.random.default_rng(0).integers(0, 255, (97, 131, 3), dtype=np.uint8)
    assert resize_image(image, (49, 66)).shape == (49, 66, 3)
    assert resize_image(image[..., :1], (200, 262)).shape == (200, 262, 1)
    _, label = discs((97, 131), [(20, 20), (60, 90), (80, 30)], [8, 12, 6])
    big = resize_labels(label, (194, 262))
    assert big.shape == (194, 262) and big.max() == 3
    back = resize_labels(big, (97, 131))
    assert back.shape == (97, 131)
    assert image_precision(label, back) == 1.0  # x2 then /2 with nearest at pixel centres is exact


def test_large_discs_are_shrunk_to_the_target_diameter():
    image, label = discs((161, 163), [(40, 40), (40, 120), (115, 80)], [20, 20, 20])
    net = ThresholdNet()
    result = rescaled_prediction(net, POST, image, target_diameter=20.0)
    assert result.factor == pytest.approx(0.5, abs=0.02)
    assert result.diameter == pytest.approx(40.0, abs=1.0)
    assert len(net.seen) == 2 and net.seen[0] == (161, 163)
    second = net.seen[1]
    assert second == (round(161 * result.factor), round(163 * result.factor))
    # What the second pass saw: discs of about the target diameter.
    small_image = resize_image(image, second)
    assert estimate_diameter(POST(net(small_image))) == pytest.approx(20.0, abs=1.5)
    assert result.label.shape == label.shape
    assert result.label.max() == 3
    assert image_precision(label, result.label) > 0.7


@pytest.mark.parametrize("shape, radius, target", [((97, 131), 3, 16.0), ((97, 131), 12, 8.0), ((64, 33), 4, 20.0)])
def test_round_trip_keeps_the_original_shape(shape, radius, target):
    rng = np.random.default_rng(radius)
    centres = [(int(rng.integers(radius + 1, shape[0] - radius - 1)), int(x))
               for x in np.linspace(radius + 1, shape[1] - radius - 2, 3)]
    image, label = discs(shape, centres, [radius] * len(centres))
    net = ThresholdNet()
    result = predict_rescaled(net, POST, image, target)
    assert len(net.seen) == 2 and net.seen[1] != shape  # the second pass really ran at another size
    assert result.shape == shape and result.dtype == np.int32
    assert result.max() == label.max()
    assert image_precision(label, result) > 0.75
    probs = predict_rescaled_probs(net, POST, image, target)
    assert probs.shape == (3, *shape)


def test_no_objects_gives_factor_one_and_the_first_pass():
    image = np.full((50, 70, 3), 10, np.uint8)
    net = ThresholdNet()
    result = rescaled_prediction(net, POST, image, target_diameter=20.0)
    assert result.factor == 1.0 and math.isnan(result.diameter)
    assert len(net.seen) == 1
    assert result.label.shape == (50, 70) and result.label.max() == 0


def test_nuclei_already_at_the_target_size_skip_the_second_pass():
    image, _ = discs((100, 100), [(30, 30), (70, 70)], [10, 10])
    net = ThresholdNet()
    first = POST(ThresholdNet()(image))
    result = rescaled_prediction(net, POST, image, target_diameter=estimate_diameter(first))
    assert result.factor == 1.0 and len(net.seen) == 1
    np.testing.assert_array_equal(result.label, first)


def test_labels_back_keeps_nuclei_below_min_size_that_probs_back_drops():
    # Five discs of 29 px set the measured size; three of 13 px fall under min_size=20 at the original scale.
    centres = [(15, 15), (15, 45), (15, 75), (45, 15), (45, 45), (45, 75), (75, 15), (75, 45)]
    image, label = discs((97, 97), centres, [3, 3, 3, 3, 3, 2, 2, 2])
    post = postprocess_with(PostprocessParams(min_size=20, min_marker_size=3))
    assert post(ThresholdNet()(image)).max() == 5
    by_labels = rescaled_prediction(ThresholdNet(), post, image, target_diameter=12.0, back="labels")
    by_probs = rescaled_prediction(ThresholdNet(), post, image, target_diameter=12.0, back="probs")
    assert by_labels.factor == by_probs.factor == pytest.approx(12.0 / estimate_diameter(label[label <= 5]), abs=0.01)
    assert by_labels.label.max() == 8
    assert by_probs.label.max() == 5
    assert image_precision(label, by_labels.label) > image_precision(label, by_probs.label)
    with pytest.raises(ValueError):
        rescaled_prediction(ThresholdNet(), post, image, 12.0, back="nearest")


def test_training_median_diameter(tmp_path):
    cache = CachedDataset(write_synthetic_cache(tmp_path / "train", n_images=5, size=(96, 96)))
    per_image = [estimate_diameter(cache.label(i)) for i in cache.ids]
    assert training_median_diameter(cache, cache.ids) == pytest.approx(np.median(per_image))
    assert training_median_diameter(cache, cache.ids[:1]) == pytest.approx(per_image[0])
    assert math.isnan(training_median_diameter(cache, []))


def test_resolve_target_diameter(tmp_path):
    cfg = {"infer": {"target_diameter": 17}, "data": {"cache": str(tmp_path), "train_split": "train"}}
    assert resolve_target_diameter(cfg) == 17.0
    cfg["infer"]["target_diameter"] = None
    cache = CachedDataset(write_synthetic_cache(tmp_path / "train", n_images=3, size=(64, 64)))
    assert resolve_target_diameter(cfg) == pytest.approx(training_median_diameter(cache, cache.ids))
    cfg["infer"]["target_diameter"] = -1
    with pytest.raises(ConfigError):
        resolve_target_diameter(cfg)
