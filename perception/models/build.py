"""Build a :class:`~perception.models.detector.VoxelDetector` from the typed ``model`` and ``data`` config sections.

The config (:class:`~perception.models.model_config.ModelConfig`) names each stage's class by a key; the small
tables below map those keys to classes. No registry: adding a class means adding one line to a table and one
section to the config schema. The shapes are planned first (:meth:`ModelConfig.plan`), then every stage is built
from its own config and the output shape of the stage before it (the grid: ``data.grid``), and
:class:`VoxelDetector` checks that the built stages' declared shapes fit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from perception.grid import VoxelGrid
from perception.shapes import SparseShape

from .backbones.dsvt import build_dsvt
from .bev import HeightCompression, PillarScatter
from .bev_backbone import BaseBEVBackbone
from .detector import VoxelDetector, Voxelization
from .heads.centerpoint import CenterPointHead
from .heads.transfusion import TransFusionHead
from .model_config import ModelConfig
from .vfe import DynamicPillarVFE, DynamicVoxelVFE, MeanVFE

if TYPE_CHECKING:
    from perception.config_schema import DataConfig

VFE_CLASSES: dict[str, Any] = {
    "mean": MeanVFE,
    "dynamic_pillar": DynamicPillarVFE,
    "dynamic_voxel": DynamicVoxelVFE,
}


def _spconv_resnet(config: Any, *, input_shape: SparseShape) -> nn.Module:
    """:class:`~.backbones.spconv_resnet.VoxelResBackbone8x`, imported on use: importing spconv takes 3-15 s,
    which every DSVT-only process (training chunks, tests, the demo) would otherwise pay."""
    from .backbones.spconv_resnet import VoxelResBackbone8x

    return VoxelResBackbone8x(config, input_shape=input_shape)


BACKBONE_3D_CLASSES: dict[str, Any] = {"spconv_resnet": _spconv_resnet, "dsvt": build_dsvt}
BEV_CLASSES: dict[str, type[HeightCompression]] = {
    "height_compression": HeightCompression,
    "pillar_scatter": PillarScatter,
}
BEV_BACKBONE_CLASS = BaseBEVBackbone
HEAD_CLASSES: dict[str, Any] = {"centerpoint": CenterPointHead, "transfusion": TransFusionHead}


def build_detector(model_cfg: ModelConfig, data: DataConfig) -> VoxelDetector:
    """Build the detector described by ``model_cfg`` on the voxel grid and classes of ``data``
    (``data.grid``: the one :class:`~perception.grid.VoxelGrid`, and ``data.class_names``).

    Each stage is built from its config and the output shape of the stage before it (the plan of
    :meth:`ModelConfig.plan`, which the built stages then report again); the detector checks the fit once more.

    Raises:
        ValueError: the sections disagree (grid, channels, strides, BEV shape, class names); the message names
            the keys.
    """
    if not isinstance(model_cfg, ModelConfig):
        raise TypeError(f"model_cfg must be a ModelConfig, got {type(model_cfg).__name__}")
    grid = data.grid
    if not isinstance(grid, VoxelGrid):
        raise TypeError(f"data.grid must be a perception.grid.VoxelGrid, got {type(grid).__name__}")
    class_names = tuple(data.class_names)
    plan = model_cfg.plan(data)
    voxelization = Voxelization(model_cfg.voxelization, grid=grid)
    vfe_cfg = model_cfg.vfe
    c_in = model_cfg.num_point_features
    if vfe_cfg.name == "mean":
        vfe = MeanVFE(num_point_features=c_in, grid=grid)
    else:
        vfe = VFE_CLASSES[vfe_cfg.name](vfe_cfg.settings, num_point_features=c_in, grid=grid)
    bb = model_cfg.backbone_3d
    backbone = BACKBONE_3D_CLASSES[bb.name](bb.settings, input_shape=plan.vfe)
    to_bev = BEV_CLASSES[model_cfg.bev.name](input_shape=plan.backbone_3d)
    bev_backbone = BEV_BACKBONE_CLASS(model_cfg.bev_backbone, input_shape=plan.bev)
    head_cfg = model_cfg.head
    head = HEAD_CLASSES[head_cfg.name](
        head_cfg.settings, class_names=class_names, grid=grid, input_shape=plan.head_input
    )
    stages = dict(
        voxelization=voxelization,
        vfe=vfe,
        backbone_3d=backbone,
        to_bev=to_bev,
        bev_backbone=bev_backbone,
        head=head,
    )
    if model_cfg.fusion is not None:
        from .fusion.build_fusion import build_sparsefusion  # noqa: PLC0415 (the camera stack only when asked)

        return build_sparsefusion(model_cfg.fusion, class_names=class_names, **stages)
    return VoxelDetector(**stages)


__all__ = [
    "BACKBONE_3D_CLASSES",
    "BEV_BACKBONE_CLASS",
    "BEV_CLASSES",
    "HEAD_CLASSES",
    "VFE_CLASSES",
    "build_detector",
]
