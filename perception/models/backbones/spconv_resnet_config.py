"""Config of CenterPoint's sparse ResNet (``model.backbone_3d.spconv_resnet:``) and its layer table.

Torch-free: the config loader imports it. The layer table (:data:`DOWNSAMPLE_CONVS`, :data:`OUT_CONV`) is the one
description of the strided convs: :class:`~perception.models.backbones.spconv_resnet.VoxelResBackbone8x` builds
its convs from it, and :meth:`SpconvResNetConfig.stage_grids` computes the stage grids from it, so the config-time
plan and the built module cannot disagree.
"""

from __future__ import annotations

from collections.abc import Sequence

from perception.config_types import Bool, NonNegInt, PosInt, StrictSection
from perception.shapes import SparseShape

__all__ = ["DOWNSAMPLE_CONVS", "OUT_CONV", "SpconvResNetConfig", "conv_output_shape"]

Int3 = tuple[int, int, int]

DOWNSAMPLE_CONVS: tuple[tuple[int, int, int | Int3], ...] = ((3, 2, 1), (3, 2, 1), (3, 2, (0, 1, 1)))
"""``(kernel, stride, padding)`` of the strided convs opening ``conv2``, ``conv3`` and ``conv4``."""
OUT_CONV: tuple[Int3, Int3] = ((3, 1, 1), (2, 1, 1))
"""``(kernel, stride)`` of ``conv_out`` (its z padding is the config's ``last_pad``)."""
STAGE_NAMES = ("conv1", "conv2", "conv3", "conv4", "conv_out")
STAGE_STRIDES = (1, 2, 4, 8, 8)
"""x/y stride of each stage's output w.r.t. the input grid."""


def _triple(v: int | Sequence[int]) -> Int3:
    t = (v, v, v) if isinstance(v, int) else tuple(int(x) for x in v)
    if len(t) != 3:
        raise ValueError(f"expected an int or 3 ints, got {v!r}")
    return t  # type: ignore[return-value]


def conv_output_shape(
    shape: Sequence[int],
    kernel: int | Sequence[int],
    stride: int | Sequence[int],
    padding: int | Sequence[int],
) -> Int3:
    """Output grid of a strided (non-submanifold) 3D conv, per axis ``(n + 2p - k) // s + 1`` (dilation 1)."""
    k, s, p = _triple(kernel), _triple(stride), _triple(padding)
    return tuple((n + 2 * pi - ki) // si + 1 for n, ki, si, pi in zip(shape, k, s, p, strict=True))  # type: ignore[return-value]


class SpconvResNetConfig(StrictSection):
    """:class:`~perception.models.backbones.spconv_resnet.VoxelResBackbone8x` settings.

    Attributes:
        channels: widths of the four stages.
        out_channels: width of the final z-downsampling conv.
        blocks_per_stage: residual blocks per stage.
        block_bias: bias in the residual blocks' convs (OpenPCDet: True).
        extra_z: empty layers added on top of the grid along z before the convs (OpenPCDet: 1).
        last_pad: z padding of the final ``(3, 1, 1)`` conv (OpenPCDet ``last_pad``).
    """

    channels: tuple[PosInt, PosInt, PosInt, PosInt] = (16, 32, 64, 128)
    out_channels: PosInt = 128
    blocks_per_stage: NonNegInt = 2
    block_bias: Bool = True
    extra_z: NonNegInt = 1
    last_pad: NonNegInt = 0

    def sparse_shape(self, grid: Sequence[int]) -> Int3:
        """The spconv grid: the voxel grid ``(nz, ny, nx)`` with ``extra_z`` layers added along z."""
        return (int(grid[0]) + self.extra_z, int(grid[1]), int(grid[2]))

    def stage_grids(self, grid: Sequence[int]) -> tuple[Int3, ...]:
        """Grids ``(D, H, W)`` of ``conv1, conv2, conv3, conv4, conv_out`` for the input voxel grid."""
        shapes = [self.sparse_shape(grid)]
        for k, s, p in DOWNSAMPLE_CONVS:
            shapes.append(conv_output_shape(shapes[-1], k, s, p))
        shapes.append(conv_output_shape(shapes[-1], OUT_CONV[0], OUT_CONV[1], self.last_pad))
        return tuple(shapes)

    def output_shape(self, input: SparseShape) -> SparseShape:
        """The output of the backbone for ``input``; ``ValueError`` naming the key when the grid does not fit."""
        grid = tuple(input.grid)
        shapes = self.stage_grids(grid)
        out = shapes[-1]
        if min(min(s) for s in shapes) < 1:
            raise ValueError(
                f"model.backbone_3d.spconv_resnet: the data grid {grid} is too small (stage grids {shapes}); "
                f"it needs about {11 - self.extra_z} or more voxels along z (not a pillar grid)"
            )
        if out[1:] != (-(-grid[1] // 8), -(-grid[2] // 8)):
            raise ValueError(f"model.backbone_3d.spconv_resnet: output grid {out} is not the grid / 8")
        return SparseShape(self.out_channels, out, input.stride * STAGE_STRIDES[-1])
