"""The Kaggle layout reader: every PNG flavour becomes HxWx3 uint8 RGB, masks merge into one label image,
and every kind of bad input raises a DataError that names the file."""
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage.draw import disk

from nuclei.data import kaggle
from nuclei.data.kaggle import (
    LabelReport,
    image_path,
    list_ids,
    masks_dir,
    read_kaggle_image,
    read_kaggle_label,
    to_rgb_uint8,
)
from nuclei.errors import DataError


def write_sample(split_dir: Path, image_id: str, image: np.ndarray, masks: list[np.ndarray] | None) -> Path:
    """One Kaggle sample folder; `image` is written as given (OpenCV's BGR order), masks as 0/255 PNGs."""
    folder = split_dir / image_id
    (folder / "images").mkdir(parents=True)
    assert cv2.imwrite(str(folder / "images" / f"{image_id}.png"), image)
    if masks is not None:
        (folder / "masks").mkdir()
        for index, mask in enumerate(masks):
            assert cv2.imwrite(str(folder / "masks" / f"m{index:03d}.png"), mask)
    return folder


def disc_mask(shape, centre, radius) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[disk(centre, radius, shape=shape)] = 255
    return mask


# ---- images: every PNG flavour -> HxWx3 uint8 RGB -------------------------------------------------------------


def test_rgb_png_keeps_channel_order(tmp_path):
    bgr = np.zeros((6, 5, 3), np.uint8)
    bgr[..., 2] = 255  # pure red, in OpenCV's BGR order
    path = tmp_path / "red.png"
    cv2.imwrite(str(path), bgr)
    rgb = read_kaggle_image(path)
    assert rgb.shape == (6, 5, 3) and rgb.dtype == np.uint8
    assert (rgb[..., 0] == 255).all() and (rgb[..., 1:] == 0).all()


def test_rgba_png_drops_alpha(tmp_path):
    bgra = np.zeros((4, 7, 4), np.uint8)
    bgra[..., 0] = 200  # blue
    bgra[..., 3] = 255
    path = tmp_path / "rgba.png"
    cv2.imwrite(str(path), bgra)
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).shape[2] == 4  # really written with alpha
    rgb = read_kaggle_image(path)
    assert rgb.shape == (4, 7, 3) and rgb.dtype == np.uint8
    assert (rgb[..., 2] == 200).all() and (rgb[..., :2] == 0).all()


def test_grayscale_png_becomes_three_equal_channels(tmp_path):
    gray = np.arange(30, dtype=np.uint8).reshape(5, 6) * 8
    path = tmp_path / "gray.png"
    cv2.imwrite(str(path), gray)
    rgb = read_kaggle_image(path)
    assert rgb.shape == (5, 6, 3) and rgb.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], gray)


def test_16bit_png_is_stretched_not_blackened(tmp_path):
    # A dim 12-bit image: a plain >> 8 would leave values <= 15.
    gray = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (8, 1))
    path = tmp_path / "deep.png"
    cv2.imwrite(str(path), gray)
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    rgb = read_kaggle_image(path)
    assert rgb.shape == (8, 64, 3) and rgb.dtype == np.uint8
    row = rgb[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255
    assert (np.diff(row) >= 0).all()  # brighter stays brighter


def test_16bit_rgba_alpha_does_not_darken_colours():
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 4096, (32, 32, 3)).astype(np.uint16)
    bgra = np.dstack([bgr, np.full((32, 32), 65535, np.uint16)])
    np.testing.assert_array_equal(to_rgb_uint8(bgra), to_rgb_uint8(bgr))
    assert to_rgb_uint8(bgra).max() == 255


def test_gray_alpha_array_becomes_gray_rgb():
    gray_alpha = np.dstack([np.full((3, 3), 77, np.uint8), np.full((3, 3), 255, np.uint8)])
    rgb = to_rgb_uint8(gray_alpha)
    assert rgb.shape == (3, 3, 3) and (rgb == 77).all()


def test_unsupported_pixel_type_names_the_file():
    with pytest.raises(DataError, match="some.png.*float32"):
        to_rgb_uint8(np.zeros((3, 3), np.float32), "some.png")


