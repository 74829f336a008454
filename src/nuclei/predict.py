"""Test-time stages: fold-averaged probabilities for the test split (`predict`), then labels, overlays and the
Kaggle CSV from those probabilities, averaged over experiments when ensembling (`postprocess`).
`predict_folder` does both for any folder of microscopy images outside the Kaggle layout.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .checkpoint import load_model
from .data.cache import CachedDataset, write_label
from .data.kaggle import read_kaggle_image
from .data.modality import image_type
from .errors import DataError
from .infer import average_probs, inputs_per_forward, load_probs, predict_probs_batch, save_probs, tta_transforms
from .oof import amp_dtype, experiment_dir, image_input, resolve_params
from .plots import plot_overlay
from .postprocess import labels_from_probs, params_for_type
from .rescale import predict_rescaled, predict_rescaled_probs, resolve_target_diameter
from .submission import write_submission
from .train import resolve_device

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")


def fold_models(cfg: dict, exp_dir: Path, device):
    """Every trained fold of an experiment, and the input settings they share."""
    folds = cfg["folds"]["run"] or range(cfg["folds"]["k"])
    paths = [exp_dir / f"fold{k}.pt" for k in folds]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"missing checkpoints {missing}: run the train stage first")
    loaded = [load_model(p, device) for p in paths]
    return [model for model, _ in loaded], loaded[0][1]


def _max_batch(cfg: dict, height: int, width: int) -> int:
    """Network inputs per forward pass: `infer.batch_size` counted in 256x256 inputs, so big images go fewer at a time."""
    return inputs_per_forward(height + (-height % 32), width + (-width % 32), cfg["infer"]["batch_size"])


def _predict_batch(models, saved_input: dict, images: list[np.ndarray], kinds: list[str], cfg: dict,
                   device) -> list[np.ndarray]:
    """Fold-averaged probabilities of same-sized images, which share forward passes."""
    xs = [image_input(image, kind, saved_input) for image, kind in zip(images, kinds)]
    return predict_probs_batch(models, xs, tta=cfg["infer"]["tta"], scales=cfg["infer"]["scales"], device=device,
                               amp_dtype=amp_dtype(cfg, device), max_batch=_max_batch(cfg, *images[0].shape[:2]))


def _predict(models, saved_input: dict, image: np.ndarray, kind: str, cfg: dict, device) -> np.ndarray:
    return _predict_batch(models, saved_input, [image], [kind], cfg, device)[0]


def same_size_batches(ids: list[str], shapes: dict[str, tuple[int, int]], images_per_batch) -> list[list[str]]:
    """Ids grouped by image size, each group cut into batches of `images_per_batch(height, width)` images."""
    groups: dict[tuple[int, int], list[str]] = {}
    for image_id in ids:
        groups.setdefault(shapes[image_id], []).append(image_id)
    batches = []
    for (height, width), members in groups.items():
        size = max(1, images_per_batch(height, width))
        batches += [members[i:i + size] for i in range(0, len(members), size)]
    return batches


def _predict_fn(models, saved_input: dict, kind: str, cfg: dict, device):
    """image (uint8 HxWx3, any size) -> fold-averaged probabilities, for the two-pass size rescale."""
    return lambda image: _predict(models, saved_input, image, kind, cfg, device)


def predict_test(cfg: dict) -> Path:
    """Fold-averaged probabilities of every test image as float16 files; images already done are skipped."""
    exp_dir = experiment_dir(cfg)
    cache = CachedDataset(Path(cfg["data"]["cache"]) / cfg["data"]["test_split"])
    out_dir = exp_dir / "test_probs"
    todo = [i for i in cache.ids if not (out_dir / f"{i}.npy").is_file()]
    if todo:
        device = resolve_device(cfg["train"]["device"])
        models, saved_input = fold_models(cfg, exp_dir, device)
        index = cache.index.set_index("image_id")
        kinds = index["type"]
        # The rescale's first pass needs labels to measure nuclei; probabilities are stored at the original size.
        target = resolve_target_diameter(cfg) if cfg["infer"]["size_rescale"] else None
        global_params, by_type = resolve_params(cfg, exp_dir)
        if target is None:  # same-sized images share forward passes: all their TTA variants in one batch
            shapes = {i: (int(index.at[i, "height"]), int(index.at[i, "width"])) for i in todo}
            n_tta = len(tta_transforms(cfg["infer"]["tta"]))
            batches = same_size_batches(todo, shapes, lambda h, w: _max_batch(cfg, h, w) // n_tta)
        else:  # the two-pass rescale sizes each image its own way
            batches = [[i] for i in todo]
        progress = tqdm(total=len(todo), desc="predict test", unit="img")
        for batch in batches:
            images = [cache.image(i) for i in batch]
            if target is None:
                all_probs = _predict_batch(models, saved_input, images, [kinds[i] for i in batch], cfg, device)
            else:
                kind, params = kinds[batch[0]], params_for_type(by_type, kinds[batch[0]], global_params)
                predict = _predict_fn(models, saved_input, kind, cfg, device)
                all_probs = [predict_rescaled_probs(predict, lambda p: labels_from_probs(p, params), images[0], target)]
            for image_id, probs in zip(batch, all_probs):
                save_probs(out_dir / f"{image_id}.npy", probs)
            progress.update(len(batch))
        progress.close()
    return out_dir


def ensemble_probs(cfg: dict, image_id: str) -> np.ndarray:
    """This experiment's test probabilities, averaged with those of `ensemble.experiments` by their weights."""
    names = [cfg["experiment"], *cfg["ensemble"]["experiments"]]
    weights = cfg["ensemble"]["weights"] or None
    if weights is not None and len(weights) != len(names):
        raise DataError(f"ensemble.weights needs {len(names)} values (this experiment first), got {len(weights)}")
    return average_probs([load_probs(Path("folds") / n / "test_probs" / f"{image_id}.npy") for n in names], weights)


