"""Input normalisation: deterministic, the same through the config, and doing what each mode promises."""
import numpy as np
import pytest
from skimage.draw import disk

from nuclei.config import load_config
from nuclei.normalize import MODES, gray_invert, hematoxylin, mode_for, normalise, normaliser_from_config

SIZE = (64, 64)
PER_TYPE = {"fluorescence": "gray_invert", "brightfield": "gray_invert", "histology": "hematoxylin"}


def nuclei_mask() -> np.ndarray:
    mask = np.zeros(SIZE, bool)
    for centre in [(16, 16), (40, 44), (50, 14)]:
        mask[disk(centre, 7, shape=SIZE)] = True
    return mask


def paint(background, nucleus, noise=3.0, seed=0) -> np.ndarray:
    image = np.empty(SIZE + (3,), np.float32)
    image[...] = background
    image[nuclei_mask()] = nucleus
    image += np.random.default_rng(seed).normal(0, noise, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def fluorescence():
    return paint((15, 15, 15), (190, 190, 190))


def brightfield():
    return paint((205, 205, 205), (70, 70, 70))


def he_like():
    return paint((235, 185, 215), (110, 60, 160))


@pytest.mark.parametrize("mode", ["rgb", "gray_invert", "hematoxylin", "per_type"])
def test_each_mode_is_deterministic_and_shaped(mode):
    image = he_like()
    first = normalise(image, mode, per_type=PER_TYPE)
    second = normalise(image.copy(), mode, per_type=PER_TYPE)
    assert first.shape == image.shape and first.dtype == np.float32
    np.testing.assert_array_equal(first, second)
    # scaled to [0, 1], then (x - 0.5) / 0.5
    assert first.min() >= -1.0 - 1e-6 and first.max() <= 1.0 + 1e-6


def test_rgb_is_plain_scaling():
    image = he_like()
    np.testing.assert_allclose(normalise(image, "rgb", mean=0.0, std=1.0), image / 255.0, rtol=1e-6)
    np.testing.assert_allclose(normalise(image, "rgb", mean=0.5, std=0.25), (image / 255.0 - 0.5) / 0.25, rtol=1e-5)


@pytest.mark.parametrize("mode", ["rgb", "gray_invert", "hematoxylin", "per_type"])
def test_config_normaliser_matches_direct_call(mode):
    cfg = load_config(None, [f"input.normalisation={mode}", "input.percentiles=[2.0, 98.0]"])
    apply = normaliser_from_config(cfg, mean=0.4, std=0.3)
    for image, kind in [(fluorescence(), "fluorescence"), (he_like(), "histology")]:
        expected = normalise(image, mode, kind, cfg["input"]["per_type"], (2.0, 98.0), 0.4, 0.3)
        np.testing.assert_array_equal(apply(image, kind), expected)


def test_gray_invert_makes_bright_background_look_like_fluorescence():
    image = brightfield()
    twin = 255 - image  # the same scene as a dark-background image
    a, b = gray_invert(image), gray_invert(twin)
    assert np.abs(a - b).max() < 1e-5
    mask = nuclei_mask()
    assert a[mask].mean() > 0.9 and a[~mask].mean() < 0.1  # nuclei bright, background dark


def test_gray_invert_leaves_dark_background_alone():
    out = gray_invert(fluorescence())
    mask = nuclei_mask()
    assert out[mask].mean() > 0.9 and out[~mask].mean() < 0.1
    assert np.array_equal(out[..., 0], out[..., 2])


def test_flat_image_does_not_divide_by_zero():
    out = normalise(np.full((8, 8, 3), 77, np.uint8), "gray_invert")
    assert np.isfinite(out).all()


def test_hematoxylin_gives_bright_nuclei_on_he():
    out = hematoxylin(he_like())
    mask = nuclei_mask()
    assert out[mask].mean() > out[~mask].mean() + 0.5
    assert out.shape == SIZE + (3,) and out.dtype == np.float32


def test_per_type_routes_by_kind():
    image = he_like()
    routed = normalise(image, "per_type", "histology", PER_TYPE)
    np.testing.assert_array_equal(routed, normalise(image, "hematoxylin"))
    routed = normalise(image, "per_type", "fluorescence", PER_TYPE)
    np.testing.assert_array_equal(routed, normalise(image, "gray_invert"))
    # a type missing from the table falls back to rgb
    np.testing.assert_array_equal(normalise(image, "per_type", "other", PER_TYPE), normalise(image, "rgb"))


def test_per_type_detects_the_kind_when_missing():
    image = he_like()  # detected as histology
    np.testing.assert_array_equal(normalise(image, "per_type", None, PER_TYPE), normalise(image, "hematoxylin"))


def test_mode_for_and_unknown_modes():
    assert mode_for("rgb", None, PER_TYPE) == "rgb"
    assert mode_for("per_type", "brightfield", PER_TYPE) == "gray_invert"
    with pytest.raises(ValueError, match="needs the image type"):
        mode_for("per_type", None, PER_TYPE)
    with pytest.raises(ValueError, match="unknown normalisation mode 'sepia'"):
        normalise(he_like(), "sepia")
    assert set(MODES) == {"rgb", "gray_invert", "hematoxylin", "per_type"}
