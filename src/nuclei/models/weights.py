"""Encoder weights: ImageNet from the Hugging Face hub (via smp's settings) or a local state-dict file.

`encoder_weights` is one of:
  None          random initialisation;
  "imagenet"    smp's Xception ImageNet weights, downloaded from the hub `smp-hub/xception.imagenet`;
  a path        a local .pth/.pt/.safetensors state dict of the encoder (keys may carry an "encoder." prefix,
                so a whole-model checkpoint works too); e.g. the hub's model.safetensors copied by hand.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn as nn
from huggingface_hub import hf_hub_download
from safetensors.torch import load_file
from segmentation_models_pytorch.encoders import encoders as smp_encoders

from nuclei.errors import DataError

logger = logging.getLogger(__name__)

ENCODER_NAME = "xception"
IMAGENET = "imagenet"
# Recorded from the hub's config.json of smp-hub/xception.imagenet (the Cadene/pretrainedmodels port):
# inputs in [0, 1], mean = std = 0.5. Used when that config is not in the local hub cache.
XCEPTION_IMAGENET_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _imagenet_settings() -> dict:
    return smp_encoders[ENCODER_NAME]["pretrained_settings"][IMAGENET]


def imagenet_weights_file() -> Path:
    """Download (or find in the hub cache) the ImageNet Xception weights; RuntimeError with a fix when offline."""
    settings = _imagenet_settings()
    try:
        hf_hub_download(settings["repo_id"], filename="config.json", revision=settings["revision"])
        path = hf_hub_download(settings["repo_id"], filename="model.safetensors", revision=settings["revision"])
    except Exception as exc:  # hub errors vary by version (OSError, httpx errors); all mean "not available"
        raise RuntimeError(
            f"could not download the ImageNet Xception weights from the Hugging Face hub "
            f"({settings['repo_id']}, revision {settings['revision']}): {type(exc).__name__}: {exc}\n"
            f"Without internet access, download model.safetensors from "
            f"https://huggingface.co/{settings['repo_id']} elsewhere and pass it as a local file with "
            f"`model.encoder_weights: /path/to/model.safetensors` in the config (or use null for random weights). "
            f"Setting HF_HUB_OFFLINE=1 skips the network retries."
        ) from exc
    return Path(path)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a .safetensors or torch-saved state dict; strip an "encoder." prefix shared by the encoder keys."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{path}: encoder weights file not found; expected None, 'imagenet' or a path to a "
            f".pth/.pt/.safetensors state dict"
        )
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"{path}: cannot read encoder weights: {type(exc).__name__}: {exc}") from exc
    for wrapper in ("state_dict", "model"):  # checkpoints that keep the weights under one key
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    if any(key.startswith("encoder.") for key in state):
        state = {key[len("encoder."):]: value for key, value in state.items() if key.startswith("encoder.")}
    return state


def load_encoder_weights(encoder: nn.Module, encoder_weights: str | Path | None) -> nn.Module:
    """Load `encoder_weights` (None, "imagenet" or a file path) into an smp Xception encoder, in place."""
    if encoder_weights is None:
        return encoder
    if str(encoder_weights) == IMAGENET:
        path = imagenet_weights_file()
    else:
        path = Path(encoder_weights)
    state = read_state_dict(path)
    # The hub file still holds the ImageNet classifier; the encoder has no use for it.
    state = {key: value for key, value in state.items() if not key.startswith("fc.")}
    try:
        nn.Module.load_state_dict(encoder, state, strict=True)
    except RuntimeError as exc:
        raise DataError(f"{path}: weights do not match the Xception encoder: {exc}") from exc
    logger.info("loaded encoder weights from %s", path)
    return encoder


def imagenet_normalisation(
    encoder_weights: str | Path | None,
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) the encoder weights expect on [0, 1] RGB inputs, or None for random weights.

    A local file is taken to be a copy of the ImageNet weights (the offline route), so it gets the same
    normalisation. Reads the hub's config.json when it is in the local cache; never touches the network.
    """
    if encoder_weights is None:
        return None
    settings = _imagenet_settings()
    try:
        config_path = hf_hub_download(
            settings["repo_id"], filename="config.json", revision=settings["revision"], local_files_only=True
        )
        config = json.loads(Path(config_path).read_text())
        return tuple(float(v) for v in config["mean"]), tuple(float(v) for v in config["std"])
    except Exception:  # not cached, or a config without mean/std: fall back to the recorded values
        return XCEPTION_IMAGENET_MEAN_STD
