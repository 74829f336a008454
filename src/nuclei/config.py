"""Load and validate an experiment's YAML config; the only home of defaults.

A config file lists only what differs from DEFAULTS. Unknown keys are errors (a typo must not silently
fall back to a default). `--set a.b=value` overrides on the command line use the same check.
"""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

DEFAULTS: dict[str, Any] = {
    "experiment": None,  # defaults to the config file's stem
    "data": {
        "root": "data/dsb2018",  # Kaggle layout; the DSB_DATA environment variable overrides it
        "cache": "cache",  # compact lossless cache written by `prepare`
        "train_split": "stage1_train",
        "test_split": "stage1_test",
        "sample_submission": "stage1_sample_submission.csv",
        "solution": None,  # a published solution CSV in Kaggle's format, for local test scores
        "limit": None,  # use only the first N images of each split (smoke runs)
        "dataset": "v1",  # v1 | v9 | v1+v9
        "v9": {
            "dir": "cache/v9",
            "sources": [],  # [{kind: monuseg|ctc|folder|kaggle, path: ..., name: ..., weight: ...}]
            "crop_size": 256,
            "stride": 256,
            "min_foreground": 0.02,
            "target_diameter": None,  # rescale sources so the median nucleus diameter matches (pixels)
            "v1_weight": 1.0,  # sampling weight of the full-size V1 images against the V9 crops
        },
    },
    "targets": {"erosion_depth": 2.0, "touching_size": 3},
    "folds": {"k": 5, "seed": 42, "file": "folds/folds.csv", "run": None},  # run: list of folds, None = all
    "model": {
        "arch": "xception_inception_se",  # xception_inception_se | smp_xception_unet | plain_unet
        "encoder_weights": None,  # None | imagenet | path to a local state dict
        "decoder_channels": [256, 128, 64, 32, 16],
        "activation": "selu",  # selu | elu | relu
        "se_reduction": 16,
        "classes": 3,
        "inception_pool": "max",  # max | avg: the pooled branch of each Inception module
        "plain_base": 32,
        "plain_depth": 5,
    },
    "input": {
        "normalisation": "rgb",  # rgb | gray_invert | hematoxylin | per_type
        "per_type": {"fluorescence": "gray_invert", "brightfield": "gray_invert", "histology": "hematoxylin"},
        "percentiles": [1.0, 99.0],
    },
    "augment": {
        "crop_size": 256,
        "resize_256": False,  # the paper's V1 pipeline: resize whole images to 256x256 instead of cropping
        "flip": 0.5,
        "rotate90": 0.5,
        "rotate": {"p": 0.3, "limit": 45},
        "zoom": {"p": 0.3, "scale": [0.8, 1.25]},
        "shear": {"p": 0.2, "limit": 10},
        "channel_shuffle": 0.2,
        "blur": 0.1,
        "gauss_noise": 0.1,
        "pixel_dropout": 0.05,
        "emboss": 0.05,
        "piecewise_affine": 0.0,  # about 2 s per crop on one core (docs/RESULTS.md): use grid_distortion
        "grid_distortion": 0.1,
        "perspective": 0.1,
        "brightness_contrast": 0.3,
        "invert": 0.0,
        "to_gray": 0.0,
        "hue_saturation": 0.0,
        "gamma": 0.0,
        "he_stain": 0.0,
        # Per image type overrides of any key above, e.g. {histology: {he_stain: 0.5, hue_saturation: 0.3}}.
        "by_type": {},
    },
    "train": {
        "batch_size": 16,
        "crops_per_epoch": 2000,  # images differ in size, so an epoch is a fixed number of random crops
        "workers": 4,
        "stages": [
            {"epochs": 5, "lr": 1.0e-3, "freeze_encoder": True},
            {"epochs": 15, "lr": 1.0e-4, "freeze_encoder": False},
        ],
        "lr_step": 3,
        "lr_gamma": 0.75,
        "loss": "bce_dice",  # bce | dice | bce_dice
        "channel_weights": [1.0, 1.0, 2.0],  # mask, borderless, touching: the touching channel is rare
        "amp": "bf16",  # bf16 | none (bf16 only on CUDA)
        "channels_last": True,
        "compile": False,
        "seed": 42,
        "device": "auto",  # auto | cpu | cuda
    },
    # batch_size: network inputs per forward pass, counted in 256x256 inputs (big images go fewer at a time).
    "infer": {"tta": 8, "scales": [1.0], "batch_size": 8, "size_rescale": False, "target_diameter": None},
    "postprocess": {
        "method": "watershed",  # watershed | random_walker
        "t_borderless": 0.5,
        "t_touching": 0.5,
        "t_mask": 0.5,
        "min_size": 10,
        "min_marker_size": 5,
        "fill_holes": True,
        "rw_beta": 130.0,
        "per_type": False,  # use thresholds tuned per image type (written by `tune`)
    },
    "tune": {
        "grid": {
            "t_borderless": [0.3, 0.4, 0.5, 0.6, 0.7],
            "t_touching": [0.3, 0.5, 0.7],
            "t_mask": [0.3, 0.4, 0.5, 0.6],
            "min_size": [0, 10, 20, 40],
        },
        "min_images_per_type": 10,
    },
    "ensemble": {"experiments": [], "weights": []},  # extra experiments whose test probabilities are averaged in
    "submit": {"competition": "data-science-bowl-2018", "message": ""},
}


