"""Albumentations pipelines from the config: label ids survive, sizes are right, every lever runs."""
import copy

import numpy as np
import pytest
from conftest import draw_nuclei

from nuclei.augment import build_train_augment, build_val_crop, colour_transforms, geometric_transforms
from nuclei.config import DEFAULTS

SWITCHES = [k for k in DEFAULTS["augment"] if k not in ("crop_size", "resize_256", "by_type")]


def sample(size=(96, 112), seed=0):
    image, label = draw_nuclei(np.random.default_rng(seed), size, n=8)
    label = np.where(label > 0, label + 1000, 0).astype(np.int32)  # ids beyond uint8 and uint16-ish ranges too
    return image, label


def settings(crop_size=64, on: tuple = (), p: float = 0.0, **extra) -> dict:
    """An augment section with every switch at probability `p`, except those in `on` at 1."""
    aug = copy.deepcopy(DEFAULTS["augment"])
    aug["crop_size"] = crop_size
    for key in SWITCHES:
        value = 1.0 if key in on else p
        if isinstance(aug[key], dict):
            aug[key]["p"] = value
        else:
            aug[key] = value
    aug.update(extra)
    return aug


def test_defaults_give_crop_and_keep_ids():
    image, label = sample()
    augment = build_train_augment(settings(64, p=0.5, piecewise_affine=0.0))
    ids = set(np.unique(label))
    for seed in range(10):
        np.random.seed(seed)
        out = augment(image=image, mask=label)
        assert out["image"].shape == (64, 64, 3) and out["image"].dtype == np.uint8
        assert out["mask"].shape == (64, 64) and out["mask"].dtype == np.int32
        assert set(np.unique(out["mask"])) <= ids


def test_small_image_is_padded_up_to_the_crop():
    image, label = sample((40, 50))
    out = build_train_augment(settings(64))(image=image, mask=label)
    assert out["image"].shape == (64, 64, 3) and out["mask"].shape == (64, 64)


def test_resize_256_squashes_the_whole_image():
    image, label = sample((96, 160))
    aug = settings(64, resize_256=True)
    out = build_train_augment(aug)(image=image, mask=label)
    assert out["image"].shape == (64, 64, 3) and out["mask"].shape == (64, 64)
    # nearest neighbour for labels: no new ids, and every nucleus of this size still shows up
    assert set(np.unique(out["mask"])) == set(np.unique(label))


def test_zero_probabilities_leave_only_the_crop():
    aug = settings(64)
    assert geometric_transforms(aug) == [] and colour_transforms(aug) == []
    image, label = sample((64, 64))
    out = build_train_augment(aug)(image=image, mask=label)
    np.testing.assert_array_equal(out["image"], image)
    np.testing.assert_array_equal(out["mask"], label)


@pytest.mark.parametrize("switch", [s for s in SWITCHES if s != "piecewise_affine"])
def test_every_switch_runs_and_keeps_ids(switch):
    aug = settings(64, on=(switch,))
    transforms = geometric_transforms(aug) + colour_transforms(aug)
    assert transforms, f"{switch} at p=1 added no transform"
    image, label = sample()
    out = build_train_augment(aug)(image=image, mask=label)
    assert out["image"].shape == (64, 64, 3) and out["image"].dtype == np.uint8
    assert out["mask"].dtype == np.int32
    assert set(np.unique(out["mask"])) <= set(np.unique(label))


def test_piecewise_affine_runs_on_a_tiny_input():
    aug = settings(32, on=("piecewise_affine",))
    assert any(type(t).__name__ == "PiecewiseAffine" for t in geometric_transforms(aug))
    image, label = sample((64, 64))
    out = build_train_augment(aug)(image=image, mask=label)
    assert out["image"].shape == (32, 32, 3)
    assert set(np.unique(out["mask"])) <= set(np.unique(label))


def test_all_switches_together():
    image, label = sample()
    augment = build_train_augment(settings(64, p=1.0, piecewise_affine=0.0))
    for _ in range(3):
        out = augment(image=image, mask=label)
        assert out["image"].shape == (64, 64, 3)
        assert set(np.unique(out["mask"])) <= set(np.unique(label))


def test_val_crop_is_deterministic_and_centred():
    image, label = sample((100, 120))
    crop = build_val_crop(64)
    first, second = crop(image=image, mask=label), crop(image=image, mask=label)
    np.testing.assert_array_equal(first["image"], second["image"])
    np.testing.assert_array_equal(first["mask"], label[18:82, 28:92])


def test_per_type_pipelines_apply_by_image_type():
    from nuclei.augment import build_augment
    from nuclei.errors import ConfigError

    aug = settings(64, by_type={"histology": {"invert": 1.0}})
    augment = build_augment(aug)
    augment.set_random_seed(0)
    image, label = sample(size=(64, 64))
    plain = augment(kind="fluorescence", image=image, mask=label)["image"]
    inverted = augment(kind="histology", image=image, mask=label)["image"]
    np.testing.assert_array_equal(plain, image)
    np.testing.assert_array_equal(inverted, 255 - image)
    with pytest.raises(ConfigError, match="unknown key 'nope'"):
        build_augment(settings(64, by_type={"histology": {"nope": 1.0}}))
