"""Model tests on CPU: tiny decoders and small inputs keep them fast (the trick smp's own tests use)."""
import math

import pytest
import torch
import torch.nn as nn

from nuclei.errors import ConfigError, DataError
from nuclei.models import build_model, count_params, encoder_frozen
from nuclei.models.inception_se import InceptionModule, InceptionSEUpBlock, SEBlock, activation
from nuclei.models.unet import PlainUnet, XceptionInceptionSEUnet, smp_xception_unet
from nuclei.models.weights import (
    XCEPTION_IMAGENET_MEAN_STD,
    imagenet_normalisation,
    imagenet_weights_file,
    load_encoder_weights,
)

TINY = (16, 8, 8, 4, 4)
SIZES = [(64, 64), (96, 64), (128, 160)]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny tensors: with 2 threads, OpenMP barriers cost more than the convs, many times more on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(arch: str, **extra) -> nn.Module:
    cfg = {"arch": arch, "decoder_channels": TINY, "plain_base": 4, **extra}
    return build_model(cfg)


@pytest.fixture(scope="module")
def inception_se() -> XceptionInceptionSEUnet:
    torch.manual_seed(0)
    return tiny("xception_inception_se")


@pytest.mark.parametrize("arch", ["xception_inception_se", "smp_xception_unet", "plain_unet"])
def test_output_shape_for_every_variant(arch):
    model = tiny(arch).eval()
    with torch.inference_mode():
        for h, w in SIZES:
            out = model(torch.randn(1, 3, h, w))
            assert out.shape == (1, 3, h, w)
            assert torch.isfinite(out).all()


def test_plain_unet_depth_4_and_class_count():
    model = PlainUnet(classes=2, base=4, depth=4).eval()
    with torch.inference_mode():
        assert model(torch.randn(1, 3, 48, 80)).shape == (1, 2, 48, 80)
    with pytest.raises(ValueError, match="depth"):
        PlainUnet(depth=3)


