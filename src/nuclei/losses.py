"""BCE, soft dice and their sum, each weighted per output channel (mask, borderless, touching borders)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft dice per channel, over the whole batch (per-image dice is unstable on empty crops). Shape (C,)."""
    probs = torch.sigmoid(logits.float())
    dims = (0, 2, 3)
    intersection = (probs * target).sum(dims)
    total = probs.sum(dims) + target.sum(dims)
    return 1.0 - (2.0 * intersection + eps) / (total + eps)


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy per channel. Shape (C,)."""
    return F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none").mean(dim=(0, 2, 3))


class SegmentationLoss(nn.Module):
    """kind = bce | dice | bce_dice; channel weights make the rare touching-border channel count."""

    def __init__(self, kind: str = "bce_dice", channel_weights=(1.0, 1.0, 1.0)):
        super().__init__()
        if kind not in ("bce", "dice", "bce_dice"):
            raise ValueError(f"unknown loss {kind!r}: expected bce, dice or bce_dice")
        self.kind = kind
        self.register_buffer("weights", torch.as_tensor(channel_weights, dtype=torch.float32))

    def per_channel(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.float()
        loss = torch.zeros(logits.shape[1], device=logits.device)
        if self.kind in ("bce", "bce_dice"):
            loss = loss + bce_loss(logits, target)
        if self.kind in ("dice", "bce_dice"):
            loss = loss + soft_dice_loss(logits, target)
        return loss

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (self.per_channel(logits, target) * self.weights).sum() / self.weights.sum()
