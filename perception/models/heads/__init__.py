"""Detection heads on BEV maps: CenterPoint and TransFusion-L, with their box coder (re-exported lazily)."""

from perception._lazy import lazy_exports

_EXPORTS = {
    "CenterBoxCoder": "box_coder",
    "EncodedBoxes": "box_coder",
    "CODE_NAMES": "box_coder",
    "CenterPointHead": "centerpoint",
    "CenterPointOutput": "centerpoint",
    "CenterPointTaskOutput": "centerpoint",
    "SeparateHead": "centerpoint",
    "NUSCENES_CLASSES": "centerpoint",
    "NUSCENES_TASKS": "centerpoint",
    "CenterPointDecodeConfig": "centerpoint_decode",
    "RotatedNMS": "centerpoint_decode",
    "CircleNMS": "centerpoint_decode",
    "build_center_targets": "centerpoint_targets",
    "gaussian_radius": "centerpoint_targets",
    "draw_gaussians": "centerpoint_targets",
    "TransFusionHead": "transfusion",
    "TransFusionOutput": "transfusion",
    "TransFusionLossConfig": "transfusion",
    "TransFusionDecodeConfig": "transfusion",
    "MatchCosts": "transfusion_matching",
    "NUSCENES_CIRCLE_NMS_MIN_RADIUS": "centerpoint_decode",
    "select_queries": "transfusion_layers",
    "hungarian_match": "transfusion_matching",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
