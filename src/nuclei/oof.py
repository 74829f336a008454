"""Out-of-fold check and threshold tuning: each fold's model predicts its own held-out V1 images at full resolution.

Probabilities are kept as float16 files (`oof_probs/<id>.npy`), so `tune` can search post-processing thresholds
(globally and per image type) without running the network again. Scores use the competition metric.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from .atomic import atomic_write_text
from .checkpoint import load_model
from .data.cache import CachedDataset
from .folds import read_folds
from .infer import load_probs, predict_probs, save_probs
from .metric import image_precision, scores_by_type
from .normalize import normalise
from .postprocess import PostprocessParams, labels_from_probs, params_for_type, tune, tune_by_type
from .train import resolve_device

logger = logging.getLogger(__name__)

PARAMS_FILE = "postprocess.json"


def experiment_dir(cfg: dict) -> Path:
    return Path("folds") / cfg["experiment"]


def config_params(cfg: dict) -> PostprocessParams:
    return PostprocessParams.from_dict({k: v for k, v in cfg["postprocess"].items() if k != "per_type"})


def resolve_params(cfg: dict, exp_dir: Path) -> tuple[PostprocessParams, dict[str, PostprocessParams]]:
    """Tuned parameters when `tune` has run (global, and per type when the config asks for it), else the config's."""
    path = exp_dir / PARAMS_FILE
    if not path.is_file():
        return config_params(cfg), {}
    tuned = json.loads(path.read_text())
    global_params = PostprocessParams.from_dict(tuned["global"])
    by_type = {t: PostprocessParams.from_dict(p) for t, p in tuned.get("by_type", {}).items()}
    return global_params, (by_type if cfg["postprocess"]["per_type"] else {})


def amp_dtype(cfg: dict, device: torch.device):
    return torch.bfloat16 if cfg["train"]["amp"] == "bf16" and device.type == "cuda" else None


def image_input(image: np.ndarray, kind: str, saved_input: dict) -> np.ndarray:
    """Normalise exactly as the checkpoint's model was trained."""
    return normalise(image, saved_input["normalisation"], kind, saved_input["per_type"],
                     tuple(saved_input["percentiles"]), saved_input["mean"], saved_input["std"])


def predict_oof(cfg: dict, exp_dir: Path) -> Path:
    """Write the OOF probabilities of every held-out image; images already predicted are skipped."""
    data = cfg["data"]
    cache = CachedDataset(Path(data["cache"]) / data["train_split"])
    folds = read_folds(cfg["folds"]["file"])
    folds = folds[folds["image_id"].isin(set(cache.ids))]
    kinds = cache.index.set_index("image_id")["type"]
    device = resolve_device(cfg["train"]["device"])
    probs_dir = exp_dir / "oof_probs"
    for fold in cfg["folds"]["run"] or range(cfg["folds"]["k"]):
        ids = [i for i in folds.loc[folds["fold"] == fold, "image_id"] if not (probs_dir / f"{i}.npy").is_file()]
        if not ids:
            continue
        checkpoint = exp_dir / f"fold{fold}.pt"
        model, saved_input = load_model(checkpoint, device)
        for image_id in tqdm(ids, desc=f"oof fold {fold}", unit="img"):
            x = image_input(cache.image(image_id), kinds[image_id], saved_input)
            probs = predict_probs([model], x, tta=cfg["infer"]["tta"], scales=cfg["infer"]["scales"], device=device,
                                  amp_dtype=amp_dtype(cfg, device))
            save_probs(probs_dir / f"{image_id}.npy", probs)
    return probs_dir


def _oof_set(cfg: dict, exp_dir: Path):
    data = cfg["data"]
    cache = CachedDataset(Path(data["cache"]) / data["train_split"])
    probs_dir = exp_dir / "oof_probs"
    ids = [i for i in cache.ids if (probs_dir / f"{i}.npy").is_file()]
    if not ids:
        raise FileNotFoundError(f"{probs_dir}: no OOF probabilities; run the oof stage first")
    kinds = cache.index.set_index("image_id")["type"]
    return ids, [load_probs(probs_dir / f"{i}.npy") for i in ids], [cache.label(i) for i in ids], [kinds[i] for i in ids]


def score_oof(cfg: dict, exp_dir: Path) -> dict:
    """OOF mAP overall and per type with the current post-processing; written to oof.json and oof_scores.csv."""
    ids, probs, truths, kinds = _oof_set(cfg, exp_dir)
    global_params, by_type = resolve_params(cfg, exp_dir)
    scores = []
    for image_id, p, truth, kind in tqdm(list(zip(ids, probs, truths, kinds)), desc="score oof", unit="img"):
        scores.append(image_precision(truth, labels_from_probs(p, params_for_type(by_type, kind, global_params))))
    per_image = pd.DataFrame({"image_id": ids, "score": scores, "type": kinds})
    table = scores_by_type(per_image[["image_id", "score"]], dict(zip(ids, kinds)))
    result = {
        "experiment": cfg["experiment"], "n_images": len(ids), "oof_map": float(np.mean(scores)),
        "by_type": {row["type"]: {"n_images": int(row["n_images"]), "map": float(row["mean"])} for _, row in table.iterrows()},
        "postprocess": global_params.to_dict(), "postprocess_by_type": {t: p.to_dict() for t, p in by_type.items()},
    }
    atomic_write_text(exp_dir / "oof_scores.csv", per_image.to_csv(index=False))
    atomic_write_text(exp_dir / "oof.json", json.dumps(result, indent=2))
    return result


def tune_on_oof(cfg: dict, exp_dir: Path) -> dict:
    """Search post-processing thresholds on the OOF probabilities; writes postprocess.json and reports the gain."""
    ids, probs, truths, kinds = _oof_set(cfg, exp_dir)
    grid = cfg["tune"]["grid"]
    base = config_params(cfg)
    best, best_score, baseline, table = tune(probs, truths, grid, base, image_precision)
    by_type = tune_by_type(probs, truths, kinds, grid, base, image_precision,
                           min_images=cfg["tune"]["min_images_per_type"], global_params=best)
    typed_score = float(np.mean([image_precision(t, labels_from_probs(p, by_type[k]))
                                 for p, t, k in zip(probs, truths, kinds)]))
    result = {"global": best.to_dict(), "by_type": {k: v.to_dict() for k, v in by_type.items()},
              "oof_map_config": baseline, "oof_map_tuned": best_score, "oof_map_tuned_by_type": typed_score}
    atomic_write_text(exp_dir / PARAMS_FILE, json.dumps(result, indent=2))
    atomic_write_text(exp_dir / "tune_table.csv", table.to_csv(index=False))
    return result
