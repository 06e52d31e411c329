"""Detection heads on BEV maps: CenterPoint and TransFusion-L, with their box coder (re-exported lazily).

Each head's config class (``centerpoint_config``, ``transfusion_config``; torch-free) is the YAML schema of
``model.head.<name>`` and what the head reads; the heads are built from it, the class names, the data's
:class:`~perception.grid.VoxelGrid` and the input map's :class:`~perception.shapes.MapShape`.
"""

from perception._lazy import lazy_exports

_EXPORTS = {
    "CenterBoxCoder": "box_coder",
    "EncodedBoxes": "box_coder",
    "CODE_NAMES": "config_common",
    "CenterPointHead": "centerpoint",
    "CenterPointOutput": "centerpoint",
    "CenterPointTaskOutput": "centerpoint",
    "SeparateHead": "centerpoint",
    "NUSCENES_CLASSES": "centerpoint",
    "NUSCENES_TASKS": "centerpoint",
    "CenterPointConfig": "centerpoint_config",
    "CenterPointDecodeConfig": "centerpoint_config",
    "NMSConfig": "centerpoint_config",
    "RotatedNMS": "centerpoint_config",
    "CircleNMS": "centerpoint_config",
    "NUSCENES_CIRCLE_NMS_MIN_RADIUS": "centerpoint_config",
    "build_center_targets": "centerpoint_targets",
    "gaussian_radius": "centerpoint_targets",
    "draw_gaussians": "centerpoint_targets",
    "TransFusionHead": "transfusion",
    "TransFusionOutput": "transfusion",
    "TransFusionConfig": "transfusion_config",
    "TransFusionLossConfig": "transfusion_config",
    "TransFusionDecodeConfig": "transfusion_config",
    "MatchCosts": "transfusion_config",
    "select_queries": "transfusion_layers",
    "hungarian_match": "transfusion_matching",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