@pytest.mark.parametrize("h,w", [(32, 32), (96, 64), (128, 160), (224, 96)])
def test_xception_stem_keeps_exact_stage_sizes(inception_se, h, w):
    # smp's XceptionEncoder sets the stem convs to padding 1; without it 64 -> 31 at /2.
    assert inception_se.encoder.conv1.padding == (1, 1)
    assert inception_se.encoder.conv2.padding == (1, 1)
    with torch.inference_mode():
        features = inception_se.encoder.eval()(torch.randn(1, 3, h, w))
    assert [tuple(f.shape[-2:]) for f in features] == [(h // 2**i, w // 2**i) for i in range(6)]


def test_inputs_not_divisible_by_32_are_rejected(inception_se):
    with pytest.raises(RuntimeError, match="divisible by 32"):
        inception_se(torch.randn(1, 3, 70, 64))


@pytest.mark.parametrize("out_channels", [4, 7, 16, 30])
@pytest.mark.parametrize("pool", ["max", "avg"])
def test_inception_module_output_channels(out_channels, pool):
    module = InceptionModule(5, out_channels, "relu", pool)
    assert module(torch.randn(2, 5, 9, 11)).shape == (2, out_channels, 9, 11)


def test_inception_module_needs_one_channel_per_branch():
    with pytest.raises(ValueError, match="at least 4"):
        InceptionModule(5, 3)


def test_se_block_rescales_channels_by_a_spatially_constant_gate():
    torch.manual_seed(0)
    se = SEBlock(8, reduction=4, act="elu")
    x = torch.rand(2, 8, 6, 5) + 0.1  # strictly positive, so the ratio is defined
    ratio = se(x) / x
    # One gate per (image, channel): constant over space, strictly inside (0, 1).
    assert torch.allclose(ratio, ratio[:, :, :1, :1].expand_as(ratio), atol=1e-6)
    assert ((ratio > 0) & (ratio < 1)).all()
    assert torch.allclose(ratio[:, :, 0, 0], se.gate(x)[:, :, 0, 0])
    # The gate depends on the input: two images give two different gates.
    assert not torch.allclose(ratio[0, :, 0, 0], ratio[1, :, 0, 0])
    assert not torch.allclose(se.gate(x), se.gate(3 * x + 1))


def test_se_block_hidden_width_has_a_floor():
    assert SEBlock(8, reduction=16).fc[0].out_features == 4
    assert SEBlock(256, reduction=16).fc[0].out_features == 16


def test_up_block_matches_the_skip_size_and_works_without_skip():
    block = InceptionSEUpBlock(6, 3, 8, "selu")
    # An odd skip (11 x 9) cannot be reached by x2 from 5 x 4: the block resizes to the skip's own size.
    out = block(torch.randn(1, 6, 5, 4), torch.randn(1, 3, 11, 9))
    assert out.shape == (1, 8, 11, 9)
    last = InceptionSEUpBlock(6, 0, 4, "relu")
    assert last(torch.randn(1, 6, 5, 4)).shape == (1, 4, 10, 8)


@pytest.mark.parametrize("name,cls", [("selu", nn.SELU), ("elu", nn.ELU), ("relu", nn.ReLU)])
def test_every_activation_builds_a_working_model(name, cls):
    assert isinstance(activation(name), cls)
    model = tiny("xception_inception_se", activation=name).eval()
    kinds = {type(m) for m in model.decoder.modules()}
    assert cls in kinds and not (kinds & ({nn.SELU, nn.ELU, nn.ReLU} - {cls}))
    with torch.inference_mode():
        assert model(torch.randn(1, 3, 32, 64)).shape == (1, 3, 32, 64)


def test_unknown_activation_is_rejected():
    with pytest.raises(ValueError, match="selu"):
        activation("gelu")
    with pytest.raises(ConfigError, match="activation"):
        build_model({"arch": "plain_unet", "activation": "gelu"})


def _xavier_std(weight: torch.Tensor) -> float:
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(weight)
    return math.sqrt(2.0 / (fan_in + fan_out))


def test_decoder_and_head_use_xavier_init(inception_se):
    # The first up conv maps 2048 -> 16 channels: 131k weights, so the std estimate is tight.
    up = inception_se.decoder.blocks[0].up[0]
    assert isinstance(up, nn.ConvTranspose2d)
    expected = _xavier_std(up.weight)
    kaiming = math.sqrt(2.0 / nn.init._calculate_fan_in_and_fan_out(up.weight)[0])  # smp's default, for contrast
    assert abs(up.weight.std().item() - expected) < 0.03 * expected
    assert abs(kaiming - expected) > 0.1 * expected
    # Xavier-uniform bound on every decoder/head weight; zero biases; BN starts as identity.
    for module in [*inception_se.decoder.modules(), *inception_se.segmentation_head.modules()]:
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            bound = math.sqrt(3.0) * _xavier_std(module.weight)
            assert module.weight.abs().max() <= bound + 1e-6
            if module.bias is not None:
                assert torch.all(module.bias == 0)
        elif isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)


def test_plain_unet_uses_xavier_init():
    model = PlainUnet(base=16, depth=4)
    conv = model.encoder.stages[4][1][0]  # 256 -> 256 channels, 3x3
    expected = _xavier_std(conv.weight)
    assert abs(conv.weight.std().item() - expected) < 0.03 * expected


def _train_step(model: nn.Module, x: torch.Tensor) -> None:
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    optimizer.zero_grad()
    model(x).square().mean().backward()
    optimizer.step()


@pytest.mark.parametrize("arch", ["xception_inception_se", "smp_xception_unet", "plain_unet"])
def test_frozen_encoder_stays_fixed_and_unfreezing_trains_it(arch):
    torch.manual_seed(0)
    model = tiny(arch)
    x = torch.randn(2, 3, 32, 32)  # smallest legal size: the backward pass dominates this test
    encoder_frozen(model, True)
    model.train()  # must not wake the frozen encoder's BatchNorm
    assert not any(m.training for m in model.encoder.modules() if isinstance(m, nn.BatchNorm2d))
    assert all(m.training for m in model.decoder.modules() if isinstance(m, nn.BatchNorm2d))
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    decoder_before = {k: v.clone() for k, v in model.decoder.named_parameters()}
    _train_step(model, x)
    for key, value in model.encoder.state_dict().items():  # params and BN running stats
        assert torch.equal(value, encoder_before[key]), key
    assert any(not torch.equal(p, decoder_before[k]) for k, p in model.decoder.named_parameters())
    assert count_params(model, trainable_only=True) == count_params(model) - count_params(model.encoder)

    encoder_frozen(model, False)
    assert all(p.requires_grad for p in model.encoder.parameters())
    assert all(m.training for m in model.encoder.modules() if isinstance(m, nn.BatchNorm2d))
    assert count_params(model, trainable_only=True) == count_params(model)


@pytest.mark.parametrize("arch", ["xception_inception_se", "smp_xception_unet", "plain_unet"])
def test_unfrozen_encoder_is_trained_again(arch):
    torch.manual_seed(0)
    model = tiny(arch)
    encoder_frozen(model, True)
    encoder_frozen(model, False)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    _train_step(model, torch.randn(2, 3, 32, 32))
    changed = {k for k, v in model.encoder.state_dict().items() if not torch.equal(v, before[k])}
    assert any(k.endswith("running_mean") for k in changed)
    conv_weights = {k + ".weight" for k, m in model.encoder.named_modules() if isinstance(m, nn.Conv2d)}
    assert conv_weights <= changed


def test_build_model_rejects_unknown_arch():
    with pytest.raises(ConfigError, match="xception_inception_se, smp_xception_unet, plain_unet"):
        build_model({"arch": "resnet_unet"})


def test_build_model_passes_options():
    model = tiny("xception_inception_se", classes=2, se_reduction=2)
    assert model.segmentation_head[0].out_channels == 2
    assert model.decoder.blocks[0].se.fc[0].out_features == 8  # 16 channels / 2
    assert isinstance(model.decoder.blocks[0].inception.branch_pool[0], nn.MaxPool2d)
    avg = tiny("xception_inception_se", inception_pool="avg")
    assert isinstance(avg.decoder.blocks[0].inception.branch_pool[0], nn.AvgPool2d)
    with pytest.raises(ConfigError, match="inception_pool"):
        tiny("xception_inception_se", inception_pool="min")
    assert isinstance(smp_xception_unet(classes=1, decoder_channels=TINY).segmentation_head[0], nn.Conv2d)
    with pytest.raises(ConfigError, match="5 entries"):
        build_model({"arch": "smp_xception_unet", "decoder_channels": [8, 8]})
    with pytest.raises(ConfigError, match=">= 4"):
        build_model({"arch": "xception_inception_se", "decoder_channels": [16, 8, 8, 4, 2]})
    with pytest.raises(ConfigError, match="plain_unet has no pretrained encoder"):
        build_model({"arch": "plain_unet", "encoder_weights": "imagenet"})


def _offline(monkeypatch):
    import huggingface_hub.constants

    # The constant is read at import time, so set both the env and the module value; offline mode
    # fails at once instead of retrying the network for ~30 s.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", "/nonexistent-hf-home/hub")


def test_imagenet_download_failure_explains_the_fix(monkeypatch):
    _offline(monkeypatch)
    with pytest.raises(RuntimeError) as info:
        imagenet_weights_file()
    message = str(info.value)
    assert "could not download" in message and "smp-hub/xception.imagenet" in message
    assert "model.encoder_weights: /path/to/" in message
    assert info.value.__cause__ is not None and type(info.value.__cause__).__name__ in message
    with pytest.raises(RuntimeError, match="model.encoder_weights"):
        build_model({"arch": "xception_inception_se", "decoder_channels": TINY, "encoder_weights": "imagenet"})


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_encoder_weights_are_loaded(tmp_path, suffix):
    torch.manual_seed(1)
    source = smp_xception_unet(decoder_channels=TINY).encoder
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in source.state_dict().items()}
    path = tmp_path / f"encoder{suffix}"
    if suffix == ".pth":
        # A whole-model checkpoint: the "encoder." prefix is stripped, the decoder keys ignored.
        torch.save({**{f"encoder.{k}": v for k, v in state.items()}, "decoder.x": torch.zeros(1)}, path)
    else:
        from safetensors.torch import save_file

        save_file({**state, "fc.weight": torch.zeros(2, 2048), "fc.bias": torch.zeros(2)}, str(path))
    model = build_model({"arch": "xception_inception_se", "decoder_channels": TINY, "encoder_weights": str(path)})
    loaded = model.encoder.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


def test_bad_local_weights_name_the_file(tmp_path):
    encoder = smp_xception_unet(decoder_channels=TINY).encoder
    with pytest.raises(DataError, match="not found"):
        load_encoder_weights(encoder, tmp_path / "missing.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, wrong)
    with pytest.raises(DataError, match="wrong.pth"):
        load_encoder_weights(encoder, wrong)


def test_imagenet_normalisation(monkeypatch):
    _offline(monkeypatch)
    assert imagenet_normalisation(None) is None
    mean, std = imagenet_normalisation("imagenet")
    assert (mean, std) == XCEPTION_IMAGENET_MEAN_STD == ((0.5,) * 3, (0.5,) * 3)
    assert imagenet_normalisation("/some/local/xception.safetensors") == (mean, std)
