"""File formats and records shared by the data side and the evaluation side (the bottom layer).

* :mod:`.kitti_labels` -- KITTI label / result files (:class:`~.kitti_labels.KittiObjects`) and the official
  difficulty thresholds.
* :mod:`.nuscenes_boxes` -- nuScenes devkit boxes (centre, ``wlh``, quaternion) <-> :class:`Boxes3D`.

Datasets (:mod:`perception.datasets`) and evaluation (:mod:`perception.evaluation`) both import these; this package
imports neither (``tests/test_import_layers.py`` checks it).
"""
