"""Build a model by name from the `model` section of a config."""
from __future__ import annotations

from typing import Any

import torch.nn as nn

from nuclei.errors import ConfigError
from nuclei.models.inception_se import ACTIVATIONS
from nuclei.models.unet import (
    DEFAULT_DECODER_CHANNELS,
    PlainUnet,
    XceptionInceptionSEUnet,
    smp_xception_unet,
)

ARCHS = ("xception_inception_se", "smp_xception_unet", "plain_unet")


def build_model(cfg: dict[str, Any]) -> nn.Module:
    """Model from the `model` config section.

    Keys: "arch" (required), "encoder_weights", "decoder_channels", "activation", "se_reduction",
    "inception_pool", "classes", "plain_base", "plain_depth"; missing ones default as in the model classes.
    """
    arch = cfg.get("arch")
    if arch not in ARCHS:
        raise ConfigError(f"model.arch: unknown architecture {arch!r}; valid ones are {', '.join(ARCHS)}")
    activation = cfg.get("activation", "relu")
    if activation not in ACTIVATIONS:
        raise ConfigError(
            f"model.activation: unknown activation {activation!r}; valid ones are {', '.join(ACTIVATIONS)}"
        )
    classes = int(cfg.get("classes", 3))
    weights = cfg.get("encoder_weights")

    if arch == "plain_unet":
        if weights is not None:
            raise ConfigError("model.encoder_weights: plain_unet has no pretrained encoder; set it to null")
        return PlainUnet(
            in_channels=3,
            classes=classes,
            base=int(cfg.get("plain_base", 32)),
            depth=int(cfg.get("plain_depth", 5)),
            activation=activation,
        )

    decoder_channels = tuple(int(c) for c in cfg.get("decoder_channels") or DEFAULT_DECODER_CHANNELS)
    if len(decoder_channels) != 5:
        raise ConfigError(
            f"model.decoder_channels: need 5 entries (one per Xception stage), got {list(decoder_channels)}"
        )
    if arch == "smp_xception_unet":
        return smp_xception_unet(weights, classes=classes, decoder_channels=decoder_channels)
    pool = cfg.get("inception_pool", "max")
    if pool not in ("max", "avg"):
        raise ConfigError(f"model.inception_pool: expected 'max' or 'avg', got {pool!r}")
    if min(decoder_channels) < 4:
        raise ConfigError(
            "model.decoder_channels: each must be >= 4 (one channel per inception branch), "
            f"got {list(decoder_channels)}"
        )
    return XceptionInceptionSEUnet(
        encoder_weights=weights,
        classes=classes,
        decoder_channels=decoder_channels,
        activation=activation,
        se_reduction=int(cfg.get("se_reduction", 16)),
        inception_pool=pool,
    )
