"""3D backbones on sparse voxels: spconv sparse ResNet and DSVT (re-exported lazily)."""

from perception._lazy import lazy_exports

_EXPORTS = {
    "VoxelResBackbone8x": "spconv_resnet",
    "DSVTBackbone": "dsvt",
    "build_dsvt": "dsvt",
    "DSVTConfig": "dsvt_config",
    "DSVTStageConfig": "dsvt_config",
    "DSVTPreset": "dsvt_presets",
    "dsvt_pillar_nuscenes": "dsvt_presets",
    "dsvt_voxel_waymo": "dsvt_presets",
    "dsvt_config_from_authors": "dsvt_presets",
    "convert_authors_state_dict": "dsvt_convert",
    "load_authors_checkpoint": "dsvt_convert",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
