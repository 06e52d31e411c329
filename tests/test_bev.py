"""BEV: pillar scatter / height compression vs dense references, and the 2D BEV backbone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from perception.models.bev import HeightCompression, PillarScatter
from perception.models.bev_backbone import BaseBEVBackbone, BasicBlock2d
from perception.models.model_config import BEVBackboneConfig
from perception.models.spconv_utils import to_spconv
from perception.shapes import MapShape, SparseShape
from perception.structures import SparseFeatures


def bev_backbone(*, in_channels: int, size: tuple[int, int] = (16, 24), **kw) -> BaseBEVBackbone:  # type: ignore[no-untyped-def]
    """A BaseBEVBackbone from config keywords, reading a map of ``in_channels`` x ``size``."""
    return BaseBEVBackbone(BEVBackboneConfig(**kw), input_shape=MapShape(in_channels, size))


def random_sparse(grid, channels, n, seed, batch=2) -> SparseFeatures:  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    nz, ny, nx = grid
    cells = torch.randperm(batch * nz * ny * nx, generator=g)[:n]
    b, rest = cells // (nz * ny * nx), cells % (nz * ny * nx)
    coords = torch.stack([b, rest // (ny * nx), (rest // nx) % ny, rest % nx], 1).int()
    return SparseFeatures(torch.randn(n, channels, generator=g), coords, grid, batch)


def loop_reference(sf: SparseFeatures) -> torch.Tensor:
    nz, ny, nx = sf.grid_shape
    c = sf.features.shape[1]
    out = torch.zeros(sf.batch_size, c * nz, ny, nx, dtype=sf.features.dtype)
    for (b, z, y, x), f in zip(sf.coords.tolist(), sf.features, strict=True):
        for ch in range(c):
            out[b, ch * nz + z, y, x] = f[ch]
    return out


# ---------------------------------------------------------------------------------------------------------------
# scatter to BEV
# ---------------------------------------------------------------------------------------------------------------


def test_height_compression_matches_loop_and_spconv_dense() -> None:
    sf = random_sparse((3, 5, 7), 4, 40, seed=0)
    hc = HeightCompression(input_shape=SparseShape(4, (3, 5, 7)))
    out = hc(sf)
    assert out.shape == (2, 12, 5, 7) and hc.output_shape() == MapShape(12, (5, 7), 1)
    assert torch.equal(out, loop_reference(sf))
    # OpenPCDet's HeightCompression: spconv dense() (B, C, D, H, W) viewed as (B, C * D, H, W)
    assert torch.equal(out, to_spconv(sf).dense().reshape(2, 12, 5, 7))


def test_pillar_scatter_matches_loop() -> None:
    sf = random_sparse((1, 6, 9), 3, 30, seed=1, batch=3)
    out = PillarScatter(input_shape=SparseShape(3, (1, 6, 9)))(sf)
    assert out.shape == (3, 3, 6, 9)
    assert torch.equal(out, loop_reference(sf))
    b, _, y, x = sf.coords[0].tolist()
    assert torch.equal(out[b, :, y, x], sf.features[0])  # rows are y, columns x


def test_scatter_gradient_and_dtype() -> None:
    sf = random_sparse((2, 4, 4), 3, 10, seed=2)
    feats = sf.features.clone().requires_grad_(True)
    out = HeightCompression(input_shape=SparseShape(3, (2, 4, 4)))(sf.replace_features(feats))
    g = torch.randn_like(out)
    out.backward(g)
    c = sf.coords.long()
    expected = torch.stack([g[c[:, 0], ch * 2 + c[:, 1], c[:, 2], c[:, 3]] for ch in range(3)], dim=1)
    assert torch.equal(feats.grad, expected)
    bf = HeightCompression(input_shape=SparseShape(3, (2, 4, 4)))(sf.replace_features(sf.features.bfloat16()))
    assert bf.dtype == torch.bfloat16


def test_scatter_empty_single_and_errors() -> None:
    empty = SparseFeatures(torch.zeros(0, 3), torch.zeros(0, 4, dtype=torch.int32), (1, 4, 5), 2)
    out = PillarScatter(input_shape=SparseShape(3, (1, 4, 5)))(empty)
    assert out.shape == (2, 3, 4, 5) and not out.any()
    one = SparseFeatures(torch.ones(1, 3), torch.tensor([[1, 0, 3, 4]], dtype=torch.int32), (1, 4, 5), 2)
    out = PillarScatter(input_shape=SparseShape(3, (1, 4, 5)))(one)
    assert out.sum() == 3 and torch.equal(out[1, :, 3, 4], torch.ones(3))
    with pytest.raises(ValueError, match=r"grid \(1, ny, nx\)"):
        PillarScatter(input_shape=SparseShape(3, (2, 4, 5)))
    hc = HeightCompression(input_shape=SparseShape(3, (1, 4, 5)))
    with pytest.raises(ValueError, match="grid_shape must be"):
        hc(SparseFeatures(torch.ones(1, 3), torch.zeros(1, 4, dtype=torch.int32), (1, 4, 6), 1))
    with pytest.raises(ValueError, match="3 channels"):
        hc(SparseFeatures(torch.ones(1, 2), torch.zeros(1, 4, dtype=torch.int32), (1, 4, 5), 1))
    with pytest.raises(ValueError, match=r"x must lie in \[0, 5\)"):
        hc(SparseFeatures(torch.ones(1, 3), torch.tensor([[0, 0, 0, 5]], dtype=torch.int32), (1, 4, 5), 1))
    with pytest.raises(ValueError, match=r"batch must lie in \[0, 1\)"):
        hc(SparseFeatures(torch.ones(1, 3), torch.tensor([[1, 0, 0, 0]], dtype=torch.int32), (1, 4, 5), 1))


# ---------------------------------------------------------------------------------------------------------------
# BEV backbone
# ---------------------------------------------------------------------------------------------------------------


def small_centerpoint() -> BaseBEVBackbone:
    # CenterPoint nuScenes layout (layer_nums [5, 5], strides [1, 2], filters [128, 256], up [1, 2] -> 256 each),
    # narrowed for the test.
    return bev_backbone(
        in_channels=6,
        layer_nums=(2, 2),
        layer_strides=(1, 2),
        num_filters=(8, 16),
        upsample_strides=(1, 2),
        num_upsample_filters=(12, 12),
    )


def small_dsvt() -> BaseBEVBackbone:
    # DSVT nuScenes layout: residual, layer_nums [1, 2, 2], strides [1, 2, 2], up [0.5, 1, 2], narrowed.
    return bev_backbone(
        in_channels=6,
        layer_nums=(1, 2, 2),
        layer_strides=(1, 2, 2),
        num_filters=(8, 8, 16),
        upsample_strides=(0.5, 1, 2),
        num_upsample_filters=(4, 4, 4),
        block="residual",
    )


@pytest.mark.parametrize(
    "make, out_channels, out_stride",
    [(small_centerpoint, 24, 1.0), (small_dsvt, 12, 2.0)],
)
def test_bev_backbone_shapes_and_gradients(make, out_channels, out_stride) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    net = make().train()
    assert net.out_channels == out_channels and net.out_stride == out_stride
    x = torch.randn(2, 6, 16, 24)
    y = net(x)
    assert (
        y.shape == (2, out_channels, int(16 / out_stride), int(24 / out_stride)) and y.dtype == torch.float32
    )
    (y * torch.randn_like(y)).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_final_deblock_and_no_deblock() -> None:
    net = bev_backbone(
        in_channels=4,
        layer_nums=(1, 1),
        layer_strides=(2, 2),
        num_filters=(8, 8),
        upsample_strides=(1, 2, 2),
        num_upsample_filters=(4, 4, 8),
    )
    assert net.out_stride == 1.0 and net.out_channels == 8
    assert net(torch.randn(1, 4, 8, 8)).shape == (1, 8, 8, 8)
    plain = bev_backbone(in_channels=4, layer_nums=(1,), layer_strides=(2,), num_filters=(8,))
    assert plain.out_stride == 2.0 and plain(torch.randn(1, 4, 8, 8)).shape == (1, 8, 4, 4)


def _bn_eval(x: torch.Tensor, bn: torch.nn.BatchNorm2d) -> torch.Tensor:
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def test_bev_backbone_matches_functional_reference() -> None:
    torch.manual_seed(0)
    net = small_dsvt().eval()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(1, 6, 16, 16)

    def block(x: torch.Tensor, b: BasicBlock2d) -> torch.Tensor:
        s = b.conv1.stride
        h = F.relu(_bn_eval(F.conv2d(x, b.conv1.weight, stride=s, padding=1), b.bn1))
        h = _bn_eval(F.conv2d(h, b.conv2.weight, padding=1), b.bn2)
        sc = (
            _bn_eval(F.conv2d(x, b.downsample_layer[0].weight, stride=s), b.downsample_layer[1])
            if b.downsample
            else x
        )
        return F.relu(h + sc)

    ups, h = [], x
    for stage, deblock, u in zip(net.blocks, net.deblocks, (0.5, 1, 2), strict=True):
        for b in stage:
            h = block(h, b)
        w = deblock[0].weight
        d = F.conv2d(h, w, stride=2) if u < 1 else F.conv_transpose2d(h, w, stride=int(u))
        ups.append(F.relu(_bn_eval(d, deblock[1])))
    with torch.no_grad():
        torch.testing.assert_close(net(x), torch.cat(ups, dim=1), rtol=1e-5, atol=1e-5)


def test_bev_backbone_bf16_autocast() -> None:
    torch.manual_seed(0)
    net = small_centerpoint().train()
    x = torch.randn(1, 6, 8, 8)
    ref = net(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref, rtol=0.1, atol=0.1)
    y.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_state_dict_layout_matches_openpcdet() -> None:
    keys = set(small_centerpoint().state_dict())
    # BaseBEVBackbone: blocks.i = [ZeroPad2d, Conv2d, BN, ReLU, (Conv2d, BN, ReLU) x n]; deblocks.i = [ConvT, BN, ReLU]
    assert {
        "blocks.0.1.weight",
        "blocks.0.2.running_mean",
        "blocks.1.7.weight",
        "deblocks.1.0.weight",
    } <= keys
    keys = set(small_dsvt().state_dict())
    # BaseBEVResBackbone: blocks.i = [BasicBlock(downsample), BasicBlock x n]
    assert {"blocks.0.0.conv1.weight", "blocks.0.0.downsample_layer.0.weight", "blocks.2.2.bn2.bias"} <= keys
    assert small_dsvt().deblocks[0][0].weight.shape == (4, 8, 2, 2)  # stride 0.5 -> Conv2d(k=2, s=2)


def test_bev_backbone_validation() -> None:
    with pytest.raises(ValueError, match="must agree"):
        bev_backbone(
            in_channels=4, layer_nums=(1, 1), layer_strides=(1, 2), num_filters=(4, 4),
            upsample_strides=(1, 1), num_upsample_filters=(4, 4),
        )  # fmt: skip
    with pytest.raises(ValueError, match="need the same length"):
        bev_backbone(
            in_channels=4, layer_nums=(1, 1), layer_strides=(1, 2), num_filters=(4,),
        )  # fmt: skip
    with pytest.raises(ValueError, match="1 / integer"):
        bev_backbone(
            in_channels=4, layer_nums=(1,), layer_strides=(1,), num_filters=(4,),
            upsample_strides=(0.4,), num_upsample_filters=(4,),
        )  # fmt: skip
    net = small_centerpoint()
    with pytest.raises(ValueError, match="multiples of 2"):
        net(torch.randn(1, 6, 9, 8))
    with pytest.raises(ValueError, match="6 channels"):
        net(torch.randn(1, 5, 8, 8))


def test_pipeline_vfe_sparse_resnet_bev() -> None:
    """Dynamic voxel VFE -> sparse ResNet -> height compression -> BEV backbone on a real (simulated) scan."""
    from perception.datasets.synthetic import make_lidar_scan
    from perception.grid import VoxelGrid
    from perception.models.backbones.spconv_resnet import VoxelResBackbone8x
    from perception.models.backbones.spconv_resnet_config import SpconvResNetConfig
    from perception.models.model_config import DynamicVFEConfig
    from perception.models.vfe import DynamicVoxelVFE

    torch.manual_seed(0)
    points = torch.from_numpy(make_lidar_scan(1, seed=0))
    vfe = DynamicVoxelVFE(
        DynamicVFEConfig(filters=(8, 8)),
        num_point_features=5,
        grid=VoxelGrid((-8, -8, -3, 8, 8, 1.8), (0.5, 0.5, 0.2)),
    )
    assert vfe.grid.shape == (24, 32, 32)
    sparse_net = VoxelResBackbone8x(
        SpconvResNetConfig(channels=(4, 8, 8, 8), out_channels=8), input_shape=vfe.output_shape()
    )
    hc = HeightCompression(input_shape=sparse_net.output_shape())
    bev_net = bev_backbone(
        in_channels=hc.output_shape().channels, size=hc.output_shape().size, layer_nums=(1, 1), layer_strides=(1, 2), num_filters=(8, 16),
        upsample_strides=(1, 2), num_upsample_filters=(8, 8),
    )  # fmt: skip
    sparse = vfe(
        torch.cat([points, points]), batch_index=torch.arange(2).repeat_interleave(len(points)), batch_size=2
    )
    out = sparse_net(sparse)
    bev = bev_net(hc(out))
    assert sparse.num_voxels > 100 and out.grid_shape == (1, 4, 4)
    assert bev.shape == (2, 16, 4, 4)
    torch.testing.assert_close(
        bev[0], bev[1], rtol=1e-4, atol=1e-4
    )  # the same scan twice (sum order differs)
    bev.square().mean().backward()
    for module in (vfe, sparse_net, bev_net):
        for name, p in module.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
