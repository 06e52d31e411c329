"""Build a :class:`~perception.models.detector.VoxelDetector` from the typed ``model`` and ``data`` config sections.

The config (:class:`~perception.models.model_config.ModelConfig`) names each stage's class by a key; the small
tables below map those keys to classes. No registry: adding a class means adding one line to a table and one
section to the config schema. The shapes are cross-checked first (:meth:`ModelConfig.plan`), then every stage is
built with keyword arguments, and :class:`VoxelDetector` checks the built stages once more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from .backbones.dsvt import build_dsvt
from .bev import HeightCompression, PillarScatter
from .bev_backbone import BaseBEVBackbone
from .detector import VoxelDetector, Voxelization
from .heads.centerpoint import CenterPointHead
from .heads.centerpoint_decode import CenterPointDecodeConfig, CircleNMS, RotatedNMS
from .heads.transfusion import TransFusionDecodeConfig, TransFusionHead, TransFusionLossConfig
from .heads.transfusion_matching import MatchCosts
from .model_config import ModelConfig, ModelPlan
from .vfe import DynamicPillarVFE, DynamicVoxelVFE, MeanVFE

if TYPE_CHECKING:
    from perception.config_schema import DataConfig

VFE_CLASSES: dict[str, type[nn.Module]] = {
    "mean": MeanVFE,
    "dynamic_pillar": DynamicPillarVFE,
    "dynamic_voxel": DynamicVoxelVFE,
}


def _spconv_resnet(**kwargs: Any) -> nn.Module:
    """:class:`~.backbones.spconv_resnet.VoxelResBackbone8x`, imported on use: importing spconv takes 3-15 s,
    which every DSVT-only process (training chunks, tests, the demo) would otherwise pay."""
    from .backbones.spconv_resnet import VoxelResBackbone8x

    return VoxelResBackbone8x(**kwargs)


BACKBONE_3D_CLASSES: dict[str, Any] = {"spconv_resnet": _spconv_resnet, "dsvt": build_dsvt}
BEV_CLASSES: dict[str, type[HeightCompression]] = {
    "height_compression": HeightCompression,
    "pillar_scatter": PillarScatter,
}
BEV_BACKBONE_CLASS = BaseBEVBackbone
HEAD_CLASSES: dict[str, type[nn.Module]] = {"centerpoint": CenterPointHead, "transfusion": TransFusionHead}


def build_detector(model_cfg: ModelConfig, data_cfg: DataConfig) -> VoxelDetector:
    """Build the detector described by ``model_cfg`` on the grid and classes of ``data_cfg``.

    Raises:
        ValueError: the sections disagree (grid, channels, strides, BEV shape, class names); the message names
            the keys.
    """
    if not isinstance(model_cfg, ModelConfig):
        raise TypeError(f"model_cfg must be a ModelConfig, got {type(model_cfg).__name__}")
    plan = model_cfg.plan(data_cfg)
    pc_range = tuple(float(v) for v in data_cfg.point_cloud_range)
    voxel_size = tuple(float(v) for v in data_cfg.voxel_size)
    vox = model_cfg.voxelization
    voxelization = Voxelization(pc_range, voxel_size, **vox.model_dump())

    vfe_cfg = model_cfg.vfe
    vfe_cls = VFE_CLASSES[vfe_cfg.name]
    vfe: nn.Module
    if vfe_cls is MeanVFE:
        vfe = MeanVFE(num_point_features=model_cfg.num_point_features)
    else:
        vfe = vfe_cls(
            num_point_features=model_cfg.num_point_features,
            voxel_size=voxel_size,
            point_cloud_range=pc_range,
            **vfe_cfg.settings.model_dump(),
        )

    bb_cfg = model_cfg.backbone_3d
    if bb_cfg.name == "dsvt":
        assert plan.dsvt is not None
        backbone = BACKBONE_3D_CLASSES["dsvt"](plan.dsvt)
    else:
        backbone = BACKBONE_3D_CLASSES[bb_cfg.name](
            in_channels=plan.vfe_channels, grid_shape=plan.grid, **bb_cfg.settings.model_dump()
        )

    to_bev = BEV_CLASSES[model_cfg.bev.name](
        in_channels=plan.backbone_channels, grid_shape=plan.backbone_grid
    )
    bev_backbone = BEV_BACKBONE_CLASS(in_channels=plan.bev_channels, **model_cfg.bev_backbone.model_dump())
    head = _build_head(model_cfg, data_cfg, plan, pc_range, voxel_size)
    return VoxelDetector(
        voxelization=voxelization,
        vfe=vfe,
        backbone_3d=backbone,
        to_bev=to_bev,
        bev_backbone=bev_backbone,
        head=head,
    )


def _build_head(
    model_cfg: ModelConfig,
    data_cfg: DataConfig,
    plan: ModelPlan,
    pc_range: tuple[float, ...],
    voxel_size: tuple[float, ...],
) -> nn.Module:
    name, cfg = model_cfg.head.name, model_cfg.head.settings
    common = dict(
        in_channels=plan.bev_backbone_channels,
        point_cloud_range=pc_range,
        voxel_size=voxel_size,
        feature_stride=plan.feature_stride,
    )
    names = tuple(data_cfg.class_names)
    if name == "centerpoint":
        kwargs = cfg.model_dump(exclude={"feature_stride", "decode"})
        return HEAD_CLASSES[name](
            class_names=names, decode_config=_centerpoint_decode(cfg.decode), **common, **kwargs
        )
    kwargs = cfg.model_dump(exclude={"feature_stride", "loss", "decode", "exempt_classes"})
    loss = cfg.loss.model_dump(exclude={"match"})
    dec = cfg.decode
    thresholds = None
    if dec.nms_iou_thresholds is not None:
        thresholds = tuple(dec.nms_iou_thresholds.get(c) for c in names)
    return HEAD_CLASSES[name](
        num_classes=len(names),
        exempt_classes=tuple(names.index(c) for c in cfg.exempt_classes),
        loss_config=TransFusionLossConfig(**loss, match=MatchCosts(**cfg.loss.match.model_dump())),
        decode_config=TransFusionDecodeConfig(
            score_threshold=dec.score_threshold,
            post_center_range=dec.post_center_range,
            iou_rectifier=dec.iou_rectifier,
            nms_iou_thresholds=thresholds,
        ),
        **common,
        **kwargs,
    )


def _centerpoint_decode(dec: Any) -> CenterPointDecodeConfig:
    nms: RotatedNMS | CircleNMS | None = None
    if dec.nms is not None:
        s = dec.nms.settings
        nms = RotatedNMS(**s.model_dump()) if dec.nms.name == "rotated" else CircleNMS(**s.model_dump())
    return CenterPointDecodeConfig(
        top_k=dec.top_k, score_threshold=dec.score_threshold, post_center_range=dec.post_center_range, nms=nms
    )


__all__ = [
    "BACKBONE_3D_CLASSES",
    "BEV_BACKBONE_CLASS",
    "BEV_CLASSES",
    "HEAD_CLASSES",
    "VFE_CLASSES",
    "build_detector",
]
