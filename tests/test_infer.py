"""Padding, dihedral TTA and model averaging, with tiny convolutional "models"."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from nuclei.errors import DataError
from nuclei.infer import (
    DIHEDRAL,
    average_probs,
    crop_padding,
    dihedral,
    dihedral_inverse,
    load_probs,
    pad_to_multiple,
    predict_probs,
    save_probs,
    tta_transforms,
)


class StrideCheckedConv(nn.Module):
    """A conv that, like the U-Net, refuses inputs whose sides are not multiples of 32."""

    def __init__(self, kernel_size: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 3, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-2] % 32 == 0 and x.shape[-1] % 32 == 0, x.shape
        return self.conv(x)


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(height, width, 3)).astype(np.float32)


@pytest.mark.parametrize("k", range(DIHEDRAL))
def test_dihedral_inverse_restores_exactly(k):
    x = torch.randn(2, 3, 5, 7)
    y = dihedral(x, k)
    assert y.shape[-2:] == ((5, 7) if k % 2 == 0 else (7, 5))
    assert torch.equal(dihedral_inverse(y, k), x)


def test_dihedral_transforms_are_distinct():
    x = torch.arange(12.0).reshape(3, 4)
    variants = {tuple(dihedral(x, k).flatten().tolist()) + tuple(dihedral(x, k).shape) for k in range(DIHEDRAL)}
    assert len(variants) == DIHEDRAL
    assert torch.equal(dihedral(x, 4), torch.flip(x, dims=(-1,)))
    assert torch.equal(dihedral(x, 6), torch.flip(x, dims=(-2,)))


def test_tta_transforms():
    assert tta_transforms(1) == [0]
    assert tta_transforms(2) == [0, 4]
    assert sorted(tta_transforms(4)) == [0, 2, 4, 6]
    assert tta_transforms(8) == list(range(8))
    with pytest.raises(ValueError):
        tta_transforms(3)


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (31, 33), (32, 64), (2, 70)])
@pytest.mark.parametrize("channels", [None, 3])
def test_pad_crop_round_trip(shape, channels):
    image = np.random.default_rng(0).normal(size=shape + ((channels,) if channels else ())).astype(np.float32)
    padded, pads = pad_to_multiple(image, 32)
    assert padded.shape[0] % 32 == 0 and padded.shape[1] % 32 == 0
    assert padded.shape[0] - shape[0] < 32 and padded.shape[1] - shape[1] < 32
    top, bottom, left, right = pads
    assert 0 <= bottom - top <= 1 and 0 <= right - left <= 1
    chw = padded if channels is None else padded.transpose(2, 0, 1)
    restored = crop_padding(chw, pads)
    expected = image if channels is None else image.transpose(2, 0, 1)
    np.testing.assert_array_equal(restored, expected)


def test_padding_reflects():
    image = np.arange(30.0).reshape(5, 6)
    padded, (top, bottom, left, right) = pad_to_multiple(image, 8)
    assert (top, bottom, left, right) == (1, 2, 1, 1)
    np.testing.assert_array_equal(padded[0, 1:-1], image[1])  # reflect: the row next to the edge


def test_equivariant_model_tta_equals_no_tta():
    model = StrideCheckedConv(kernel_size=1, seed=0)  # a 1x1 conv commutes with every dihedral transform
    image = random_image(40, 50)
    plain = predict_probs([model], image, tta=1)
    for n in (2, 4, 8):
        np.testing.assert_allclose(predict_probs([model], image, tta=n), plain, atol=1e-6)


def test_tta_changes_non_equivariant_model():
    model = StrideCheckedConv(kernel_size=3, seed=1)  # a random 3x3 kernel is not rotation invariant
    image = random_image(40, 50)
    assert not np.allclose(predict_probs([model], image, tta=8), predict_probs([model], image, tta=1), atol=1e-4)


def test_model_averaging_equals_hand_mean():
    first, second = StrideCheckedConv(3, seed=2), StrideCheckedConv(3, seed=3)
    image = random_image(45, 37)
    own = [predict_probs([m], image, tta=4, scales=(1.0, 0.75)) for m in (first, second)]
    assert not np.allclose(own[0], own[1])
    np.testing.assert_allclose(
        predict_probs([first, second], image, tta=4, scales=(1.0, 0.75)), (own[0] + own[1]) / 2, atol=1e-6
    )
    np.testing.assert_allclose(
        predict_probs([first, second], image, tta=4, scales=(1.0, 0.75), weights=[1, 3]),
        0.25 * own[0] + 0.75 * own[1],
        atol=1e-6,
    )


@pytest.mark.parametrize("shape", [(1, 1), (31, 33), (1040, 1388)])
def test_output_shape_matches_input(shape):
    model = StrideCheckedConv(kernel_size=1, seed=4)
    model.train()
    tta = 8 if shape != (1040, 1388) else 2
    probs = predict_probs([model], random_image(*shape), tta=tta, scales=(1.0, 1.25))
    assert probs.shape == (3,) + shape and probs.dtype == np.float32
    assert 0.0 <= probs.min() and probs.max() <= 1.0
    assert model.training  # mode restored after inference


def test_scale_one_matches_direct_forward():
    model = StrideCheckedConv(kernel_size=1, seed=5)
    image = random_image(32, 64)
    expected = torch.sigmoid(model(torch.from_numpy(image.transpose(2, 0, 1))[None]))[0].detach().numpy()
    np.testing.assert_allclose(predict_probs([model], image, tta=1), expected, atol=1e-6)


def test_average_probs_weights_and_errors():
    a, b = np.zeros((3, 4, 5), np.float16), np.ones((3, 4, 5), np.float16)
    np.testing.assert_allclose(average_probs([a, b]), 0.5)
    np.testing.assert_allclose(average_probs([a, b], weights=[3, 1]), 0.25)
    assert average_probs([a, b]).dtype == np.float32
    with pytest.raises(ValueError, match="shape"):
        average_probs([a, np.ones((3, 4, 6))])
    with pytest.raises(ValueError, match="weights"):
        average_probs([a, b], weights=[1])


def test_save_load_probs(tmp_path):
    probs = np.random.default_rng(0).random((3, 7, 9)).astype(np.float32)
    path = tmp_path / "sub" / "image.npy"
    save_probs(path, probs)
    assert np.load(path).dtype == np.float16
    loaded = load_probs(path)
    assert loaded.dtype == np.float32 and loaded.shape == probs.shape
    np.testing.assert_allclose(loaded, probs, atol=1e-3)
    assert [p.name for p in path.parent.iterdir()] == ["image.npy"]  # no temporary file left behind
    with pytest.raises(DataError, match="missing.npy"):
        load_probs(tmp_path / "missing.npy")
    np.save(tmp_path / "flat.npy", np.zeros((4, 4)))
    with pytest.raises(DataError, match="flat.npy"):
        load_probs(tmp_path / "flat.npy")
