"""CenterPoint's sparse 3D ResNet (OpenPCDet ``VoxelResBackBone8x``) on spconv.

Layout (channels ``c = (16, 32, 64, 128)`` by default; ``subm`` = submanifold 3x3x3 conv, ``spconv`` = strided
sparse conv, every conv followed by BatchNorm1d(eps 1e-3, momentum 0.01); ``res`` = residual basic block of two
submanifold convs with bias, ``relu(bn2(conv2(relu(bn1(conv1 x)))) + x)``):

================= ================================================================= ================ =========
stage             layers                                                            grid (nuScenes)  xy stride
================= ================================================================= ================ =========
conv_input        subm(C_in -> c0) + BN + ReLU                                      41 x 1440 x 1440 1
conv1             res(c0) x 2                                                       41 x 1440 x 1440 1
conv2             spconv(c0 -> c1, k3, s2, p1) + BN + ReLU, res(c1) x 2             21 x 720 x 720   2
conv3             spconv(c1 -> c2, k3, s2, p1) + BN + ReLU, res(c2) x 2             11 x 360 x 360   4
conv4             spconv(c2 -> c3, k3, s2, p(0, 1, 1)) + BN + ReLU, res(c3) x 2     5 x 180 x 180    8
conv_out          spconv(c3 -> out, k(3, 1, 1), s(2, 1, 1), p last_pad) + BN + ReLU 2 x 180 x 180    8
================= ================================================================= ================ =========

As OpenPCDet, the sparse grid is the voxel grid with ``extra_z = 1`` empty layer added on top along z
(``sparse_shape = grid + [1, 0, 0]``), which gives the 41 -> 21 -> 11 -> 5 -> 2 z sizes of CenterPoint's nuScenes
models (grid 40 x 1440 x 1440 at 0.075 x 0.075 x 0.2 m); height compression then yields ``128 * 2 = 256`` BEV
channels. Module and parameter names (``conv_input``, ``conv1.0.conv1.weight``, ..., ``conv_out.1.running_mean``)
follow OpenPCDet, so its checkpoints load with ``load_state_dict``.

Device and precision: the spconv algorithm is chosen from the input's device
(:func:`perception.models.spconv_utils.use_conv_algo`). spconv has no bf16 kernels, so under CPU (or any bf16)
autocast the whole backbone runs in float32 with autocast off and returns float32 features; gradients flow back
to the (bf16) input features.

Empty input (0 voxels): every stage returns 0 rows of its width on its grid (spconv's strided conv cannot run on
an empty tensor). A single voxel works in eval mode; in training mode BatchNorm over one voxel raises torch's
``ValueError`` (batch statistics need more than one value), as in OpenPCDet.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from perception.models.spconv_utils import (
    SparseConv3d,
    SubMConv3d,
    from_spconv,
    sparse_precision,
    spconv_torch,
    to_spconv,
    use_conv_algo,
)
from perception.shapes import SparseShape
from perception.structures import SparseFeatures

from .spconv_resnet_config import DOWNSAMPLE_CONVS, OUT_CONV, STAGE_NAMES, STAGE_STRIDES, SpconvResNetConfig

Triple = tuple[int, int, int]


def _norm(channels: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(channels, eps=1e-3, momentum=0.01)


class SparseBasicBlock(spconv_torch.SparseModule):
    """Residual block of two 3x3x3 submanifold convs (with bias, as OpenPCDet's default) and BatchNorm.

    Args:
        channels: input = output width.
        indice_key: spconv key to share the rulebook of the submanifold convs of one resolution.
        bias: conv bias (OpenPCDet's ``VoxelResBackBone8x`` uses True).
    """

    def __init__(self, channels: int, *, indice_key: str, bias: bool = True) -> None:
        super().__init__()
        self.conv1 = SubMConv3d(channels, channels, 3, padding=1, bias=bias, indice_key=indice_key)
        self.bn1 = _norm(channels)
        self.relu = nn.ReLU()
        self.conv2 = SubMConv3d(channels, channels, 3, padding=1, bias=bias, indice_key=indice_key)
        self.bn2 = _norm(channels)

    def forward(self, x: spconv_torch.SparseConvTensor) -> spconv_torch.SparseConvTensor:
        out = self.conv1(x)
        out = out.replace_feature(self.relu(self.bn1(out.features)))
        out = self.conv2(out)
        out = out.replace_feature(self.relu(self.bn2(out.features) + x.features))
        return out


def _conv_bn_relu(conv: spconv_torch.SparseConvolution, channels: int) -> spconv_torch.SparseSequential:
    return spconv_torch.SparseSequential(conv, _norm(channels), nn.ReLU())


@dataclass(frozen=True)
class StageSpec:
    """Where a stage's output lives: ``name``, ``channels``, spconv grid ``(D, H, W)`` and xy ``stride``."""

    name: str
    channels: int
    grid_shape: Triple
    stride: int


class VoxelResBackbone8x(nn.Module):
    """CenterPoint's sparse ResNet, 8x downsampling in x/y (see the module docstring for the layer table).

    Args:
        config: the ``model.backbone_3d.spconv_resnet`` settings (widths, blocks, ``extra_z``, ``last_pad``).
        input_shape: the VFE output: channels (e.g. 5 from :class:`~perception.models.vfe.MeanVFE`) and the input
            voxel grid ``(nz, ny, nx)``.

    Attributes:
        sparse_shape: the spconv grid (input grid plus ``extra_z`` layers along z).
        stages: :class:`StageSpec` of ``conv1, conv2, conv3, conv4, conv_out`` in order (grids from
            :meth:`SpconvResNetConfig.stage_grids`, the same layer table the convs are built from).
    """

    def __init__(self, config: SpconvResNetConfig, *, input_shape: SparseShape) -> None:
        super().__init__()
        self.config = config
        self._input_shape = input_shape
        self._output_shape = config.output_shape(input_shape)  # ValueError when the grid does not fit
        c, in_channels = list(config.channels), input_shape.channels
        grid = tuple(input_shape.grid)
        shapes = config.stage_grids(grid)
        self.sparse_shape: Triple = config.sparse_shape(grid)

        self.conv_input = _conv_bn_relu(
            SubMConv3d(in_channels, c[0], 3, padding=1, bias=False, indice_key="subm1"), c[0]
        )
        stage_modules: list[spconv_torch.SparseSequential] = []
        for i in range(4):
            layers: list[nn.Module] = []
            if i > 0:
                kernel, stride, padding = DOWNSAMPLE_CONVS[i - 1]
                conv = SparseConv3d(
                    c[i - 1],
                    c[i],
                    kernel,
                    stride=stride,
                    padding=padding,
                    bias=False,
                    indice_key=f"spconv{i + 1}",
                )
                layers.append(_conv_bn_relu(conv, c[i]))
            layers += [
                SparseBasicBlock(c[i], indice_key=f"res{i + 1}", bias=config.block_bias)
                for _ in range(config.blocks_per_stage)
            ]
            stage_modules.append(spconv_torch.SparseSequential(*layers))
        self.conv1, self.conv2, self.conv3, self.conv4 = stage_modules
        out_kernel, out_stride = OUT_CONV
        self.conv_out = _conv_bn_relu(
            SparseConv3d(
                c[3],
                config.out_channels,
                out_kernel,
                stride=out_stride,
                padding=config.last_pad,
                bias=False,
                indice_key="spconv_down2",
            ),
            config.out_channels,
        )
        widths = (*c, config.out_channels)
        self.stages = tuple(
            StageSpec(n, w, s, st * input_shape.stride)
            for n, w, s, st in zip(STAGE_NAMES, widths, shapes, STAGE_STRIDES, strict=True)
        )

    def input_shape(self) -> SparseShape:
        """What the backbone takes: the VFE's channels on the voxel grid."""
        return self._input_shape

    def output_shape(self) -> SparseShape:
        """What it gives: ``out_channels`` on the ``conv_out`` grid, stride 8 (:meth:`SpconvResNetConfig.output_shape`)."""
        return self._output_shape

    def _check(self, sparse: SparseFeatures) -> None:
        if not isinstance(sparse, SparseFeatures):
            raise TypeError(f"sparse must be a SparseFeatures, got {type(sparse).__name__}")
        expected = self._input_shape
        if tuple(sparse.grid_shape) != expected.grid:
            raise ValueError(
                f"sparse.grid_shape must be {expected.grid} (the backbone's grid), got {sparse.grid_shape}"
            )
        if sparse.features.shape[1] != expected.channels:
            raise ValueError(
                f"sparse.features must have {expected.channels} channels, got {sparse.features.shape[1]}"
            )

    def forward_stages(self, sparse: SparseFeatures) -> list[SparseFeatures]:
        """Run the backbone and return every stage's output (``conv1, conv2, conv3, conv4, conv_out``).

        Args:
            sparse: features ``(M, C_in)``, coords int32 ``(M, 4)`` ``[b, z, y, x]`` on the input grid.

        Returns:
            Five :class:`SparseFeatures`, stage ``i`` with ``stages[i].channels`` float32 features on
            ``stages[i].grid_shape`` (the spconv grid, including the extra z layer for the first stages).
        """
        self._check(sparse)
        dev = sparse.features.device
        if sparse.num_voxels == 0:
            return [
                SparseFeatures(
                    sparse.features.new_zeros((0, st.channels), dtype=torch.float32),
                    sparse.coords,
                    st.grid_shape,
                    sparse.batch_size,
                )
                for st in self.stages
            ]
        use_conv_algo(self, dev)
        with sparse_precision(dev) as to_fp32:
            # spconv needs features in the weights' dtype (float32 unless the model was cast); bf16 never works.
            dtype = torch.float32 if to_fp32 else self.conv_input[0].weight.dtype
            features = sparse.features.to(dtype)
            x = to_spconv(sparse.replace_features(features), self.sparse_shape)
            x = self.conv_input(x)
            outs = []
            for stage in (self.conv1, self.conv2, self.conv3, self.conv4, self.conv_out):
                x = stage(x)
                outs.append(from_spconv(x))
        return outs

    def forward(self, sparse: SparseFeatures) -> SparseFeatures:
        """``sparse`` on the input grid -> float32 ``(M', out_channels)`` features on ``output_shape().grid``
        (x/y stride 8); feed it to :class:`~perception.models.bev.HeightCompression`."""
        return self.forward_stages(sparse)[-1]
