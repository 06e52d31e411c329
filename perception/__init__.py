"""perception: LiDAR 3D object detection (voxelize -> VFE -> 3D backbone -> BEV -> head).

The Python API for running a trained checkpoint on one's own point clouds (:mod:`perception.inference_api`)::

    import perception
    detector = perception.load_detector("checkpoints/demo_detector.pth", device="cpu")
    result = detector.detect(points, columns=("x", "y", "z", "intensity"))   # (N, 4) array, tensor or file
    result.boxes, result.scores, result.names

``import perception`` stays cheap: the names are resolved on first use (:mod:`perception._lazy`).
"""

from perception._lazy import lazy_exports

_EXPORTS = {
    "Detector": "inference_api.detector",
    "Result": "inference_api.detector",
    "Sweep": "inference_api.detector",
    "load_detector": "inference_api.detector",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
