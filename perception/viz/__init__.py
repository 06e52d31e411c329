"""Pictures of scans, boxes and camera images (matplotlib here; open3d renders come with the viz issue)."""
