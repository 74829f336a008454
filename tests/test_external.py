"""External (V9) readers: polygon rasterisation, MoNuSeg and CTC on the real shared samples, folders, Kaggle."""
from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from skimage.draw import disk

from nuclei.data.external import (Sample, parse_aperio_xml, rasterise_polygons, read_ctc, read_kaggle,
                                  read_label_folder, read_monuseg, read_source, to_uint8_rgb)
from nuclei.errors import DataError


def aperio_xml(regions: list[list[tuple[float, float]]]) -> str:
    """An Aperio ImageScope XML with one Region per vertex list of (X=col, Y=row)."""
    body = []
    for k, vertices in enumerate(regions, 1):
        vs = "".join(f'<Vertex X="{x}" Y="{y}"/>' for x, y in vertices)
        body.append(f'<Region Id="{k}" Type="0"><Attributes/><Vertices>{vs}</Vertices></Region>')
    return ('<Annotations MicronsPerPixel="0.25"><Annotation Id="1"><Regions><RegionAttributeHeaders/>'
            + "".join(body) + "</Regions></Annotation></Annotations>")


def rectangle(r0: int, c0: int, r1: int, c1: int) -> list[tuple[float, float]]:
    return [(c0, r0), (c1, r0), (c1, r1), (c0, r1)]


# A: 10x20 = 200 px, B: 10x10 = 100 px apart, C: 10x10 = 100 px overlapping A on rows 15..19, cols 25..29 (25 px),
# D: two vertices only (degenerate). Corners are inclusive (pixel centres on the edge are in).
RECTANGLES = [rectangle(10, 10, 19, 29), rectangle(40, 40, 49, 49), rectangle(15, 25, 24, 34), [(1, 1), (5, 5)]]


def test_rasterise_known_xml_counts_areas_and_overlap(tmp_path):
    path = tmp_path / "known.xml"
    path.write_text(aperio_xml(RECTANGLES))
    polygons = parse_aperio_xml(path)
    assert [len(p) for p in polygons] == [4, 4, 4, 2]
    label = rasterise_polygons(polygons, (64, 64))
    assert label.dtype == np.int32
    areas = np.bincount(label.ravel())[1:]
    # Objects are numbered in document order; the smaller C keeps the 25 shared pixels, A keeps 200 - 25.
    assert areas.tolist() == [175, 100, 100]
    assert np.all(label[15:20, 25:30] == 3)
    assert np.all(label[10:15, 10:30] == 1) and np.all(label[10:20, 10:25] == 1)
    assert np.all(label[40:50, 40:50] == 2)


def test_rasterise_overlap_does_not_depend_on_region_order():
    polygons = [np.asarray(v, float) for v in RECTANGLES[:3]]
    forward = rasterise_polygons(polygons, (64, 64))
    backward = rasterise_polygons(polygons[::-1], (64, 64))
    assert np.array_equal(forward > 0, backward > 0)
    assert sorted(np.bincount(backward.ravel())[1:].tolist()) == [100, 100, 175]
    # A small nucleus drawn inside a large one survives whichever comes first.
    big, small = np.asarray(rectangle(0, 0, 29, 29), float), np.asarray(rectangle(10, 10, 14, 14), float)
    for order in ([big, small], [small, big]):
        assert sorted(np.bincount(rasterise_polygons(order, (32, 32)).ravel())[1:].tolist()) == [25, 900 - 25]


def test_rasterise_half_integer_corners_give_exact_area():
    # Vertices on pixel boundaries (half-integers) enclose exactly the pixel centres inside: 10 x 5 = 50.
    polygon = np.asarray([(3.5, 2.5), (8.5, 2.5), (8.5, 12.5), (3.5, 12.5)])
    assert int((rasterise_polygons([polygon], (20, 20)) > 0).sum()) == 50


