"""Cropper: tiles cover the image exactly, cut nuclei stay as partial objects, rescaling keeps labels crisp."""
from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import disk

from nuclei.data.cropper import (crop_tiles, median_nucleus_diameter, rescale_sample, scale_to_target,
                                 tile_starts)


def random_sample(shape=(600, 520), n=60, seed=0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
    label = np.zeros(shape, np.int32)
    for k in range(1, n + 1):
        centre = rng.integers(0, shape)
        label[disk(tuple(centre), int(rng.integers(5, 15)), shape=shape)] = k
    return image, label


def test_tile_starts_align_the_last_tile_to_the_border():
    assert tile_starts(600, 256, 256) == [0, 256, 344]
    assert tile_starts(520, 256, 256) == [0, 256, 264]
    assert tile_starts(512, 256, 256) == [0, 256]
    assert tile_starts(256, 256, 256) == [0]
    assert tile_starts(100, 256, 256) == [0]
    assert tile_starts(600, 256, 128) == [0, 128, 256, 344]
    with pytest.raises(ValueError, match="stride"):
        tile_starts(600, 256, 300)


def is_relabelling(source: np.ndarray, crop: np.ndarray) -> bool:
    """True when crop is source with ids renamed one-to-one (0 kept as 0)."""
    pairs = np.unique(np.stack([source.ravel(), crop.ravel()]), axis=1)
    return (len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))
            and np.all((pairs[0] == 0) == (pairs[1] == 0)))


@pytest.mark.parametrize("stride", [256, 200])
def test_tiles_reassemble_to_the_source_exactly(stride):
    image, label = random_sample()
    tiles = crop_tiles(image, label, size=256, stride=stride, min_foreground=0)
    ys, xs = tile_starts(600, 256, stride), tile_starts(520, 256, stride)
    assert [(t.y, t.x) for t in tiles] == [(y, x) for y in ys for x in xs]
    canvas = np.zeros_like(image)
    filled = np.zeros(label.shape, bool)
    foreground = np.zeros(label.shape, bool)
    for y, x, crop_image, crop_label in tiles:  # tiles unpack like tuples
        assert crop_image.shape == (256, 256, 3) and crop_label.shape == (256, 256)
        window = np.s_[y:y + 256, x:x + 256]
        # Where tiles overlap (border-aligned last tiles), they must agree with what is already there.
        assert np.array_equal(canvas[window][filled[window]], crop_image[filled[window]])
        canvas[window] = crop_image
        filled[window] = True
        foreground[window] |= crop_label > 0
        assert is_relabelling(label[window], crop_label)
        assert np.array_equal(np.unique(crop_label), np.arange(crop_label.max() + 1))  # ids 1..n
    assert filled.all()
    assert np.array_equal(canvas, image)
    assert np.array_equal(foreground, label > 0)


def test_nucleus_cut_by_a_tile_border_is_partial_in_both_tiles():
    image = np.zeros((512, 512, 3), np.uint8)
    label = np.zeros((512, 512), np.int32)
    label[disk((100, 256), 20, shape=label.shape)] = 1
    full_area = int(label.sum())
    tiles = {(t.y, t.x): t for t in crop_tiles(image, label, 256, 256, min_foreground=0)}
    left, right = tiles[(0, 0)].label, tiles[(0, 256)].label
    assert left.max() == 1 and right.max() == 1
    assert 0 < (left > 0).sum() < full_area and 0 < (right > 0).sum() < full_area
    assert (left > 0).sum() + (right > 0).sum() == full_area
    assert tiles[(256, 0)].label.max() == 0


def test_small_image_is_padded_reflect_and_zero():
    image, label = random_sample((100, 150), n=5, seed=1)
    (tile,) = crop_tiles(image, label, 256, 256, min_foreground=0)
    assert tile.padded and (tile.valid_height, tile.valid_width) == (100, 150)
    assert np.array_equal(tile.image[:100, :150], image)
    assert np.array_equal(tile.image, np.pad(image, ((0, 156), (0, 106), (0, 0)), mode="reflect"))
    assert not tile.label[100:].any() and not tile.label[:, 150:].any()
    assert is_relabelling(label, tile.label[:100, :150])
    full = crop_tiles(*random_sample((256, 256), n=5), 256, 256, min_foreground=0)
    assert not full[0].padded


def test_min_foreground_skips_empty_tiles():
    image = np.zeros((512, 512, 3), np.uint8)
    label = np.zeros((512, 512), np.int32)
    label[disk((60, 60), 30, shape=label.shape)] = 1  # ~2,800 px = 4.3% of the top-left tile
    assert [(t.y, t.x) for t in crop_tiles(image, label, 256, 256, min_foreground=0.02)] == [(0, 0)]
    assert crop_tiles(image, label, 256, 256, min_foreground=0.05) == []
    assert len(crop_tiles(image, label, 256, 256, min_foreground=0)) == 4
    tile = crop_tiles(image, label, 256, 256, min_foreground=0.02)[0]
    assert tile.foreground == pytest.approx(label[:256, :256].astype(bool).mean())


def test_median_diameter_and_scale_to_target():
    label = np.zeros((40, 40), np.int32)
    label[0:2, 0:2] = 1  # area 4
    label[10:13, 10:13] = 5  # area 9
    label[20:24, 20:24] = 9  # area 16
    expected = np.sqrt(4 * 9 / np.pi)
    assert median_nucleus_diameter(label) == pytest.approx(expected)
    assert scale_to_target(label, 2 * expected) == pytest.approx(2.0)
    assert np.isnan(median_nucleus_diameter(np.zeros((5, 5), np.int32)))
    assert scale_to_target(np.zeros((5, 5), np.int32), 20) == 1.0


def test_rescale_sample_sizes_and_crisp_labels():
    label = np.zeros((200, 300), np.int32)
    label[disk((50, 50), 20, shape=label.shape)] = 7
    label[disk((100, 200), 20, shape=label.shape)] = 100_000  # ids must not blend: nearest, not linear
    image = np.zeros((200, 300, 3), np.uint8)
    image[label > 0] = 255
    small_image, small_label = rescale_sample(image, label, 0.5)
    assert small_image.shape == (100, 150, 3) and small_image.dtype == np.uint8
    assert small_label.shape == (100, 150) and small_label.dtype == np.int32
    assert np.array_equal(np.unique(small_label), [0, 1, 2])
    big_image, big_label = rescale_sample(image, label, 2.0)
    assert big_label.shape == (400, 600)
    assert median_nucleus_diameter(big_label) == pytest.approx(2 * median_nucleus_diameter(label), rel=0.02)
    # Image and label stay aligned: the label's centroid sits where the bright disc is.
    rows, cols = np.nonzero(big_label == 1)
    assert big_image[int(rows.mean()), int(cols.mean())].min() == 255
    assert abs(rows.mean() - 2 * 50 - 0.5) < 1 and abs(cols.mean() - 2 * 50 - 0.5) < 1
    same = rescale_sample(image, label, 1.0)
    assert same[0] is image and same[1] is label
