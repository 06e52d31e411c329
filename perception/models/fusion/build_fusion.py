"""Construction of :class:`~.sparsefusion.SparseFusionDetector` from ``model.fusion`` and the built LiDAR stages.

Every width and shape is handed on from the stage that defines it: the image encoder's
:class:`~perception.models.image.shapes.ImageFeatureShape` to the geometric transfer, the camera branch and the
semantic transfer; the TransFusion head's box coder (grid, feature stride) and hidden width to the view
transformer, the semantic transfer and the fusion stage; the camera branch's width to the view transformer.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..detector import Voxelization
from ..heads.transfusion import TransFusionHead
from ..image.encoder import ImageEncoder
from .camera_branch import CameraBranch
from .depth_transfer import GeometricTransfer
from .fusion_config import SparseFusionConfig
from .fusion_stage import FusionStage
from .semantic_transfer import SemanticTransfer
from .sparsefusion import SparseFusionDetector
from .view_transformer import ViewTransformer

__all__ = ["build_sparsefusion"]


def build_sparsefusion(
    config: SparseFusionConfig,
    *,
    class_names: Sequence[str],
    voxelization: Voxelization,
    vfe: object,
    backbone_3d: object,
    to_bev: object,
    bev_backbone: object,
    head: object,
) -> SparseFusionDetector:
    """SparseFusion on the given LiDAR stages (``head`` must be a :class:`TransFusionHead`)."""
    if not isinstance(head, TransFusionHead):
        raise TypeError(f"model.fusion needs a TransFusion head, got {type(head).__name__}")
    image_encoder = ImageEncoder(config.image_backbone, config.fpn)
    image_shape = image_encoder.output_shape()
    coder, hidden = head.coder, head.config.hidden_channels
    with_velocity, num_classes = head.with_velocity, head.num_classes
    camera = CameraBranch(
        config.camera,
        class_names=tuple(class_names),
        image_shape=image_shape,
        grid=coder.grid,
        with_velocity=with_velocity,
    )
    view = ViewTransformer(
        config.view_transformer,
        hidden=config.camera.hidden_channels,
        num_classes=num_classes,
        coder=coder,
        with_velocity=with_velocity,
    )
    geometric = (
        GeometricTransfer(config.geometric_transfer, image_shape)
        if config.geometric_transfer is not None
        else None
    )
    semantic = (
        SemanticTransfer(
            config.semantic_transfer,
            bev_channels=hidden,
            image_shape=image_shape,
            grid=coder.grid,
            feature_stride=coder.feature_stride,
        )
        if config.semantic_transfer is not None and config.mode == "fusion"
        else None
    )
    fusion = (
        FusionStage(
            config.fusion,
            lidar_channels=hidden,
            camera_channels=config.camera.hidden_channels,
            num_classes=num_classes,
            coder=coder,
            with_velocity=with_velocity,
        )
        if config.mode == "fusion"
        else None
    )
    return SparseFusionDetector(
        config=config,
        voxelization=voxelization,
        vfe=vfe,  # type: ignore[arg-type]
        backbone_3d=backbone_3d,  # type: ignore[arg-type]
        to_bev=to_bev,  # type: ignore[arg-type]
        bev_backbone=bev_backbone,  # type: ignore[arg-type]
        head=head,
        image_encoder=image_encoder,
        geometric_transfer=geometric,
        camera_branch=camera,
        view_transformer=view,
        semantic_transfer=semantic,
        fusion=fusion,
    )