def test_one_pixel_image_and_label(tmp_path):
    folder = write_sample(tmp_path, "tiny", np.full((1, 1, 3), 90, np.uint8), [np.full((1, 1), 255, np.uint8)])
    rgb = read_kaggle_image(folder / "images" / "tiny.png")
    assert rgb.shape == (1, 1, 3) and rgb.dtype == np.uint8 and (rgb == 90).all()
    label, report = read_kaggle_label(folder / "masks", rgb.shape[:2])
    assert label.shape == (1, 1) and label.dtype == np.int32 and label[0, 0] == 1
    assert report == LabelReport(n_masks=1, n_overlap_pixels=0, n_empty_masks=0)


# ---- bad images -------------------------------------------------------------------------------------------------


def test_truncated_png_names_the_file(tmp_path):
    rng = np.random.default_rng(1)
    ok, buf = cv2.imencode(".png", rng.integers(0, 255, (40, 40, 3), np.uint8))
    data = buf.tobytes()
    path = tmp_path / "half.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="half.png.*(corrupt|truncated)"):
        read_kaggle_image(path)


def test_empty_and_missing_files_name_the_file(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty.png"):
        read_kaggle_image(empty)
    with pytest.raises(DataError, match="absent.png.*not found"):
        read_kaggle_image(tmp_path / "absent.png")


def test_image_beyond_max_pixels_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    cv2.imwrite(str(path), np.zeros((20, 30), np.uint8))
    monkeypatch.setattr(kaggle, "MAX_PIXELS", 599)
    with pytest.raises(DataError, match=r"big.png.*20x30"):
        read_kaggle_image(path)
    monkeypatch.setattr(kaggle, "MAX_PIXELS", 600)  # exactly at the limit is fine
    assert read_kaggle_image(path).shape == (20, 30, 3)


# ---- masks -> label image ---------------------------------------------------------------------------------------


def test_masks_merge_into_label_ids(tmp_path):
    shape = (40, 50)
    masks = [disc_mask(shape, (10, 10), 5), disc_mask(shape, (25, 35), 7), disc_mask(shape, (30, 8), 4)]
    folder = write_sample(tmp_path, "a", np.zeros(shape, np.uint8), masks)
    label, report = read_kaggle_label(folder / "masks", shape)
    assert label.dtype == np.int32 and label.shape == shape
    assert report == LabelReport(n_masks=3, n_overlap_pixels=0, n_empty_masks=0)
    for index, mask in enumerate(masks, start=1):  # ids follow the sorted file order
        np.testing.assert_array_equal(label == index, mask > 0)


def test_overlapping_masks_first_file_wins_and_is_counted(tmp_path):
    shape = (30, 30)
    first, second = disc_mask(shape, (15, 10), 7), disc_mask(shape, (15, 18), 7)
    overlap = (first > 0) & (second > 0)
    assert overlap.any()
    # m000 sorts before m001, so the first disc keeps the shared pixels.
    folder = write_sample(tmp_path, "a", np.zeros(shape, np.uint8), [first, second])
    label, report = read_kaggle_label(folder / "masks", shape)
    assert report.n_overlap_pixels == int(overlap.sum())
    assert report.n_masks == 2
    assert (label[overlap] == 1).all()
    np.testing.assert_array_equal(label == 2, (second > 0) & ~overlap)
    # Deterministic: reading again gives the same label image.
    again, _ = read_kaggle_label(folder / "masks", shape)
    np.testing.assert_array_equal(label, again)


def test_sorted_file_order_decides_not_creation_order(tmp_path):
    shape = (20, 20)
    big, small = disc_mask(shape, (10, 10), 8), disc_mask(shape, (10, 10), 3)
    masks = tmp_path / "masks"
    masks.mkdir()
    cv2.imwrite(str(masks / "b.png"), big)  # created first, sorts second
    cv2.imwrite(str(masks / "a.png"), small)
    label, report = read_kaggle_label(masks, shape)
    np.testing.assert_array_equal(label == 1, small > 0)
    assert report.n_overlap_pixels == int((small > 0).sum())


def test_empty_mask_files_are_skipped_and_counted(tmp_path):
    shape = (16, 16)
    folder = write_sample(tmp_path, "a", np.zeros(shape, np.uint8),
                          [np.zeros(shape, np.uint8), disc_mask(shape, (8, 8), 4)])
    label, report = read_kaggle_label(folder / "masks", shape)
    assert report.n_empty_masks == 1 and report.n_masks == 1
    assert set(np.unique(label)) == {0, 1}


def test_colour_masks_with_alpha_are_read_by_their_colour(tmp_path):
    shape = (16, 16)
    on = disc_mask(shape, (8, 8), 4)
    bgra = np.dstack([on, on, on, np.full(shape, 255, np.uint8)])  # opaque everywhere: alpha must be ignored
    masks = tmp_path / "masks"
    masks.mkdir()
    cv2.imwrite(str(masks / "m.png"), bgra)
    label, _ = read_kaggle_label(masks, shape)
    np.testing.assert_array_equal(label > 0, on > 0)


def test_empty_masks_folder_names_the_folder(tmp_path):
    folder = write_sample(tmp_path, "a", np.zeros((8, 8), np.uint8), [])
    with pytest.raises(DataError, match=r"a[/\\]masks.*empty"):
        read_kaggle_label(folder / "masks", (8, 8))


def test_missing_masks_folder_names_the_folder(tmp_path):
    with pytest.raises(DataError, match=r"nowhere.*not found"):
        read_kaggle_label(tmp_path / "nowhere", (8, 8))


def test_mask_of_another_size_names_mask_and_both_sizes(tmp_path):
    folder = write_sample(tmp_path, "a", np.zeros((20, 30), np.uint8), [np.full((21, 30), 255, np.uint8)])
    with pytest.raises(DataError, match=r"m000.png.*21x30.*20x30"):
        read_kaggle_label(folder / "masks", (20, 30))


def test_corrupt_mask_names_the_file(tmp_path):
    folder = write_sample(tmp_path, "a", np.zeros((8, 8), np.uint8), [np.full((8, 8), 255, np.uint8)])
    (folder / "masks" / "m001.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DataError, match="m001.png"):
        read_kaggle_label(folder / "masks", (8, 8))


# ---- the split folder -------------------------------------------------------------------------------------------


def test_list_ids_sorted_and_ignores_loose_files(tmp_path):
    for image_id in ("b", "a", "c"):
        write_sample(tmp_path, image_id, np.zeros((4, 4), np.uint8), None)
    (tmp_path / "notes.txt").write_text("not a sample")
    assert list_ids(tmp_path) == ["a", "b", "c"]
    assert image_path(tmp_path, "a") == tmp_path / "a" / "images" / "a.png"
    assert masks_dir(tmp_path, "a") == tmp_path / "a" / "masks"


def test_missing_images_folder_names_it(tmp_path):
    write_sample(tmp_path, "good", np.zeros((4, 4), np.uint8), None)
    (tmp_path / "broken" / "masks").mkdir(parents=True)
    with pytest.raises(DataError, match=r"broken.*images"):
        list_ids(tmp_path)


def test_missing_split_folder_names_it(tmp_path):
    with pytest.raises(DataError, match="stage9_train"):
        list_ids(tmp_path / "stage9_train")


def test_real_sample_reads_like_its_masks(dsb_root):
    split = dsb_root / "stage1_train"
    image_id = list_ids(split)[0]
    rgb = read_kaggle_image(image_path(split, image_id))
    assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8
    label, report = read_kaggle_label(masks_dir(split, image_id), rgb.shape[:2])
    files = sorted(masks_dir(split, image_id).glob("*.png"))
    union = np.zeros(rgb.shape[:2], bool)
    for path in files:
        union |= cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) > 0
    np.testing.assert_array_equal(label > 0, union)
    assert report.n_masks + report.n_empty_masks == len(files)
    assert label.max() == report.n_masks
