"""Image backbone (torchvision-named ResNet), mmdet-named FPN, the multi-view encoder and loading weights by path."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from perception.models.image.encoder import ImageEncoder
from perception.models.image.fpn import FPN
from perception.models.image.image_config import FPNConfig, ResNetConfig
from perception.models.image.resnet import ResNet
from perception.models.image.weights import load_image_weights

TORCHVISION_SHAPES = Path(__file__).parent / "data" / "torchvision_resnet_state_dict_shapes.json"
"""Key -> shape of ``torchvision.models.resnet18()`` / ``resnet50()`` state dicts (``fc.*`` included), derived
from torchvision's ``torchvision/models/resnet.py``."""


def _randomise_bn(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics, so that loading them is visible in eval outputs."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def _small(depth: int = 18, **kw) -> ResNetConfig:
    return ResNetConfig(depth=depth, base_width=8, **kw)


# ----------------------------------------------------------------------------------------------------------------
# ResNet
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [18, 50])
def test_resnet_state_dict_is_torchvisions_without_fc(depth):
    reference = json.loads(TORCHVISION_SHAPES.read_text())[f"resnet{depth}"]
    expected = {k: tuple(v) for k, v in reference.items() if not k.startswith("fc.")}
    ours = {k: tuple(v.shape) for k, v in ResNet(ResNetConfig(depth=depth)).state_dict().items()}
    assert sorted(ours) == sorted(expected)
    assert ours == expected
    assert {"fc.weight", "fc.bias"} <= reference.keys()


def test_resnet34_blocks_and_names():
    keys = ResNet(ResNetConfig(depth=34, base_width=8)).state_dict().keys()
    for stage, blocks in zip((1, 2, 3, 4), (3, 4, 6, 3), strict=True):
        assert f"layer{stage}.{blocks - 1}.conv2.weight" in keys
        assert f"layer{stage}.{blocks}.conv1.weight" not in keys
    assert "layer1.0.downsample.0.weight" not in keys  # BasicBlock stage 1 keeps width and stride
    assert "layer2.0.downsample.1.running_var" in keys
    assert not any(".conv3." in k for k in keys)


@pytest.mark.parametrize("depth", [18, 50])
def test_base_width_keeps_names_and_scales_channels(depth):
    full = ResNet(ResNetConfig(depth=depth)).state_dict()
    small = ResNet(ResNetConfig(depth=depth, base_width=16)).state_dict()
    assert small.keys() == full.keys()
    for k, v in full.items():  # channel dims (the first two) scale by 16 / 64; RGB input and kernels do not
        assert tuple(small[k].shape) == tuple(
            s // 4 if i < 2 and s != 3 else s for i, s in enumerate(v.shape)
        ), k
    assert tuple(small["conv1.weight"].shape) == (16, 3, 7, 7)


