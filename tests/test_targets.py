"""Label image -> (mask, borderless, touching borders) target channels."""
import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.draw import disk

from nuclei.targets import CHANNELS, borderless_nuclei, make_targets, touching_borders

SHAPE = (64, 80)
LEFT, RIGHT = (32, 28), (32, 52)  # two discs of radius 13 that overlap around column 40


def touching_pair(radius: int = 13) -> np.ndarray:
    label = np.zeros(SHAPE, np.int32)
    label[disk(LEFT, radius, shape=SHAPE)] = 1
    rr, cc = disk(RIGHT, radius, shape=SHAPE)
    free = label[rr, cc] == 0
    label[rr[free], cc[free]] = 2
    return label


def test_shape_dtype_and_channel_names():
    targets = make_targets(touching_pair())
    assert targets.shape == (3,) + SHAPE and targets.dtype == np.uint8
    assert set(np.unique(targets)) <= {0, 1}
    assert CHANNELS == ("mask", "borderless", "touching")


def test_mask_is_the_union():
    label = touching_pair()
    np.testing.assert_array_equal(make_targets(label)[0], label > 0)


def test_touching_border_lies_only_between_the_discs():
    label = touching_pair()
    touching = make_targets(label)[2].astype(bool)
    assert touching.any()
    # where nucleus 1 has nucleus 2 as its right-hand neighbour
    contact_rows, contact_cols = np.nonzero((label[:, :-1] == 1) & (label[:, 1:] == 2))
    assert contact_rows.size > 3
    rows, cols = np.nonzero(touching)
    # near the contact column, and only along the contact segment plus the narrow gap where the rims part
    assert cols.min() >= contact_cols.min() - 1 and cols.max() <= contact_cols.max() + 2
    assert rows.min() >= contact_rows.min() - 3 and rows.max() <= contact_rows.max() + 3
    # both nuclei contribute pixels to the border (and so does the thin gap beside the contact)
    assert set(np.unique(label[touching])) == {0, 1, 2}


def test_touching_border_covers_a_one_pixel_gap():
    label = np.zeros((20, 20), np.int32)
    label[5:15, 3:9] = 1
    label[5:15, 10:16] = 2  # column 9 is background between them
    touching = touching_borders(label)
    assert touching[5:15, 9].all()


def test_separate_discs_have_no_touching_border():
    label = np.zeros(SHAPE, np.int32)
    label[disk((20, 20), 8, shape=SHAPE)] = 1
    label[disk((40, 60), 8, shape=SHAPE)] = 2
    assert not make_targets(label)[2].any()


def test_borderless_separates_touching_nuclei():
    label = touching_pair()
    borderless = make_targets(label)[1]
    _, n = ndi.label(borderless)
    assert n == 2
    assert (borderless <= (label > 0)).all()
    assert not (borderless & make_targets(label)[2]).any()


@pytest.mark.parametrize("size", [1, 2, 3])
def test_tiny_nuclei_are_never_deleted(size):
    label = np.zeros((20, 20), np.int32)
    label[3:3 + size, 3:3 + size] = 1
    label[10:10 + size, 12:12 + size] = 7
    borderless = make_targets(label)[1].astype(bool)
    for object_id in (1, 7):
        assert borderless[label == object_id].any(), f"nucleus {object_id} of {size}x{size} vanished"


def test_thin_nucleus_keeps_its_spine():
    label = np.zeros((20, 30), np.int32)
    label[8:11, 2:28] = 3  # 3 pixels thick: a depth of 2 would erase it
    borderless = borderless_nuclei(label, depth=2.0)
    assert borderless[9, 3:27].all()


@pytest.mark.parametrize("depth", [1.0, 2.0, 4.0])
def test_erosion_depth_shrinks_a_large_disc(depth):
    radius = 20
    label = np.zeros((64, 64), np.int32)
    label[disk((32, 32), radius, shape=label.shape)] = 1
    area = make_targets(label, erosion_depth=depth)[1].sum()
    expected = np.pi * (radius - depth) ** 2
    assert abs(area - expected) / expected < 0.1
    # deeper erosion, smaller body (distances come in grid steps, so compare a whole pixel deeper)
    assert make_targets(label, erosion_depth=depth + 1)[1].sum() < area


def test_empty_label_gives_zeros():
    targets = make_targets(np.zeros((16, 12), np.int32))
    assert targets.shape == (3, 16, 12) and targets.dtype == np.uint8
    assert not targets.any()


def test_label_ids_need_not_be_consecutive():
    label = touching_pair()
    sparse = np.where(label > 0, label * 1000 + 5, 0)
    np.testing.assert_array_equal(make_targets(sparse), make_targets(label))


def test_tiny_nucleus_pressed_against_another_keeps_a_core():
    from nuclei.targets import make_targets

    label = np.zeros((20, 20), np.int32)
    label[5:15, 5:15] = 1
    label[10, 15] = 2  # one pixel touching the big nucleus
    targets = make_targets(label)
    assert targets[1][label == 2].all()
    assert targets[1][label == 1].any()
