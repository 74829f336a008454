"""The three U-Net variants: Xception + InceptionSE decoder (the paper), smp's Xception U-Net, a plain U-Net.

All map (B, 3, H, W) images to (B, classes, H, W) logits for H and W multiples of 32, and all are
smp `SegmentationModel`s with an `encoder`, so `encoder_frozen` works the same way for each.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import segmentation_models_pytorch as smp
import torch
import torch.nn as nn
import torch.nn.functional as F
from segmentation_models_pytorch.base import SegmentationHead, SegmentationModel
from segmentation_models_pytorch.encoders import get_encoder

from nuclei.models.inception_se import ConvBNAct, InceptionSEUpBlock
from nuclei.models.weights import load_encoder_weights

DEFAULT_DECODER_CHANNELS = (256, 128, 64, 32, 16)


def initialize_xavier(module: nn.Module) -> None:
    """Xavier-uniform weights for every conv, transposed conv and linear layer; zero biases; BN to identity."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class InceptionSEDecoder(nn.Module):
    """Chain of InceptionSE up blocks from the deepest encoder feature back to full resolution."""

    def __init__(
        self,
        encoder_channels: Sequence[int],
        decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
        act: str = "relu",
        reduction: int = 16,
        pool: str = "max",
    ):
        super().__init__()
        # encoder_channels[0] is the input image itself: never a skip, as in smp's UnetDecoder.
        deep_to_shallow = list(encoder_channels[1:])[::-1]
        if len(decoder_channels) != len(deep_to_shallow):
            raise ValueError(
                f"decoder_channels needs {len(deep_to_shallow)} entries (one per encoder stage), "
                f"got {len(decoder_channels)}: {list(decoder_channels)}"
            )
        in_channels = [deep_to_shallow[0], *decoder_channels[:-1]]
        skip_channels = [*deep_to_shallow[1:], 0]
        self.blocks = nn.ModuleList(
            InceptionSEUpBlock(c_in, c_skip, c_out, act, reduction, pool)
            for c_in, c_skip, c_out in zip(in_channels, skip_channels, decoder_channels)
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        deep_to_shallow = features[1:][::-1]
        x = deep_to_shallow[0]
        skips = deep_to_shallow[1:]
        for i, block in enumerate(self.blocks):
            x = block(x, skips[i] if i < len(skips) else None)
        return x


class XceptionInceptionSEUnet(SegmentationModel):
    """smp's Xception encoder (stem same-padded, stages exactly /2../32) with an InceptionSE decoder."""

    def __init__(
        self,
        encoder_weights: str | Path | None = None,
        classes: int = 3,
        decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
        activation: str = "relu",
        se_reduction: int = 16,
        inception_pool: str = "max",
    ):
        super().__init__()
        # Built without weights, then loaded by our loader: one path for "imagenet" and local files,
        # with a clear message when the hub is unreachable.
        self.encoder = get_encoder("xception", in_channels=3, depth=5, weights=None)
        load_encoder_weights(self.encoder, encoder_weights)
        self.decoder = InceptionSEDecoder(
            self.encoder.out_channels, decoder_channels, activation, se_reduction, inception_pool
        )
        self.segmentation_head = SegmentationHead(decoder_channels[-1], classes, kernel_size=3)
        self.classification_head = None
        self.initialize()

    def initialize(self) -> None:
        """Xavier for the decoder and head (the paper's choice; smp's default decoder init is Kaiming)."""
        initialize_xavier(self.decoder)
        initialize_xavier(self.segmentation_head)


def smp_xception_unet(
    encoder_weights: str | Path | None = None,
    classes: int = 3,
    decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
) -> smp.Unet:
    """Baseline: smp's own Xception U-Net, with encoder weights loaded by our loader."""
    model = smp.Unet(
        "xception", encoder_weights=None, classes=classes, decoder_channels=list(decoder_channels)
    )
    load_encoder_weights(model.encoder, encoder_weights)
    return model


class PlainUnetEncoder(nn.Module):
    """Down path of the classic U-Net: double conv, then (max pool, double conv) per level."""

    def __init__(self, in_channels: int, base: int, depth: int, act: str):
        super().__init__()
        widths = [base * 2**level for level in range(depth + 1)]
        self.stages = nn.ModuleList()
        previous = in_channels
        for level, width in enumerate(widths):
            layers = [] if level == 0 else [nn.MaxPool2d(2)]
            layers += [ConvBNAct(previous, width, 3, act), ConvBNAct(width, width, 3, act)]
            self.stages.append(nn.Sequential(*layers))
            previous = width
        self.out_channels = [in_channels, *widths]
        self.output_stride = 2**depth

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [x]
        for stage in self.stages:
            features.append(stage(features[-1]))
        return features


class PlainUnetUpBlock(nn.Module):
    """x2 transposed conv, concat the skip, double conv."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, act: str):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.convs = nn.Sequential(
            ConvBNAct(out_channels + skip_channels, out_channels, 3, act),
            ConvBNAct(out_channels, out_channels, 3, act),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        if x.shape[-2:] != skip.shape[-2:]:
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
        return self.convs(torch.cat([x, skip], dim=1))


class PlainUnetDecoder(nn.Module):
    def __init__(self, encoder_channels: Sequence[int], act: str):
        super().__init__()
        widths = list(encoder_channels[1:])[::-1]  # deepest first
        self.blocks = nn.ModuleList(
            PlainUnetUpBlock(deep, skip, skip, act) for deep, skip in zip(widths[:-1], widths[1:])
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        deep_to_shallow = features[1:][::-1]
        x = deep_to_shallow[0]
        for block, skip in zip(self.blocks, deep_to_shallow[1:]):
            x = block(x, skip)
        return x


class PlainUnet(SegmentationModel):
    """Classic U-Net (Ronneberger et al.) with same padding, BatchNorm and Xavier init; no pretrained encoder."""

    def __init__(
        self, in_channels: int = 3, classes: int = 3, base: int = 32, depth: int = 5, activation: str = "relu"
    ):
        super().__init__()
        if depth not in (4, 5):
            raise ValueError(f"PlainUnet depth must be 4 or 5, got {depth}")
        self.encoder = PlainUnetEncoder(in_channels, base, depth, activation)
        self.decoder = PlainUnetDecoder(self.encoder.out_channels, activation)
        self.segmentation_head = nn.Conv2d(base, classes, kernel_size=1)
        self.classification_head = None
        self.initialize()

    def initialize(self) -> None:
        initialize_xavier(self)


def encoder_frozen(model: SegmentationModel, frozen: bool) -> SegmentationModel:
    """Freeze (or unfreeze) `model.encoder`: no gradients and BatchNorm statistics kept fixed.

    While frozen, the encoder's norm layers stay in eval mode even across `model.train()` (smp's
    `SegmentationModel.train` skips a frozen encoder). Unfreezing restores the model's current mode.
    """
    if frozen:
        model.freeze_encoder()
    else:
        model.unfreeze_encoder()
        model.encoder.train(model.training)
    return model


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with requires_grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def forward_seconds(model: nn.Module, x: torch.Tensor, repeats: int = 3) -> float:
    """Best-of-`repeats` wall time of one inference forward pass, after one warm-up pass."""
    model.eval()
    with torch.inference_mode():
        model(x)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            best = min(best, time.perf_counter() - start)
    return best