@pytest.mark.parametrize("depth", [18, 34, 50])
def test_resnet_outputs_c2_to_c5(depth):
    net = ResNet(_small(depth)).eval()
    outs = net(torch.randn(2, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [
        (2, c, 64 // s, 96 // s) for c, s in zip(net.out_channels, (4, 8, 16, 32), strict=True)
    ]
    expansion = 4 if depth == 50 else 1
    assert net.out_channels == (8 * expansion, 16 * expansion, 32 * expansion, 64 * expansion)


def test_resnet_bottleneck_strides_on_the_3x3_conv():
    net = ResNet(_small(50))
    block = net.layer2[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2) and block.conv3.stride == (1, 1)
    assert block.downsample[0].stride == (2, 2)


def test_frozen_stages_and_norm_eval():
    net = ResNet(_small(frozen_stages=1)).train()
    frozen = [n for n, p in net.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(("conv1.", "bn1.", "layer1.")) for n in frozen)
    assert all(p.requires_grad for n, p in net.named_parameters() if n.startswith(("layer2.", "layer4.")))
    assert not net.bn1.training and not net.layer1[0].bn1.training and net.layer2[0].bn1.training
    before = net.layer1[0].bn1.running_mean.clone()
    net(torch.randn(2, 3, 64, 64))
    assert torch.equal(net.layer1[0].bn1.running_mean, before)
    assert not torch.equal(net.layer2[0].bn1.running_mean, torch.zeros_like(before[:1]).expand(16))

    stem_only = ResNet(_small(frozen_stages=0))
    assert not stem_only.conv1.weight.requires_grad and stem_only.layer1[0].conv1.weight.requires_grad

    norm_eval = ResNet(_small(norm_eval=True)).train()
    assert norm_eval.training
    assert not any(m.training for m in norm_eval.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert all(p.requires_grad for p in norm_eval.parameters())


# ----------------------------------------------------------------------------------------------------------------
# FPN
# ----------------------------------------------------------------------------------------------------------------


def test_fpn_mmdet_names_and_shapes():
    fpn = FPN(FPNConfig(out_channels=16), in_channels=(8, 16, 32, 64))
    shapes = {k: tuple(v.shape) for k, v in fpn.state_dict().items()}
    expected = {}
    for i, c in enumerate((8, 16, 32, 64)):
        expected |= {
            f"lateral_convs.{i}.conv.weight": (16, c, 1, 1),
            f"lateral_convs.{i}.conv.bias": (16,),
            f"fpn_convs.{i}.conv.weight": (16, 16, 3, 3),
            f"fpn_convs.{i}.conv.bias": (16,),
        }
    assert shapes == expected
    shape = fpn.output_shape()
    assert shape.channels == 16 and shape.strides == (4, 8, 16, 32)


def test_fpn_matches_a_written_out_reference():
    torch.manual_seed(0)
    fpn = FPN(FPNConfig(out_channels=6, levels=(4, 8, 16, 32, 64)), in_channels=(3, 4, 5, 7))
    for p in fpn.parameters():
        p.data.normal_()
    c = [torch.randn(2, ch, 32 // 2**i, 48 // 2**i) for i, ch in enumerate((3, 4, 5, 7))]
    outs = fpn(c)

    def lat(i):
        conv = fpn.lateral_convs[i].conv
        return F.conv2d(c[i], conv.weight, conv.bias)

    def out(i, x):
        conv = fpn.fpn_convs[i].conv
        return F.conv2d(x, conv.weight, conv.bias, padding=1)

    def up(x):
        return x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)

    t5 = lat(3)
    t4 = lat(2) + up(t5)
    t3 = lat(1) + up(t4)
    t2 = lat(0) + up(t3)
    expected = [out(0, t2), out(1, t3), out(2, t4), out(3, t5)]
    expected.append(expected[-1][:, :, ::2, ::2])
    assert len(outs) == 5
    for got, want in zip(outs, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_fpn_start_level_and_extra_convs():
    fpn = FPN(
        FPNConfig(out_channels=8, levels=(8, 16, 32, 64, 128), extra="on_input"), in_channels=(4, 6, 10, 12)
    )
    keys = fpn.state_dict()
    assert tuple(keys["lateral_convs.0.conv.weight"].shape) == (8, 6, 1, 1)  # C3 first (mmdet start_level=1)
    assert "lateral_convs.3.conv.weight" not in keys
    assert tuple(keys["fpn_convs.3.conv.weight"].shape) == (8, 12, 3, 3)  # on C5
    assert tuple(keys["fpn_convs.4.conv.weight"].shape) == (8, 8, 3, 3)
    c = [
        torch.randn(1, ch, 32 // 2**i, 32 // 2**i) for i, ch in enumerate((4, 6, 10, 12))
    ]  # a 128 x 128 image
    outs = fpn(c)
    assert [tuple(o.shape[-2:]) for o in outs] == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    top = FPN(FPNConfig(out_channels=8, levels=(4, 8, 16)), in_channels=(4, 6, 10, 12))
    assert len(top(c)) == 3 and "lateral_convs.2.conv.weight" in top.state_dict()


# ----------------------------------------------------------------------------------------------------------------
# Encoder
# ----------------------------------------------------------------------------------------------------------------


def _encoder(**kw) -> ImageEncoder:
    torch.manual_seed(0)
    return ImageEncoder(_small(**kw), FPNConfig(out_channels=8))


def test_encoder_runs_only_valid_views():
    enc = _encoder().eval()
    _randomise_bn(enc)
    images = torch.randn(2, 3, 3, 64, 96)
    valid = torch.tensor([[True, False, True], [False, False, True]])
    batch_sizes = []
    enc.backbone.conv1.register_forward_hook(lambda m, args, out: batch_sizes.append(args[0].shape[0]))
    outs = enc(images, valid)
    assert batch_sizes == [3]
    assert enc.output_shape().strides == (4, 8, 16, 32)
    alone = enc.neck(enc.backbone(images[valid]))
    for lvl, (o, a) in enumerate(zip(outs, alone, strict=True)):
        s = enc.output_shape().strides[lvl]
        assert o.shape == (2, 3, 8, 64 // s, 96 // s)
        assert torch.equal(o[~valid], torch.zeros_like(o[~valid]))
        torch.testing.assert_close(o[valid], a)
    # each view only depends on its own image
    single = enc(images[1:, 2:], torch.ones(1, 1, dtype=torch.bool))
    torch.testing.assert_close(single[0][0, 0], outs[0][1, 2], rtol=1e-4, atol=1e-4)

    batch_sizes.clear()
    none = enc(images, torch.zeros(2, 3, dtype=torch.bool))
    assert batch_sizes == []
    assert all(not o.any() for o in none)


def test_encoder_gradients_reach_every_trainable_parameter():
    enc = _encoder(frozen_stages=1).train()
    images = torch.randn(1, 2, 3, 64, 64, requires_grad=True)
    outs = enc(images, torch.tensor([[True, False]]))
    sum(o.square().mean() for o in outs).backward()
    for name, p in enc.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None and name.startswith(
                ("backbone.conv1", "backbone.bn1", "backbone.layer1")
            ), name
    assert images.grad[0, 0].abs().sum() > 0 and not images.grad[0, 1].any()


def test_encoder_rejects_bad_shapes():
    enc = _encoder()
    with pytest.raises(ValueError, match="images must be"):
        enc(torch.zeros(2, 3, 64, 64), torch.ones(2, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="valid must be"):
        enc(torch.zeros(1, 2, 3, 64, 64), torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="multiple of the largest"):
        enc(torch.zeros(1, 2, 3, 64, 40), torch.ones(1, 2, dtype=torch.bool))


# ----------------------------------------------------------------------------------------------------------------
# Loading weights by path
# ----------------------------------------------------------------------------------------------------------------


def _source_and_target(depth: int = 18):
    src = ImageEncoder(ResNetConfig(depth=depth, base_width=8), FPNConfig(out_channels=8)).eval()
    _randomise_bn(src, seed=1)
    for p in src.parameters():
        p.data.add_(0.01 * torch.randn_like(p))
    dst = ImageEncoder(ResNetConfig(depth=depth, base_width=8), FPNConfig(out_channels=8)).eval()
    return src, dst


def _outputs_equal(a: ImageEncoder, b: ImageEncoder) -> bool:
    images = torch.randn(1, 2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    valid = torch.ones(1, 2, dtype=torch.bool)
    with torch.no_grad():
        return all(torch.equal(x, y) for x, y in zip(a(images, valid), b(images, valid), strict=True))


def test_load_torchvision_state_dict(tmp_path, caplog):
    src, dst = _source_and_target()
    state = src.backbone.state_dict()
    state["fc.weight"] = torch.randn(1000, 64)
    state["fc.bias"] = torch.randn(1000)
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    with caplog.at_level(logging.INFO, logger="perception.models.image.weights"):
        report = load_image_weights(dst, path)
    assert report.prefixes == {"backbone": ""}
    assert report.unexpected == ("fc.bias", "fc.weight")
    assert len(report.loaded) == len(src.backbone.state_dict())
    assert set(report.missing) == {f"neck.{k}" for k in dst.neck.state_dict()}
    assert f"loaded {len(report.loaded)} image weights" in caplog.text and "fc.weight" in caplog.text
    assert all(torch.equal(v, src.backbone.state_dict()[k]) for k, v in dst.backbone.state_dict().items())
    dst.neck.load_state_dict(src.neck.state_dict())
    assert _outputs_equal(src, dst)

    bare = ResNet(ResNetConfig(depth=18, base_width=8)).eval()
    report = load_image_weights(bare, path)
    assert report.missing == () and len(report.loaded) == len(state) - 2


@pytest.mark.parametrize(("backbone", "neck"), [("img_backbone.", "img_neck."), ("backbone.", "neck.")])
def test_load_mmdet_checkpoint(tmp_path, backbone, neck):
    src, dst = _source_and_target(depth=50)
    assert not _outputs_equal(src, dst)
    state = {backbone + k: v for k, v in src.backbone.state_dict().items()}
    state |= {neck + k: v for k, v in src.neck.state_dict().items()}
    state["pts_bbox_head.heatmap_head.0.weight"] = torch.zeros(3)
    path = tmp_path / "sparsefusion.pth"
    torch.save({"meta": {"epoch": 6, "mmdet_version": "2.x"}, "state_dict": state}, path)
    report = load_image_weights(dst, path)
    assert report.prefixes == {"backbone": backbone, "neck": neck}
    assert report.missing == () and report.unexpected == () and report.ignored == 1
    assert _outputs_equal(src, dst)

    module_path = tmp_path / "dataparallel.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, module_path)
    fresh = ImageEncoder(ResNetConfig(depth=50, base_width=8), FPNConfig(out_channels=8)).eval()
    load_image_weights(fresh, module_path)
    assert _outputs_equal(src, fresh)


def test_load_old_torchvision_file_without_num_batches_tracked(tmp_path):
    src, dst = _source_and_target()
    state = {k: v for k, v in src.backbone.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pth")
    report = load_image_weights(dst.backbone, tmp_path / "old.pth")
    assert report.missing == ()


def test_pretrained_config_loads_at_construction(tmp_path):
    src, _ = _source_and_target()
    torch.save({"state_dict": {f"img_{k}": v for k, v in src.state_dict().items()}}, tmp_path / "w.pth")
    cfg = ResNetConfig.model_validate(
        {"depth": 18, "base_width": 8, "pretrained": "w.pth"}, context={"base_dir": tmp_path}
    )
    assert cfg.pretrained == tmp_path / "w.pth"
    built = ImageEncoder(cfg, FPNConfig(out_channels=8)).eval()
    assert _outputs_equal(src, built)


def test_load_errors_name_the_problem(tmp_path):
    _, dst = _source_and_target()
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    big = ResNet(ResNetConfig(depth=18, base_width=16)).state_dict()
    torch.save(big, tmp_path / "wide.pth")
    with pytest.raises(ValueError, match=r"'conv1.weight' has shape \(16, 3, 7, 7\).*\(8, 3, 7, 7\)"):
        load_image_weights(dst, tmp_path / "wide.pth")
    torch.save({"state_dict": {"head.weight": torch.zeros(2)}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"other.pth: no entry fits the image backbone / neck.*head.weight"):
        load_image_weights(dst, tmp_path / "other.pth")
    torch.save({"epoch": 3, "weights": [1, 2]}, tmp_path / "notdict.pth")
    with pytest.raises(ValueError, match="not a state dict"):
        load_image_weights(dst, tmp_path / "notdict.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="garbage.pth: cannot be loaded"):
        load_image_weights(dst, tmp_path / "garbage.pth")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_image_weights(dst, tmp_path / "missing.pth")
    with pytest.raises(TypeError, match="ResNet, an FPN"):
        load_image_weights(torch.nn.Linear(2, 2), tmp_path / "wide.pth")
    assert all(torch.equal(v, before[k]) for k, v in dst.state_dict().items())


# ----------------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        {"depth": 101},
        {"depth": "50"},
        {"base_width": 0},
        {"frozen_stages": 5},
        {"frozen_stages": -2},
        {"norm_eval": 1},
        {"style": "caffe"},
        {"pretrained": ""},
    ],
)
def test_resnet_config_is_strict(data):
    with pytest.raises(ValidationError):
        ResNetConfig.model_validate(data, context={"base_dir": "/tmp"})


def test_resnet_config_relative_path_needs_base_dir():
    with pytest.raises(ValidationError, match="base_dir"):
        ResNetConfig.model_validate({"pretrained": "r50.pth"})


@pytest.mark.parametrize(
    "data",
    [
        {"levels": (4, 16)},
        {"levels": (2, 4)},
        {"levels": ()},
        {"levels": (64,)},
        {"extra": "conv"},
        {"num_outs": 5},
    ],
)
def test_fpn_config_is_strict(data):
    with pytest.raises(ValidationError):
        FPNConfig.model_validate(data)


def test_fpn_needs_four_backbone_levels():
    with pytest.raises(ValueError, match="4 backbone levels"):
        FPN(FPNConfig(), in_channels=(8, 16, 32))