class _Loader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, where `1e-4` (no dot) is a string: read it as the float everyone means."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
                              list("-+.0123456789"))


def _merge(base: dict, update: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for key, value in (update or {}).items():
        if key not in base:
            raise ConfigError(f"{where}: unknown key '{key}' (valid: {', '.join(sorted(base))})")
        if isinstance(base[key], dict) and base[key] and key not in ("per_type", "grid", "by_type"):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{key}: expected a mapping, got {value!r}")
            out[key] = _merge(base[key], value, f"{where}.{key}")
        else:
            out[key] = value
    return out


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, value = text.split("=", 1)
    return key.split("."), yaml.load(value, Loader=_Loader)


def _validate(cfg: dict, where: str) -> None:
    choices = {
        ("data", "dataset"): ("v1", "v9", "v1+v9"),
        ("model", "arch"): ("xception_inception_se", "smp_xception_unet", "plain_unet"),
        ("model", "activation"): ("selu", "elu", "relu"),
        ("input", "normalisation"): ("rgb", "gray_invert", "hematoxylin", "per_type"),
        ("train", "loss"): ("bce", "dice", "bce_dice"),
        ("train", "amp"): ("bf16", "none"),
        ("postprocess", "method"): ("watershed", "random_walker"),
    }
    for (section, key), valid in choices.items():
        if cfg[section][key] not in valid:
            raise ConfigError(f"{where}: {section}.{key} = {cfg[section][key]!r}, expected one of {valid}")
    if len(cfg["train"]["channel_weights"]) != cfg["model"]["classes"]:
        raise ConfigError(f"{where}: train.channel_weights needs one weight per class ({cfg['model']['classes']})")
    if cfg["infer"]["tta"] not in (1, 2, 4, 8):
        raise ConfigError(f"{where}: infer.tta must be 1, 2, 4 or 8")
    if cfg["augment"]["crop_size"] % 32:
        raise ConfigError(f"{where}: augment.crop_size must be a multiple of 32")


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> dict:
    """DEFAULTS, merged with the YAML file, then with `section.key=value` overrides; validated."""
    where = str(path) if path else "defaults"
    user: dict = {}
    if path:
        try:
            user = yaml.load(Path(path).read_text(), Loader=_Loader) or {}
        except FileNotFoundError as err:
            raise ConfigError(f"{path}: config file not found") from err
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from err
        if not isinstance(user, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    cfg = _merge(DEFAULTS, user, where)
    if os.environ.get("DSB_DATA"):  # where the data lies on this machine; an explicit --set still wins
        cfg["data"]["root"] = os.environ["DSB_DATA"]
    for text in overrides or []:
        keys, value = _parse_override(text)
        patch: dict = value
        for key in reversed(keys):
            patch = {key: patch}
        cfg = _merge(cfg, patch, f"override {text}")
    if not cfg["experiment"]:
        cfg["experiment"] = Path(path).stem if path else "default"
    _validate(cfg, where)
    return cfg


def dump_config(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)
