"""BCE, soft dice and their weighted sum over the 3 target channels."""
import pytest
import torch

from nuclei.losses import SegmentationLoss, bce_loss, soft_dice_loss


def batch(seed=0, shape=(2, 3, 16, 16)):
    generator = torch.Generator().manual_seed(seed)
    target = (torch.rand(shape, generator=generator) > 0.7).float()
    noise = torch.randn(shape, generator=generator)
    return target, noise


def perfect_logits(target):
    return (target * 2 - 1) * 20.0


def test_perfect_logits_give_near_zero_losses():
    target, _ = batch()
    logits = perfect_logits(target)
    assert soft_dice_loss(logits, target).shape == (3,)
    assert soft_dice_loss(logits, target).max() < 1e-4
    assert bce_loss(logits, target).max() < 1e-6
    for kind in ("bce", "dice", "bce_dice"):
        assert SegmentationLoss(kind)(logits, target) < 1e-4


def test_wrong_logits_give_large_losses():
    target, _ = batch()
    logits = -perfect_logits(target)
    assert soft_dice_loss(logits, target).min() > 0.99
    assert bce_loss(logits, target).min() > 10


def test_dice_on_an_empty_channel_does_not_explode():
    target = torch.zeros(1, 3, 8, 8)
    loss = soft_dice_loss(torch.full_like(target, -20.0), target)
    assert torch.isfinite(loss).all() and loss.max() < 1e-3


def test_channel_weights_are_a_weighted_mean():
    target, noise = batch()
    logits = perfect_logits(target) * 0.1 + noise
    plain = SegmentationLoss("bce_dice", (1.0, 1.0, 1.0))
    per_channel = plain.per_channel(logits, target)
    assert torch.allclose(plain(logits, target), per_channel.mean())
    weighted = SegmentationLoss("bce_dice", (1.0, 1.0, 2.0))
    expected = (per_channel[0] + per_channel[1] + 2 * per_channel[2]) / 4
    assert torch.allclose(weighted(logits, target), expected)
    only_touching = SegmentationLoss("bce_dice", (0.0, 0.0, 1.0))
    assert torch.allclose(only_touching(logits, target), per_channel[2])


def test_weighting_a_worse_channel_raises_the_total():
    target, noise = batch()
    logits = perfect_logits(target)
    logits[:, 2] = noise[:, 2]  # only the touching channel is wrong
    base = SegmentationLoss("bce", (1.0, 1.0, 1.0))(logits, target)
    heavier = SegmentationLoss("bce", (1.0, 1.0, 3.0))(logits, target)
    assert heavier > base * 1.5


def test_bce_dice_is_the_sum():
    target, noise = batch()
    logits = noise
    both = SegmentationLoss("bce_dice").per_channel(logits, target)
    parts = SegmentationLoss("bce").per_channel(logits, target) + SegmentationLoss("dice").per_channel(logits, target)
    assert torch.allclose(both, parts)


def test_gradients_flow_and_bf16_logits_are_accepted():
    target, noise = batch()
    logits = noise.clone().requires_grad_(True)
    SegmentationLoss("bce_dice", (1.0, 1.0, 2.0))(logits, target).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    loss = SegmentationLoss()(noise.to(torch.bfloat16), target.to(torch.uint8))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_unknown_kind_rejected():
    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        SegmentationLoss("focal")


def test_weights_move_with_the_module():
    loss = SegmentationLoss("bce", (1.0, 2.0, 3.0))
    assert "weights" in dict(loss.named_buffers())
    assert loss.weights.tolist() == [1.0, 2.0, 3.0]
