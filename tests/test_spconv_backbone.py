"""spconv plumbing and CenterPoint's sparse ResNet against dense-convolution references (as spconv's own tests)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from perception.models.backbones.spconv_resnet import SparseBasicBlock, VoxelResBackbone8x
from perception.models.backbones.spconv_resnet_config import SpconvResNetConfig
from perception.models.spconv_utils import (
    SparseConv3d,
    SubMConv3d,
    conv_algo_for,
    from_spconv,
    spconv,
    to_spconv,
    use_conv_algo,
)
from perception.shapes import SparseShape
from perception.structures import SparseFeatures

GRID = (24, 16, 16)  # the smallest z that survives the four z-downsamplings with extra_z = 1 is 24
CHANNELS = (4, 8, 8, 8)


def random_sparse(grid, channels, n, seed, batch=2) -> SparseFeatures:  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    nz, ny, nx = grid
    cells = torch.randperm(batch * nz * ny * nx, generator=g)[:n]
    b, rest = cells // (nz * ny * nx), cells % (nz * ny * nx)
    coords = torch.stack([b, rest // (ny * nx), (rest // nx) % ny, rest % nx], 1).int()
    return SparseFeatures(torch.randn(n, channels, generator=g), coords, grid, batch)


def to_dense(features: torch.Tensor, coords: torch.Tensor, shape, batch) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """(B, C, D, H, W) dense volume, zeros where no voxel."""
    out = features.new_zeros((batch, features.shape[1], *shape))
    c = coords.long()
    out[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]] = features
    return out


def occupancy(coords: torch.Tensor, shape, batch) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return to_dense(torch.ones(coords.shape[0], 1), coords, shape, batch)


def dense_weight(conv) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return conv.weight.permute(0, 4, 1, 2, 3)  # KRSC (out, kz, ky, kx, in) -> (out, in, kz, ky, kx)


# ---------------------------------------------------------------------------------------------------------------
# plumbing
# ---------------------------------------------------------------------------------------------------------------


def test_algorithm_chosen_by_device() -> None:
    assert conv_algo_for("cpu") == spconv.ConvAlgo.Native
    assert conv_algo_for(torch.device("cuda", 0)) == spconv.ConvAlgo.MaskImplicitGemm
    net = VoxelResBackbone8x(
        SpconvResNetConfig(channels=CHANNELS, out_channels=8), input_shape=SparseShape(3, GRID)
    )
    use_conv_algo(net, "cuda")
    algos = {m.algo for m in net.modules() if isinstance(m, (SubMConv3d, SparseConv3d))}
    assert algos == {spconv.ConvAlgo.MaskImplicitGemm}
    use_conv_algo(net, "cpu")
    assert {m.algo for m in net.modules() if isinstance(m, (SubMConv3d, SparseConv3d))} == {
        spconv.ConvAlgo.Native
    }


def test_conversion_round_trip() -> None:
    sf = random_sparse((3, 5, 6), 4, 20, seed=0)
    t = to_spconv(sf, (4, 5, 6))
    assert list(t.spatial_shape) == [4, 5, 6] and t.batch_size == 2
    back = from_spconv(t)
    assert torch.equal(back.features, sf.features) and torch.equal(back.coords, sf.coords)
    assert back.grid_shape == (4, 5, 6)
    torch.testing.assert_close(t.dense(), to_dense(sf.features, sf.coords, (4, 5, 6), 2))
    with pytest.raises(ValueError, match="spatial_shape"):
        to_spconv(sf, (2, 5, 6))


@pytest.mark.parametrize(
    "kind, kernel, stride, padding",
    [
        ("subm", 3, 1, 1),
        ("sparse", 3, 2, 1),
        ("sparse", 3, 2, (0, 1, 1)),
        ("sparse", (3, 1, 1), (2, 1, 1), 0),
    ],
)
@pytest.mark.parametrize("bias, train", [(False, True), (True, True), (True, False)])
def test_sparse_conv_matches_dense_conv(kind, kernel, stride, padding, bias, train) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    shape = (7, 8, 9)
    sf = random_sparse(shape, 3, 60, seed=1)
    feats = sf.features.clone().requires_grad_(True)
    if kind == "subm":
        conv = SubMConv3d(3, 5, kernel, padding=padding, bias=bias)
    else:
        conv = SparseConv3d(3, 5, kernel, stride=stride, padding=padding, bias=bias)
    if bias:
        torch.nn.init.uniform_(conv.bias, -1, 1)
    conv.train(train)
    use_conv_algo(conv, "cpu")
    out = from_spconv(conv(to_spconv(sf.replace_features(feats))))

    dense_in = to_dense(sf.features, sf.coords, shape, 2).requires_grad_(True)
    w = dense_weight(conv).detach().requires_grad_(True)
    if kind == "subm":
        ref = F.conv3d(dense_in, w, padding=padding)
        mask = occupancy(sf.coords, shape, 2)
    else:
        ref = F.conv3d(dense_in, w, stride=stride, padding=padding)
        mask = (
            F.conv3d(
                occupancy(sf.coords, shape, 2),
                torch.ones(1, 1, *conv.kernel_size),
                stride=stride,
                padding=padding,
            )
            > 0
        ).float()
    if bias:
        ref = ref + conv.bias.detach()[None, :, None, None, None]
    ref = ref * mask
    assert tuple(out.grid_shape) == tuple(ref.shape[2:])
    assert torch.equal(occupancy(out.coords, out.grid_shape, 2), mask)  # active output sites as dense conv's
    torch.testing.assert_close(
        to_dense(out.features, out.coords, out.grid_shape, 2), ref, rtol=1e-4, atol=1e-5
    )

    g = torch.randn_like(out.features)
    out.features.backward(g)
    ref.backward(to_dense(g, out.coords, out.grid_shape, 2))
    c = sf.coords.long()
    torch.testing.assert_close(
        feats.grad, dense_in.grad[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]], rtol=1e-4, atol=1e-4
    )
    torch.testing.assert_close(dense_weight_grad(conv), w.grad, rtol=1e-4, atol=1e-4)


def dense_weight_grad(conv) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return conv.weight.grad.permute(0, 4, 1, 2, 3)


# ---------------------------------------------------------------------------------------------------------------
# backbone vs a dense re-implementation (eval mode)
# ---------------------------------------------------------------------------------------------------------------


class Dense:
    """Dense (B, C, D, H, W) features with an occupancy mask; mirrors the sparse layers on a dense grid."""

    def __init__(self, x: torch.Tensor, mask: torch.Tensor) -> None:
        self.x, self.mask = x, mask

    def conv(self, conv) -> Dense:  # type: ignore[no-untyped-def]
        w = dense_weight(conv)
        bias = conv.bias
        if conv.subm:
            y = F.conv3d(self.x, w, bias, padding=tuple(k // 2 for k in conv.kernel_size))
            return Dense(y * self.mask, self.mask)
        y = F.conv3d(self.x, w, bias, stride=conv.stride, padding=conv.padding)
        ones = torch.ones(1, 1, *conv.kernel_size)
        mask = (F.conv3d(self.mask, ones, stride=conv.stride, padding=conv.padding) > 0).float()
        return Dense(y * mask, mask)

    def bn(self, bn, relu: bool = True) -> Dense:  # type: ignore[no-untyped-def]
        shape = (1, -1, 1, 1, 1)
        y = (self.x - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
        y = y * bn.weight.view(shape) + bn.bias.view(shape)
        return Dense((y.relu() if relu else y) * self.mask, self.mask)


def dense_backbone(net: VoxelResBackbone8x, sf: SparseFeatures) -> list[Dense]:
    x = to_dense(sf.features, sf.coords, net.sparse_shape, sf.batch_size)
    d = Dense(x, occupancy(sf.coords, net.sparse_shape, sf.batch_size))
    d = d.conv(net.conv_input[0]).bn(net.conv_input[1])
    outs = []
    for stage in (net.conv1, net.conv2, net.conv3, net.conv4, [net.conv_out]):
        for layer in stage:
            if isinstance(layer, SparseBasicBlock):
                h = d.conv(layer.conv1).bn(layer.bn1).conv(layer.conv2).bn(layer.bn2, relu=False)
                d = Dense((h.x + d.x).relu() * d.mask, d.mask)
            else:
                d = d.conv(layer[0]).bn(layer[1])
        outs.append(d)
    return outs


def randomize_bn(net: torch.nn.Module) -> None:
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 1.5)
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.2, 0.2)


def test_backbone_matches_dense_reference() -> None:
    torch.manual_seed(0)
    net = VoxelResBackbone8x(
        SpconvResNetConfig(channels=CHANNELS, out_channels=8), input_shape=SparseShape(3, GRID)
    ).eval()
    randomize_bn(net)
    sf = random_sparse(GRID, 3, 300, seed=2)
    with torch.no_grad():
        outs = net.forward_stages(sf)
        refs = dense_backbone(net, sf)
    for out, ref, spec in zip(outs, refs, net.stages, strict=True):
        assert out.grid_shape == spec.grid_shape == tuple(ref.x.shape[2:])
        assert out.features.shape[1] == spec.channels and out.features.dtype == torch.float32
        assert torch.equal(occupancy(out.coords, out.grid_shape, 2), ref.mask), spec.name
        torch.testing.assert_close(
            to_dense(out.features, out.coords, out.grid_shape, 2), ref.x, rtol=1e-4, atol=1e-4
        )
    assert outs[-1].features.abs().sum() > 0


def test_stage_shapes_for_nuscenes_grid() -> None:
    net = VoxelResBackbone8x(SpconvResNetConfig(), input_shape=SparseShape(5, (40, 1440, 1440)))
    assert [s.grid_shape for s in net.stages] == [
        (41, 1440, 1440),
        (21, 720, 720),
        (11, 360, 360),
        (5, 180, 180),
        (2, 180, 180),
    ]
    assert [s.channels for s in net.stages] == [16, 32, 64, 128, 128]
    assert net.output_shape() == SparseShape(128, (2, 180, 180), 8)
    keys = set(net.state_dict())  # OpenPCDet VoxelResBackBone8x parameter names
    assert {
        "conv_input.0.weight",
        "conv_input.1.running_mean",
        "conv1.0.conv1.weight",
        "conv1.0.conv1.bias",
        "conv1.1.bn2.weight",
        "conv2.0.0.weight",
        "conv2.0.1.weight",
        "conv2.2.conv2.bias",
        "conv4.0.0.weight",
        "conv_out.0.weight",
        "conv_out.1.running_var",
    } <= keys
    assert net.conv_out[0].weight.shape == (128, 3, 1, 1, 128)


def test_input_order_does_not_matter() -> None:
    torch.manual_seed(0)
    net = VoxelResBackbone8x(
        SpconvResNetConfig(channels=CHANNELS, out_channels=8), input_shape=SparseShape(3, GRID)
    ).eval()
    sf = random_sparse(GRID, 3, 200, seed=3)
    perm = torch.randperm(200)
    with torch.no_grad():
        a = net(sf)
        b = net(SparseFeatures(sf.features[perm], sf.coords[perm], GRID, 2))
    torch.testing.assert_close(
        to_dense(a.features, a.coords, a.grid_shape, 2),
        to_dense(b.features, b.coords, b.grid_shape, 2),
        rtol=1e-5,
        atol=1e-5,
    )


def test_training_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    net = VoxelResBackbone8x(
        SpconvResNetConfig(channels=CHANNELS, out_channels=8), input_shape=SparseShape(3, GRID)
    ).train()
    sf = random_sparse(GRID, 3, 300, seed=4)
    feats = sf.features.clone().requires_grad_(True)
    out = net(sf.replace_features(feats))
    (out.features * torch.randn_like(out.features)).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert feats.grad is not None and feats.grad.abs().sum() > 0


def test_bf16_autocast_runs_sparse_part_in_fp32() -> None:
    torch.manual_seed(0)
    net = VoxelResBackbone8x(
        SpconvResNetConfig(channels=CHANNELS, out_channels=8), input_shape=SparseShape(3, GRID)
    ).eval()
    sf = random_sparse(GRID, 3, 300, seed=5)
    ref = net(sf)
    feats = sf.features.bfloat16().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(sf.replace_features(feats))
        loss = (out.features * 2).sum()  # downstream ops under autocast
    loss.backward()
    assert out.features.dtype == torch.float32
    # the sparse part is exactly the fp32 network applied to the bf16-rounded input
    torch.testing.assert_close(out.features, net(sf.replace_features(feats.detach().float())).features)
    torch.testing.assert_close(out.features, ref.features, rtol=0.05, atol=0.05)
    assert feats.grad is not None and feats.grad.dtype == torch.bfloat16 and torch.isfinite(feats.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    # bf16 features without autocast are cast to the weights' dtype (spconv has no bf16 kernels)
    torch.testing.assert_close(net(sf.replace_features(feats.detach())).features, out.features)


def test_empty_and_single_voxel() -> None:
    net = VoxelResBackbone8x(
        SpconvResNetConfig(channels=CHANNELS, out_channels=8), input_shape=SparseShape(3, GRID)
    ).train()
    empty = SparseFeatures(torch.zeros(0, 3), torch.zeros(0, 4, dtype=torch.int32), GRID, 2)
    outs = net.forward_stages(empty)
    assert [o.num_voxels for o in outs] == [0] * 5
    assert [o.features.shape[1] for o in outs] == [4, 8, 8, 8, 8]
    assert [o.grid_shape for o in outs] == [s.grid_shape for s in net.stages]
    single = SparseFeatures(torch.ones(1, 3), torch.tensor([[1, 12, 7, 9]], dtype=torch.int32), GRID, 2)
    with pytest.raises(ValueError, match="more than 1 value"):
        net(single)  # BatchNorm batch statistics over one voxel
    net.eval()
    randomize_bn(net)
    out = net(single)
    assert out.num_voxels >= 1 and bool((out.coords[:, 0] == 1).all())  # a strided conv may reach 2 outputs
    ref = dense_backbone(net, single)[-1]
    torch.testing.assert_close(
        to_dense(out.features, out.coords, out.grid_shape, 2), ref.x, rtol=1e-4, atol=1e-4
    )


def test_validation() -> None:
    net = VoxelResBackbone8x(
        SpconvResNetConfig(channels=CHANNELS, out_channels=8), input_shape=SparseShape(3, GRID)
    )
    with pytest.raises(ValueError, match="grid_shape must be"):
        net(random_sparse((24, 16, 8), 3, 5, seed=0))
    with pytest.raises(ValueError, match="3 channels"):
        net(random_sparse(GRID, 4, 5, seed=0))
    with pytest.raises(ValueError, match="too small"):
        VoxelResBackbone8x(SpconvResNetConfig(), input_shape=SparseShape(3, (8, 16, 16)))
