"""Building blocks of the InceptionSE decoder: conv-BN-activation, inception module, squeeze-excitation, up block."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

ACTIVATIONS = ("selu", "elu", "relu")


def activation(name: str) -> nn.Module:
    """Return a fresh activation module for "selu", "elu" or "relu"."""
    factories = {"selu": nn.SELU, "elu": nn.ELU, "relu": nn.ReLU}
    if name not in factories:
        raise ValueError(f"unknown activation {name!r}; expected one of {ACTIVATIONS}")
    return factories[name](inplace=True)


class ConvBNAct(nn.Sequential):
    """Same-padded conv without bias (BN has its own shift), BatchNorm, activation."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, act: str = "relu"):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            activation(act),
        )


def split_channels(total: int, parts: int = 4) -> list[int]:
    """Split `total` channels into `parts` widths that sum exactly to `total` (extra ones go to the first)."""
    if total < parts:
        raise ValueError(f"need at least {parts} output channels to split over {parts} branches, got {total}")
    widths = [total // parts] * parts
    widths[0] += total - sum(widths)
    return widths


class InceptionModule(nn.Module):
    """Four parallel branches (1x1; 3x3; "5x5" as two 3x3; 3x3 pool + 1x1) concatenated to `out_channels`.

    The 3x3 and "5x5" branches start with a 1x1 reduction to their own width, as in GoogLeNet, so the
    module costs about one 1x1 conv over the input: this keeps the decoder cheap at the /2 and /1 stages.
    The three 1x1 convs that read the input (the 1x1 branch and both reductions) run as one conv whose
    output is split: the same maths (BN and activation are per channel), one pass over the input.
    """

    def __init__(self, in_channels: int, out_channels: int, act: str = "relu", pool: str = "max"):
        super().__init__()
        self.widths = split_channels(out_channels)
        w1, w3, w5, wp = self.widths
        self.pointwise = ConvBNAct(in_channels, w1 + w3 + w5, 1, act)
        self.branch3x3 = ConvBNAct(w3, w3, 3, act)
        self.branch5x5 = nn.Sequential(ConvBNAct(w5, w5, 3, act), ConvBNAct(w5, w5, 3, act))
        if pool == "max":
            pooling: nn.Module = nn.MaxPool2d(3, stride=1, padding=1)
        elif pool == "avg":
            pooling = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        else:
            raise ValueError(f"unknown pool {pool!r}; expected 'max' or 'avg'")
        self.branch_pool = nn.Sequential(pooling, ConvBNAct(in_channels, wp, 1, act))
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch1x1, reduced3x3, reduced5x5 = torch.split(self.pointwise(x), self.widths[:3], dim=1)
        branches = [branch1x1, self.branch3x3(reduced3x3), self.branch5x5(reduced5x5), self.branch_pool(x)]
        return torch.cat(branches, dim=1)


class SEBlock(nn.Module):
    """Squeeze-and-excitation: rescale each channel by a gate in (0, 1) computed from its global average."""

    def __init__(self, channels: int, reduction: int = 16, act: str = "relu", min_hidden: int = 4):
        super().__init__()
        hidden = max(channels // reduction, min_hidden)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden), activation(act), nn.Linear(hidden, channels), nn.Sigmoid()
        )

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """Per-channel gate of shape (B, C, 1, 1)."""
        return self.fc(x.mean(dim=(2, 3)))[:, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class InceptionSEUpBlock(nn.Module):
    """x2 transposed conv + BN + act, concat the skip (if any), inception module, SE block."""

    def __init__(
        self,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        act: str = "relu",
        reduction: int = 16,
        pool: str = "max",
    ):
        super().__init__()
        self.up = nn.Sequential(
            nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2, bias=False),
            nn.BatchNorm2d(out_channels),
            activation(act),
        )
        self.inception = InceptionModule(out_channels + skip_channels, out_channels, act, pool)
        self.se = SEBlock(out_channels, reduction, act)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = self.up(x)
        if skip is not None:
            # Match the skip's own size, so odd encoder sizes cannot break the concat.
            if x.shape[-2:] != skip.shape[-2:]:
                x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = torch.cat([x, skip], dim=1)
        return self.se(self.inception(x))