def write_monuseg(root: Path, stem: str, image: np.ndarray, regions) -> None:
    """The official layout with spaces in folder names."""
    (root / "Tissue Images").mkdir(parents=True, exist_ok=True)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(root / "Tissue Images" / f"{stem}.tif"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    (root / "Annotations" / f"{stem}.xml").write_text(aperio_xml(regions))


def test_read_monuseg_generated_pairs_by_stem_and_keeps_rgb(tmp_path):
    image = np.zeros((64, 64, 3), np.uint8)
    image[..., 0] = 200  # red: would come back blue if BGR were not converted
    write_monuseg(tmp_path, "TCGA-x", image, RECTANGLES[:3])
    (sample,) = list(read_monuseg(tmp_path))
    assert isinstance(sample, Sample)
    assert (sample.source, sample.source_image, sample.modality) == ("monuseg", "TCGA-x", "histology")
    assert np.array_equal(sample.image, image)
    assert sample.label.max() == 3


def test_read_monuseg_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="missing"):
        list(read_monuseg(tmp_path / "missing"))
    write_monuseg(tmp_path, "a", np.zeros((8, 8, 3), np.uint8), RECTANGLES[:1])
    (tmp_path / "Tissue Images" / "b.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(DataError, match=re.escape("b.tif")):
        list(read_monuseg(tmp_path))
    (tmp_path / "Annotations" / "b.xml").write_text(aperio_xml(RECTANGLES[:1]))
    with pytest.raises(DataError, match=r"b\.tif: not a readable image"):
        list(read_monuseg(tmp_path))
    (tmp_path / "Annotations" / "b.xml").write_text("<Annotations><Region>")
    (tmp_path / "Tissue Images" / "b.tif").unlink()
    cv2.imwrite(str(tmp_path / "Tissue Images" / "b.tif"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match=r"b\.xml: not a readable Aperio XML"):
        list(read_monuseg(tmp_path))


@pytest.fixture(scope="module")
def monuseg_samples(external_root) -> list[Sample]:
    return list(read_monuseg(external_root / "monuseg"))


def test_monuseg_real_sample(external_root, monuseg_samples):
    assert len(monuseg_samples) == 13
    total = 0
    for sample in monuseg_samples:
        assert sample.image.shape == (1000, 1000, 3) and sample.image.dtype == np.uint8
        assert sample.label.shape == (1000, 1000) and sample.label.dtype == np.int32
        assert np.array_equal(np.unique(sample.label)[1:], np.arange(1, sample.label.max() + 1))
        xml = (external_root / "monuseg" / "annotations" / f"{sample.source_image}.xml").read_text()
        regions = xml.count("<Region ")
        assert regions - 2 <= sample.label.max() <= regions, sample.source_image
        total += int(sample.label.max())
        assert sample.image.std() > 10  # real tissue, not a blank decode
    assert abs(total - 4949) <= 0.02 * 4949


def test_ctc_real_sample(external_root):
    samples = list(read_ctc(external_root / "ctc"))
    by_source: dict[str, list[Sample]] = {}
    for sample in samples:
        by_source.setdefault(sample.source, []).append(sample)
    assert {k: len(v) for k, v in by_source.items()} == {"Fluo-N2DH-GOWT1": 4, "Fluo-N2DH-SIM+": 6}
    assert [s.source_image for s in by_source["Fluo-N2DH-GOWT1"]] == ["01_t021", "01_t031", "01_t033", "01_t039"]
    for sample in samples:
        dataset = external_root / "ctc" / sample.source
        seq, frame = sample.source_image.split("_t")
        raw = cv2.imread(str(dataset / f"{seq}_GT" / "SEG" / f"man_seg{frame}.tif"), cv2.IMREAD_UNCHANGED)
        assert raw is not None and raw.dtype == np.uint16
        n = len(np.unique(raw)) - 1
        assert sample.label.max() == n
        assert np.array_equal(np.unique(sample.label), np.arange(n + 1))
        assert sample.image.dtype == np.uint8 and sample.image.shape == raw.shape + (3,)
        assert np.array_equal(sample.image[..., 0], sample.image[..., 2])
        # The percentile stretch gives the low-contrast SIM+ frames a full range.
        assert sample.image[..., 0].max() == 255 and np.percentile(sample.image[..., 0], 0.5) == 0
        assert (sample.modality, sample.group) == ("fluorescence", f"{sample.source}/01")
    sim = by_source["Fluo-N2DH-SIM+"][0]
    nuclei, background = sim.image[sim.label > 0, 0].mean(), sim.image[sim.label == 0, 0].mean()
    assert nuclei > background + 30
    # The dataset folder itself works as root too.
    assert len(list(read_ctc(external_root / "ctc" / "Fluo-N2DH-GOWT1"))) == 4


def write_tif(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


def test_ctc_generated_prefers_gt_over_silver_truth_and_stretches_16bit(tmp_path):
    dataset = tmp_path / "Fluo-Test"
    frame = np.full((32, 48), 1000, np.uint16)
    frame[8:16, 8:16] = 1400
    for t in ("000", "001"):
        write_tif(dataset / "01" / f"t{t}.tif", frame)
    gt, st = np.zeros((32, 48), np.uint16), np.zeros((32, 48), np.uint16)
    gt[8:16, 8:16], gt[20:24, 30:40] = 7, 40
    st[8:16, 8:16] = 5
    write_tif(dataset / "01_GT" / "SEG" / "man_seg000.tif", gt)
    write_tif(dataset / "01_ST" / "SEG" / "man_seg000.tif", st)
    write_tif(dataset / "01_ST" / "SEG" / "man_seg001.tif", st)
    samples = list(read_ctc(dataset))
    assert [s.source_image for s in samples] == ["01_t000", "01_t001"]
    assert samples[0].label.max() == 2 and samples[1].label.max() == 1  # GT for 000, ST for 001
    assert samples[0].image[10, 10, 0] == 255 and samples[0].image[0, 0, 0] == 0
    (dataset / "01" / "t001.tif").unlink()
    with pytest.raises(DataError, match=r"man_seg001\.tif: annotated frame has no image .*t001\.tif"):
        list(read_ctc(dataset))
    with pytest.raises(DataError, match="no CTC dataset"):
        list(read_ctc(dataset / "01"))


def discs_label(shape=(64, 80), centres=((20, 20), (40, 55)), radius=8) -> np.ndarray:
    label = np.zeros(shape, np.int32)
    for k, centre in enumerate(centres, 1):
        label[disk(centre, radius, shape=shape)] = k * 10  # ids need not be contiguous
    return label


def test_read_label_folder_both_layouts(tmp_path):
    image = np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    label = discs_label()
    flat = tmp_path / "flat"
    flat.mkdir()
    cv2.imwrite(str(flat / "x.png"), image)
    cv2.imwrite(str(flat / "x_label.png"), label.astype(np.uint16))
    split = tmp_path / "split"
    (split / "images").mkdir(parents=True)
    (split / "labels").mkdir()
    cv2.imwrite(str(split / "images" / "y.png"), image)
    cv2.imwrite(str(split / "labels" / "y.tif"), label.astype(np.uint16))
    for root, stem in ((flat, "x"), (split, "y")):
        (sample,) = list(read_label_folder(root, modality="brightfield"))
        assert (sample.source, sample.source_image, sample.modality) == (root.name, stem, "brightfield")
        assert np.array_equal(sample.image, cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        assert np.array_equal(np.unique(sample.label), [0, 1, 2])
        assert np.array_equal(sample.label > 0, label > 0)
    cv2.imwrite(str(flat / "z.png"), image)
    with pytest.raises(DataError, match=r"z\.png: no label image"):
        list(read_label_folder(flat))


def test_to_uint8_rgb_16bit_stretch():
    gray = np.linspace(100, 500, 64 * 64).reshape(64, 64).astype(np.uint16)
    rgb = to_uint8_rgb(gray)
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255


def write_kaggle_train(root: Path, image_id: str, label: np.ndarray) -> None:
    folder = root / "stage1_train" / image_id
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    image = np.zeros(label.shape + (3,), np.uint8)
    image[label > 0] = 200
    cv2.imwrite(str(folder / "images" / f"{image_id}.png"), image)
    for k in range(1, label.max() + 1):
        cv2.imwrite(str(folder / "masks" / f"m{k}.png"), (label == k).astype(np.uint8) * 255)


def test_read_kaggle_train_and_solution_csv(tmp_path):
    pytest.importorskip("nuclei.data.kaggle")
    rle = pytest.importorskip("nuclei.rle")
    label = discs_label() // 10
    write_kaggle_train(tmp_path, "abc", label)
    (sample,) = list(read_kaggle(tmp_path))
    assert (sample.source, sample.source_image) == ("kaggle", "abc")
    assert np.array_equal(sample.label, label) and sample.image.shape == (64, 80, 3)

    test_dir = tmp_path / "stage1_test" / "def" / "images"
    test_dir.mkdir(parents=True)
    cv2.imwrite(str(test_dir / "def.png"), np.zeros((64, 80, 3), np.uint8))
    rows = [{"ImageId": "def", "EncodedPixels": r, "Height": 64, "Width": 80, "Usage": "Public"}
            for r in rle.label_to_rles(label)]
    csv = tmp_path / "stage1_solution.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    (sample,) = list(read_kaggle(tmp_path, "stage1_test", csv))
    assert sample.source_image == "def" and np.array_equal(sample.label, label)
    with pytest.raises(DataError, match="needs solution_csv"):
        list(read_kaggle(tmp_path, "stage1_test"))


def test_read_source_dispatch(tmp_path, external_root):
    (sample,) = list(read_source({"kind": "ctc", "path": external_root / "ctc" / "Fluo-N2DH-GOWT1",
                                  "name": "gowt1"}))[:1]
    assert sample.source == "gowt1"
    with pytest.raises(DataError, match="kind must be one of"):
        list(read_source({"kind": "zip", "path": tmp_path}))
    with pytest.raises(DataError, match="no path"):
        list(read_source({"kind": "ctc"}))
