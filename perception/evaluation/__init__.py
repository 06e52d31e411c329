"""Official detection metrics.

Submodules are imported explicitly (each pulls its own dependencies):

* :mod:`perception.evaluation.kitti` -- KITTI object detection AP (image / BEV / 3D, R11 and R40) with an exact
  rotated IoU, and KITTI label / result file I/O (:mod:`perception.formats.kitti_labels`).
* :mod:`perception.evaluation.nuscenes` -- detections to the devkit's results JSON (LiDAR -> ego -> global) and
  the official ``NuScenesEval`` (mAP, NDS, TP errors, the devkit's summary files).
"""