def make_submission(cfg: dict, sample_csv: Path, out_csv: Path, overlays: bool = True) -> Path:
    """Probabilities -> labels (uint16 PNG per image), contour overlays, and a validated Kaggle CSV."""
    exp_dir = experiment_dir(cfg)
    cache = CachedDataset(Path(cfg["data"]["cache"]) / cfg["data"]["test_split"])
    kinds = cache.index.set_index("image_id")["type"]
    global_params, by_type = resolve_params(cfg, exp_dir)
    label_dir = out_csv.with_suffix("")
    labels = {}
    for image_id in tqdm(cache.ids, desc="postprocess", unit="img"):
        params = params_for_type(by_type, kinds[image_id], global_params)
        labels[image_id] = labels_from_probs(ensemble_probs(cfg, image_id), params)
        write_label(label_dir / "labels" / f"{image_id}.png", labels[image_id])
        if overlays:
            plot_overlay(cache.image(image_id), labels[image_id], label_dir / "overlays" / f"{image_id}.png",
                         title=f"{image_id[:12]} ({kinds[image_id]})")
    from .submission import read_sample_ids

    write_submission(out_csv, labels, read_sample_ids(sample_csv))
    logger.info("wrote %s (%d images, %d objects)", out_csv, len(labels), sum(int(l.max()) for l in labels.values()))
    return out_csv


def predict_folder(cfg: dict, input_dir: Path, output_dir: Path) -> list[Path]:
    """Label images (uint16 PNG) and contour overlays for any folder of PNG/TIF/JPG microscopy images."""
    files = sorted(p for p in Path(input_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{input_dir}: no PNG, TIF or JPG images found")
    device = resolve_device(cfg["train"]["device"])
    models, saved_input = fold_models(cfg, experiment_dir(cfg), device)
    global_params, by_type = resolve_params(cfg, experiment_dir(cfg))
    target = resolve_target_diameter(cfg) if cfg["infer"]["size_rescale"] else None
    written = []
    for path in tqdm(files, desc="predict folder", unit="img"):
        image = read_kaggle_image(path)
        kind = image_type(image)
        params = params_for_type(by_type, kind, global_params)
        predict = _predict_fn(models, saved_input, kind, cfg, device)
        if target is None:
            label = labels_from_probs(predict(image), params)
        else:  # labels come back from the rescaled pass (keeps small nuclei; see rescale.py)
            label = predict_rescaled(predict, lambda p: labels_from_probs(p, params), image, target)
        write_label(Path(output_dir) / f"{path.stem}_labels.png", label)
        written.append(plot_overlay(image, label, Path(output_dir) / f"{path.stem}_overlay.png", title=path.stem))
    return written
