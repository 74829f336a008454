"""The test-time stages end to end on generated data: predict -> postprocess -> CSV -> leaderboard, and folders."""
import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from conftest import draw_nuclei, write_synthetic_cache
from nuclei.cli import main
from nuclei.folds import stratified_folds, write_folds
from nuclei.submission import validate_submission

TINY = [
    "data.cache=cache", "data.train_split=train", "data.test_split=test", "data.root=raw", "folds.k=2", "folds.run=[0]",
    "model.arch=plain_unet", "model.plain_base=8", "model.activation=relu", "augment.crop_size=64",
    "train.batch_size=8", "train.crops_per_epoch=64", "train.workers=0",
    "train.stages=[{epochs: 3, lr: 0.01, freeze_encoder: false}]", "infer.tta=2", "experiment=chain",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny experiment trained once for the module (each test works in its own folders)."""
    import os

    tmp_path = tmp_path_factory.mktemp("chain")
    write_synthetic_cache(tmp_path / "cache" / "train", n_images=8)
    test_cache = write_synthetic_cache(tmp_path / "cache" / "test", n_images=4, seed=5, size=(96, 130))
    ids = [f"synth{i:03d}" for i in range(8)]
    write_folds(tmp_path / "folds" / "folds.csv", stratified_folds(ids, ["fluorescence"] * 8, k=2))
    (tmp_path / "raw").mkdir()
    # The sample submission lists every test image; one listed image has nothing the model can find.
    sample_ids = [f"synth{i:03d}" for i in range(4)]
    pd.DataFrame({"ImageId": sample_ids, "EncodedPixels": "1 1"}).to_csv(tmp_path / "raw" / "stage1_sample_submission.csv",
                                                                         index=False)
    cwd, threads = os.getcwd(), torch.get_num_threads()
    os.chdir(tmp_path)
    torch.set_num_threads(1)
    args = [f"--set={s}" for s in TINY]
    try:
        assert main(["train", *args]) == 0
        yield tmp_path, args, test_cache
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)


def test_predict_postprocess_and_leaderboard_make_a_valid_submission(trained):
    root, args, test_cache = trained
    assert main(["predict", *args]) == 0
    probs = sorted((root / "folds" / "chain" / "test_probs").glob("*.npy"))
    assert len(probs) == 4
    first = np.load(probs[0])
    assert first.dtype == np.float16 and first.shape == (3, 96, 130)
    assert main(["postprocess", *args]) == 0
    csv = root / "submissions" / "chain.csv"
    rows = validate_submission(csv, root / "raw" / "stage1_sample_submission.csv",
                               shapes={f"synth{i:03d}": (96, 130) for i in range(4)})
    assert set(rows["ImageId"]) == {f"synth{i:03d}" for i in range(4)}
    label = cv2.imread(str(root / "submissions" / "chain" / "labels" / "synth000.png"), cv2.IMREAD_UNCHANGED)
    assert label.shape == (96, 130) and label.dtype == np.uint16
    assert (root / "submissions" / "chain" / "overlays" / "synth000.png").stat().st_size > 1000
    # Without Kaggle credentials `submit` fails with a clear message and keeps the CSV; the row is still recorded.
    before = csv.read_bytes()
    assert main(["leaderboard", *args, "--add", str(csv)]) == 0
    board = pd.read_csv(root / "submissions" / "leaderboard.csv")
    assert board["file"].tolist() == [str(csv)] and board["experiments"].tolist() == ["chain"]
    assert (root / "submissions" / "leaderboard.png").is_file()
    assert csv.read_bytes() == before


def test_submit_without_credentials_keeps_the_csv(trained, monkeypatch):
    root, args, _ = trained
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(root / "no-kaggle"))
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    csv = root / "submissions" / "kept.csv"
    csv.parent.mkdir(exist_ok=True)
    csv.write_text("ImageId,EncodedPixels\n")
    assert main(["submit", *args, "--csv", str(csv)]) == 2
    assert csv.read_text() == "ImageId,EncodedPixels\n"


def test_predict_any_folder_of_images(trained):
    root, args, _ = trained
    folder = root / "my_images"
    folder.mkdir()
    image, _ = draw_nuclei(np.random.default_rng(9), (45, 77))
    cv2.imwrite(str(folder / "plate1.png"), image)
    cv2.imwrite(str(folder / "plate2.tif"), image[..., 0])
    assert main(["predict", *args, "--input", str(folder), "--output", str(root / "out")]) == 0
    for stem in ("plate1", "plate2"):
        label = cv2.imread(str(root / "out" / f"{stem}_labels.png"), cv2.IMREAD_UNCHANGED)
        assert label.shape == (45, 77)
        assert (root / "out" / f"{stem}_overlay.png").is_file()


def test_same_size_batches_group_by_size_and_cap_the_count():
    from nuclei.predict import same_size_batches

    shapes = {"a": (256, 256), "b": (520, 696), "c": (256, 256), "d": (256, 256), "e": (520, 696)}
    batches = same_size_batches(list(shapes), shapes, lambda h, w: 2 if h == 256 else 1)
    assert sorted(map(sorted, batches)) == [["a", "c"], ["b"], ["d"], ["e"]]
    assert all(len({shapes[i] for i in batch}) == 1 for batch in batches)


def test_batched_prediction_equals_one_image_at_a_time():
    from nuclei.infer import predict_probs, predict_probs_batch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 3, 3, padding=1))
    rng = np.random.default_rng(0)
    images = [rng.normal(size=(40, 70, 3)).astype(np.float32) for _ in range(3)]
    together = predict_probs_batch([model], images, tta=8, max_batch=24)
    for image, probs in zip(images, together):
        np.testing.assert_allclose(probs, predict_probs([model], image, tta=8), atol=1e-5)
