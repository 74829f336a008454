"""Leave-source-out evaluation: score a trained experiment on labelled image sets from other sources.

Each source (MoNuSeg, Cell Tracking Challenge, a folder of image + label pairs, or a Kaggle split) is read in
place, every image is predicted by all folds averaged, post-processed with the experiment's (tuned) parameters,
optionally with the two-pass size rescale (`infer.size_rescale`), and scored with the competition metric.
The summary breaks the mAP down by source and by imaging type, which is where robustness shows.
"""
from __future__ import annotations

import json
import logging
import re
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
from tqdm import tqdm

from .atomic import atomic_write_text
from .data.external import Sample, read_source
from .data.modality import image_type
from .errors import DataError
from .infer import predict_probs
from .metric import image_precision
from .oof import amp_dtype, experiment_dir, image_input, resolve_params
from .postprocess import PostprocessParams, labels_from_probs, params_for_type
from .rescale import estimate_diameter, rescaled_prediction, resolve_target_diameter

logger = logging.getLogger(__name__)

ALL = "all"
PER_IMAGE_COLUMNS = ["source", "image", "type", "height", "width", "n_true", "n_pred", "true_diameter",
                     "pred_diameter", "score"]
TABLE_COLUMNS = ["source", "type", "n_images", "map"]

# (HxWx3 uint8 image, imaging type) -> HxW labels, or (labels, {column: value}) to add columns to the row
LabelFn = Callable[[np.ndarray, str], "np.ndarray | tuple[np.ndarray, dict]"]


def sample_type(sample: Sample) -> str:
    """The source's own modality tag, else the type detected from the image's colours."""
    return sample.modality or image_type(sample.image)


def _n_objects(label: np.ndarray) -> int:
    return int(np.count_nonzero(np.bincount(label.ravel().astype(np.int64))[1:]))


def score_samples(samples: Iterable[Sample], predict_label_fn: LabelFn, total: int | None = None) -> pd.DataFrame:
    """One row per image (PER_IMAGE_COLUMNS, then any extra columns the function returns):
    `predict_label_fn(image, type)` against the sample's label. The function sees the image and its type only.
    """
    rows = []
    for sample in tqdm(samples, desc="evaluate", unit="img", total=total):
        kind = sample_type(sample)
        result = predict_label_fn(sample.image, kind)
        pred, extra = result if isinstance(result, tuple) else (result, {})
        pred = np.asarray(pred)
        if pred.shape != sample.label.shape:
            raise DataError(f"{sample.source}/{sample.source_image}: predicted labels are {pred.shape}, "
                            f"the true labels {sample.label.shape}")
        rows.append({
            "source": sample.source, "image": sample.source_image, "type": kind,
            "height": sample.label.shape[0], "width": sample.label.shape[1],
            "n_true": _n_objects(sample.label), "n_pred": _n_objects(pred),
            "true_diameter": estimate_diameter(sample.label), "pred_diameter": estimate_diameter(pred),
            "score": image_precision(sample.label, pred), **extra,
        })
    extra_columns = list(dict.fromkeys(k for row in rows for k in row if k not in PER_IMAGE_COLUMNS))
    return pd.DataFrame(rows, columns=PER_IMAGE_COLUMNS + extra_columns)


def summarise(per_image: pd.DataFrame) -> pd.DataFrame:
    """mAP table (TABLE_COLUMNS): each source by type then 'all' types, each type over all sources, then overall."""
    rows = []

    def add(source: str, kind: str, frame: pd.DataFrame) -> None:
        rows.append({"source": source, "type": kind, "n_images": len(frame),
                     "map": float(frame["score"].mean()) if len(frame) else float("nan")})

    for source, by_source in per_image.groupby("source", sort=True):
        for kind, frame in by_source.groupby("type", sort=True):
            add(source, kind, frame)
        add(source, ALL, by_source)
    for kind, frame in per_image.groupby("type", sort=True):
        add(ALL, kind, frame)
    add(ALL, ALL, per_image)
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def model_label_fn(models, saved_input: dict, device, global_params: PostprocessParams,
                   params_by_type: dict[str, PostprocessParams], tta: int = 8, scales=(1.0,),
                   amp=None, target_diameter: float | None = None) -> LabelFn:
    """Fold-averaged prediction + post-processing for one image, with the two-pass size rescale when
    `target_diameter` is given (it then also reports the first-pass diameter and the factor used).
    Images are normalised as the checkpoints were trained (`saved_input`)."""
    def label_fn(image: np.ndarray, kind: str):
        params = params_for_type(params_by_type, kind, global_params)

        def predict(pixels: np.ndarray) -> np.ndarray:
            return predict_probs(models, image_input(pixels, kind, saved_input), tta=tta, scales=scales,
                                 device=device, amp_dtype=amp)

        def postprocess(probs: np.ndarray) -> np.ndarray:
            return labels_from_probs(probs, params)

        if target_diameter is None:
            return postprocess(predict(image))
        result = rescaled_prediction(predict, postprocess, image, target_diameter)
        return result.label, {"first_pass_diameter": result.diameter, "rescale_factor": result.factor}

    return label_fn


