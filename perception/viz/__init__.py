"""Pictures of scans, boxes and detections.

* :mod:`.colours` -- class colours, ground truth vs prediction colours, point colour maps;
* :mod:`.scene` -- a typed scene (coloured points, box wireframes with heading markers, score threshold);
* :mod:`.camera` -- pinhole view cameras (bird's-eye, chase, look-at) that convert to a ``CameraRig``;
* :mod:`.o3d_render` -- headless open3d renders (probe, clear error when off-screen rendering is unavailable);
* :mod:`.pictures` -- one sample to PNG files, with the matplotlib fallback;
* :mod:`.bev` -- matplotlib bird's-eye-view and camera pictures;
* :mod:`.viewer` -- the interactive open3d viewer (key handling separate from the window);
* :mod:`.detections_io` -- saved nuScenes / KITTI results back in each sample's LiDAR frame.
"""
