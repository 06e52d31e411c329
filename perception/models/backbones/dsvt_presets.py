"""The DSVT authors' backbone configurations, each with the voxel grid and input channels it was made for.

A :class:`~.dsvt_config.DSVTConfig` holds the backbone's own settings only; to build one, a caller also needs the
input (:class:`~perception.shapes.SparseShape`: channels and grid). The presets therefore return a
:class:`DSVTPreset` -- the config, the :class:`~perception.grid.VoxelGrid` (the authors' point-cloud range and
voxel size) and the VFE's output channels -- checked on creation (``config.output_shape(input_shape)``):

.. code-block:: python

    preset = dsvt_pillar_nuscenes()
    model = build_dsvt(preset.config, input_shape=preset.input_shape)

Torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from perception.grid import VoxelGrid
from perception.shapes import SparseShape

from .dsvt_config import DSVTConfig, DSVTStageConfig, Int3

__all__ = ["DSVTPreset", "dsvt_config_from_authors", "dsvt_pillar_nuscenes", "dsvt_voxel_waymo"]


@dataclass(frozen=True)
class DSVTPreset:
    """A DSVT config with the input it was made for.

    Attributes:
        config: the backbone settings.
        grid: the input voxel grid (range in metres, voxel size, shape ``(nz, ny, nx)``).
        in_channels: channels of the input voxel features (the VFE output).

    Raises:
        ValueError: the config does not fit the input (:meth:`DSVTConfig.output_shape`).
    """

    config: DSVTConfig
    grid: VoxelGrid
    in_channels: int

    def __post_init__(self) -> None:
        self.config.output_shape(self.input_shape)

    @property
    def input_shape(self) -> SparseShape:
        """The backbone's input: ``in_channels`` on ``grid.shape``, stride 1."""
        return SparseShape(self.in_channels, self.grid.shape, 1)

    @property
    def output_shape(self) -> SparseShape:
        """The backbone's output for :attr:`input_shape`."""
        return self.config.output_shape(self.input_shape)


def dsvt_pillar_nuscenes(**overrides: Any) -> DSVTPreset:
    """The authors' nuScenes DSVT-pillar backbone (``dsvt_plain_1f_onestage_nusences.yaml``).

    +-54 m, 0.3 m pillars (z: -5..3 m in one 8 m layer), 360 x 360 grid, window 30 x 30 and 30 x 30 shifted by
    (15, 15), set size 90, 4 blocks, d_model 128, 8 heads, FFN 256, BEV 360 x 360, 128 input channels.
    ``overrides`` replace fields of the config (e.g. ``authors_pos_embed=True``).
    """
    stage = DSVTStageConfig(
        window_shape=(1, 30, 30),
        hybrid_factor=(1, 1, 1),
        shift=(0, 15, 15),
        set_size=90,
        num_blocks=4,
        d_model=128,
        num_heads=8,
        dim_feedforward=256,
    )
    fields: dict[str, Any] = dict(sparse_shape=(1, 360, 360), stages=(stage,), bev_shape=(360, 360))
    fields.update(overrides)
    grid = VoxelGrid((-54.0, -54.0, -5.0, 54.0, 54.0, 3.0), (0.3, 0.3, 8.0))
    return DSVTPreset(DSVTConfig(**fields), grid, 128)


def dsvt_voxel_waymo(**overrides: Any) -> DSVTPreset:
    """The authors' Waymo DSVT-voxel backbone (``dsvt_3D_1f_onestage.yaml``).

    0.32 x 0.32 x 0.1875 m voxels on a 468 x 468 x 32 grid (+-74.88 m, z -2..4 m), 4 stages of one block with
    windows 12 x 12 x {32, 8, 2, 1} and a 24 x 24 shifted (6, 6) configuration, set size 48, attention pooling
    with z strides 4, 4, 2, d_model 192, 8 heads, FFN 384, BEV 468 x 468, 192 input channels.
    """
    zs = (32, 8, 2, 1)
    strides: tuple[Int3 | None, ...] = ((4, 1, 1), (4, 1, 1), (2, 1, 1), None)
    stages = tuple(
        DSVTStageConfig(
            window_shape=(wz, 12, 12),
            hybrid_factor=(1, 2, 2),
            shift=(0, 6, 6),
            set_size=48,
            num_blocks=1,
            d_model=192,
            num_heads=8,
            dim_feedforward=384,
            downsample_stride=st,
        )
        for wz, st in zip(zs, strides, strict=True)
    )
    fields: dict[str, Any] = dict(sparse_shape=(32, 468, 468), stages=stages, bev_shape=(468, 468))
    fields.update(overrides)
    grid = VoxelGrid((-74.88, -74.88, -2.0, 74.88, 74.88, 4.0), (0.32, 0.32, 0.1875))
    return DSVTPreset(DSVTConfig(**fields), grid, 192)