def _file_name(source: str) -> str:
    return "evaluate_" + re.sub(r"[^A-Za-z0-9._-]+", "_", source) + ".csv"


def _warn_if_trained_on(cfg: dict, spec: dict) -> None:
    """Scores on a source the experiment trained on (as a V9 source) are not held out."""
    if cfg["data"]["dataset"] == "v1":
        return
    path = Path(spec["path"]).resolve()
    if any(Path(s.get("path", "")).resolve() == path for s in cfg["data"]["v9"]["sources"]):
        logger.warning("%s is one of this experiment's V9 training sources: its scores are not held out", path)


def _json_number(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def evaluate_sources(cfg: dict, specs: list[dict], out_dir: Path, max_images: int | None = None) -> pd.DataFrame:
    """Score the experiment's fold models on labelled sources (`data.external.read_source` specs).

    `max_images` keeps the first N images of each spec. Writes per-image scores to
    `out_dir/evaluate_<source>.csv` and the summary to `out_dir/evaluate.json`; returns the summary table.
    """
    from .predict import fold_models
    from .train import resolve_device

    if not specs:
        raise DataError("evaluate: no source given")
    out_dir = Path(out_dir)
    exp_dir = experiment_dir(cfg)
    device = resolve_device(cfg["train"]["device"])
    models, saved_input = fold_models(cfg, exp_dir, device)
    global_params, by_type = resolve_params(cfg, exp_dir)
    target = resolve_target_diameter(cfg) if cfg["infer"]["size_rescale"] else None
    label_fn = model_label_fn(models, saved_input, device, global_params, by_type, tta=cfg["infer"]["tta"],
                              scales=cfg["infer"]["scales"], amp=amp_dtype(cfg, device), target_diameter=target)
    frames = []
    for spec in specs:
        _warn_if_trained_on(cfg, spec)
        samples = read_source(spec)
        if max_images is not None:
            samples = islice(samples, max_images)
        frames.append(score_samples(samples, label_fn, total=max_images))
    per_image = pd.concat(frames, ignore_index=True)
    if per_image.empty:
        raise DataError(f"evaluate: the sources {specs} yielded no images")
    for source, frame in per_image.groupby("source", sort=True):
        atomic_write_text(out_dir / _file_name(source), frame.to_csv(index=False))
    table = summarise(per_image)
    summary = {
        "experiment": cfg["experiment"], "sources": specs, "max_images": max_images,
        "folds": list(cfg["folds"]["run"] or range(cfg["folds"]["k"])), "tta": cfg["infer"]["tta"],
        "size_rescale": bool(cfg["infer"]["size_rescale"]), "target_diameter": target,
        "postprocess": global_params.to_dict(), "postprocess_by_type": {t: p.to_dict() for t, p in by_type.items()},
        "table": [{**row, "n_images": int(row["n_images"]), "map": _json_number(row["map"])}
                  for row in table.to_dict("records")],
    }
    atomic_write_text(out_dir / "evaluate.json", json.dumps(summary, indent=2, default=str))
    logger.info("evaluated %d images from %d source(s): mAP %.4f", len(per_image), per_image["source"].nunique(),
                per_image["score"].mean())
    return table


def external_oof(cfg: dict, out_dir: Path) -> pd.DataFrame | None:
    """OOF on the whole external images that V1+V9 training used: each image is scored only by the fold model
    that never saw any crop of it (folds by source image, as `build_v9` assigned them). None without such sources."""
    from .checkpoint import load_model
    from .data.v9 import group_fold
    from .train import resolve_device

    specs = [s for s in cfg["data"]["v9"]["sources"] if s.get("kind") != "kaggle"]
    if cfg["data"]["dataset"] == "v1" or not specs:
        return None
    exp_dir = experiment_dir(cfg)
    device = resolve_device(cfg["train"]["device"])
    global_params, by_type = resolve_params(cfg, exp_dir)
    run, k = list(cfg["folds"]["run"] or range(cfg["folds"]["k"])), cfg["folds"]["k"]
    buckets: dict[int, list[Sample]] = {fold: [] for fold in run}
    for spec in specs:
        for sample in read_source(spec):
            fold = group_fold(sample.source, sample.group or sample.source_image, k)
            if fold in buckets:
                buckets[fold].append(sample)
    frames = []
    for fold, samples in buckets.items():
        if not samples:
            continue
        checkpoint = exp_dir / f"fold{fold}.pt"
        model, saved_input = load_model(checkpoint, device)
        label_fn = model_label_fn([model], saved_input, device, global_params, by_type,
                                  tta=cfg["infer"]["tta"], scales=cfg["infer"]["scales"], amp=amp_dtype(cfg, device))
        frames.append(score_samples(samples, label_fn).assign(fold=fold))
    if not frames:
        return None
    per_image = pd.concat(frames, ignore_index=True)
    table = summarise(per_image)
    atomic_write_text(Path(out_dir) / "oof_external.csv", per_image.to_csv(index=False))
    atomic_write_text(Path(out_dir) / "oof_external.json", json.dumps(
        [{**row, "n_images": int(row["n_images"]), "map": _json_number(row["map"])} for row in table.to_dict("records")],
        indent=2))
    return table
