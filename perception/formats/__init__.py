"""File formats and records shared by the data side and the evaluation side (the bottom layer).

* :mod:`.points` -- raw LiDAR scans (``.bin`` / ``.pcd.bin``) with size checks and non-finite points dropped.
* :mod:`.info_pickle` -- the safe reader of the project's info / part pickles (builtins and numpy arrays only).
* :mod:`.nuscenes_names` -- ``CAMERA_ORDER``, ``NUSCENES_CLASSES``, ``NUSCENES_POINT_CHANNELS``.
* :mod:`.nuscenes_infos` -- the nuScenes info record (:class:`~.nuscenes_infos.NuScenesInfo`), built from the
  devkit; info file names, format and reader.
* :mod:`.nuscenes_points` -- a keyframe plus its sweeps merged into the keyframe's LiDAR frame.
* :mod:`.nuscenes_boxes` -- nuScenes devkit boxes (centre, ``wlh``, quaternion) <-> :class:`Boxes3D`.
* :mod:`.kitti_labels` -- KITTI label / result files (:class:`~.kitti_labels.KittiObjects`) and the official
  difficulty levels (thresholds and :func:`~.kitti_labels.difficulty`).

Datasets (:mod:`perception.datasets`) and evaluation (:mod:`perception.evaluation`) both import these; this
package imports only numpy, torch, the nuScenes devkit, pyquaternion and the base modules (``structures``,
``grid``, ``io_atomic``, ``_validate``), never datasets or evaluation (``tests/test_import_layers.py`` checks it).
"""