def dsvt_config_from_authors(
    backbone_cfg: Mapping[str, Any],
    *,
    point_cloud_range: Sequence[float],
    voxel_size: Sequence[float],
    **overrides: Any,
) -> DSVTPreset:
    """Our config from the authors' ``MODEL.BACKBONE_3D`` mapping (their YAML, ``(x, y, z)`` order).

    Reads ``INPUT_LAYER`` (sparse_shape, downsample_stride, d_model, set_info, window_shape, hybrid_factor,
    shifts_list, normalize_pos), ``nhead``, ``dim_feedforward``, ``dropout``, ``activation``, ``output_shape`` and
    ``reduction_type`` (only ``"attention"`` is supported). The config has ``authors_pos_embed=True`` and
    ``pool_mask_empty=False`` (their behaviour) unless ``overrides`` say otherwise. Their ``sparse_shape`` is kept
    (and so checked against the grid of ``point_cloud_range`` / ``voxel_size``); the input channels are their
    ``d_model[0]`` (their VFE feeds the first stage).

    Args:
        backbone_cfg: their ``MODEL.BACKBONE_3D`` mapping.
        point_cloud_range: metres ``(x0, y0, z0, x1, y1, z1)`` (their ``DATA_CONFIG.POINT_CLOUD_RANGE``).
        voxel_size: metres ``(vx, vy, vz)``.
        overrides: fields of :class:`DSVTConfig` to replace.

    Raises:
        ValueError: a missing key, an unsupported reduction type, or any check of :class:`DSVTConfig`.
    """

    def rev(v: Sequence[int]) -> Int3:
        if len(v) != 3:
            raise ValueError(f"expected an (x, y, z) triple, got {list(v)}")
        return (int(v[2]), int(v[1]), int(v[0]))

    try:
        inp = backbone_cfg["INPUT_LAYER"]
        reduction = backbone_cfg.get("reduction_type", "attention")
        if reduction != "attention":
            raise ValueError(f"reduction_type {reduction!r} is not supported (only 'attention')")
        n = len(inp["d_model"])
        strides = [rev(st) for st in inp["downsample_stride"]]
        if len(strides) != n - 1:
            raise ValueError(f"INPUT_LAYER.downsample_stride needs {n - 1} entries, got {len(strides)}")
        stages = []
        for s in range(n):
            shifts = inp["shifts_list"][s]
            stages.append(
                DSVTStageConfig(
                    window_shape=rev(inp["window_shape"][s]),
                    hybrid_factor=rev(inp["hybrid_factor"]),
                    base_shift=rev(shifts[0]),
                    shift=rev(shifts[1]),
                    set_size=int(inp["set_info"][s][0]),
                    num_blocks=int(inp["set_info"][s][1]),
                    d_model=int(inp["d_model"][s]),
                    num_heads=int(backbone_cfg["nhead"][s]),
                    dim_feedforward=int(backbone_cfg["dim_feedforward"][s]),
                    downsample_stride=strides[s] if s < n - 1 else None,
                )
            )
        out_shape = backbone_cfg["output_shape"]
        fields: dict[str, Any] = dict(
            sparse_shape=rev(inp["sparse_shape"]),
            stages=tuple(stages),
            bev_shape=(int(out_shape[1]), int(out_shape[0])),  # theirs is (nx, ny)
            dropout=float(backbone_cfg.get("dropout", 0.0)),
            activation=backbone_cfg.get("activation", "gelu"),
            normalize_pos=bool(inp.get("normalize_pos", False)),
            pool_mask_empty=False,
            authors_pos_embed=True,
        )
        in_channels = int(inp["d_model"][0])
    except KeyError as exc:
        raise ValueError(f"the authors' BACKBONE_3D config is missing key {exc.args[0]!r}") from None
    fields.update(overrides)
    grid = VoxelGrid(tuple(point_cloud_range), tuple(voxel_size))  # type: ignore[arg-type]
    return DSVTPreset(DSVTConfig(**fields), grid, in_channels)
