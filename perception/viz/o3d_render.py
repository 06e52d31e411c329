"""Headless PNG renders of a :class:`~perception.viz.scene.Scene` with open3d's off-screen renderer.

``open3d.visualization.rendering.OffscreenRenderer`` (Filament) needs a Vulkan driver. On a machine without a GPU
the Debian packages ``libvulkan1`` and ``mesa-vulkan-drivers`` provide one (llvmpipe, a CPU rasteriser); importing
open3d needs ``libusb-1.0-0``. No X server, EGL or OSMesa is needed for this renderer. When Vulkan is missing,
Filament does not raise: it **aborts the process** (``utils::PostconditionPanic``, SIGABRT). So before the first
in-process render, :func:`offscreen_status` renders a tiny picture in a child process; if that fails, every call
of :func:`render_scene` raises :class:`OffscreenUnavailableError` with the reason and the packages to install,
and :func:`perception.viz.pictures.write_sample_pictures` falls back to the matplotlib pictures. Set the
environment variable ``PERCEPTION_OFFSCREEN=off`` to skip open3d rendering altogether.

Colours are exact: the scene's RGB values appear unchanged in the picture (unlit shaders, post-processing --
tone mapping, anti-aliasing, dithering -- switched off), so tests and users can find boxes by colour.
"""

from __future__ import annotations

import atexit
import gc
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .camera import ViewCamera
from .scene import BoxSet, Scene

logger = logging.getLogger(__name__)

#: Debian packages the off-screen renderer needs (``apt-get install -y ...``).
REQUIRED_DEBIAN_PACKAGES = ("libusb-1.0-0", "libvulkan1", "mesa-vulkan-drivers")
PROBE_TIMEOUT_S = 180.0
_PROBE_OK = "PERCEPTION_OFFSCREEN_OK"
# Renders a red 5-pixel point in the middle of a 32x32 black picture and checks the pixel.
_PROBE_CODE = f"""
import numpy as np
import open3d as o3d
from open3d.visualization import rendering
r = rendering.OffscreenRenderer(32, 32)
r.scene.set_background([0.0, 0.0, 0.0, 1.0])
r.scene.view.set_post_processing(False)
pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.zeros((1, 3))))
pc.colors = o3d.utility.Vector3dVector(np.array([[1.0, 0.0, 0.0]]))
m = rendering.MaterialRecord()
m.shader = "defaultUnlit"
m.point_size = 5.0
r.scene.add_geometry("p", pc, m)
r.setup_camera(60.0, [0.0, 0.0, 0.0], [0.0, 0.0, 5.0], [0.0, 1.0, 0.0], 0.1, 100.0)
img = np.asarray(r.render_to_image())
assert img.shape == (32, 32, 3), img.shape
assert tuple(img[15:18, 15:18].reshape(-1, 3).max(axis=0)) == (255, 0, 0), img[15:18, 15:18]
print("{_PROBE_OK}", flush=True)
"""


class OffscreenUnavailableError(RuntimeError):
    """open3d's off-screen renderer cannot run on this machine; the message says why and what to install."""


@dataclass(frozen=True)
class OffscreenStatus:
    """Result of the child-process probe: ``available`` and, when not, ``reason`` (empty when available)."""

    available: bool
    reason: str = ""


_status: OffscreenStatus | None = None
# One renderer at a time: with two alive, Filament aborts the process at exit (a material still in use).
_renderer_cache: dict[str, Any] = {}


def _hint() -> str:
    return (
        "open3d off-screen rendering needs the Debian packages "
        f"{' '.join(REQUIRED_DEBIAN_PACKAGES)} (apt-get install -y {' '.join(REQUIRED_DEBIAN_PACKAGES)})"
    )


def probe_offscreen(
    timeout: float = PROBE_TIMEOUT_S, env: dict[str, str] | None = None, python: str | None = None
) -> OffscreenStatus:
    """Try a 32x32 open3d render in a child process (a failing renderer aborts its process, not ours).

    Args:
        timeout: seconds before the child is killed and rendering counts as unavailable.
        env: the child's environment (default: this process's).
        python: interpreter to run (default: ``sys.executable``).
    """
    if os.environ.get("PERCEPTION_OFFSCREEN", "").lower() in ("off", "0", "no", "false"):
        return OffscreenStatus(False, "open3d rendering disabled by PERCEPTION_OFFSCREEN=off")
    try:
        proc = subprocess.run(
            [python or sys.executable, "-c", _PROBE_CODE],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return OffscreenStatus(False, f"the open3d render probe did not finish in {timeout:.0f} s; {_hint()}")
    except OSError as e:
        return OffscreenStatus(False, f"could not start the open3d render probe: {e}")
    if proc.returncode == 0 and _PROBE_OK in proc.stdout:
        return OffscreenStatus(True)
    how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
    lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
    starts = [i for i, ln in enumerate(lines) if ln.startswith("Traceback") or "terminate called" in ln]
    lines = lines[starts[-1] :] if starts else lines
    detail = " | ".join(lines[-4:]) if lines else "no output"
    return OffscreenStatus(False, f"open3d render probe failed ({how}): {detail}; {_hint()}")


def offscreen_status(refresh: bool = False) -> OffscreenStatus:
    """The (cached) :func:`probe_offscreen` result of this process; ``refresh`` probes again."""
    global _status
    if _status is None or refresh:
        _status = probe_offscreen()
        if not _status.available:
            logger.warning("open3d off-screen rendering is not available: %s", _status.reason)
    return _status


@atexit.register
def release_renderer() -> None:
    """Drop the cached off-screen renderer (its scene emptied first); also runs at interpreter exit."""
    r = _renderer_cache.pop("renderer", None)
    _renderer_cache.pop("size", None)
    if r is not None:
        r.scene.clear_geometry()
        del r
        gc.collect()


def _renderer(width: int, height: int) -> Any:
    status = offscreen_status()
    if not status.available:
        raise OffscreenUnavailableError(status.reason)
    if _renderer_cache.get("size") != (width, height):
        from open3d.visualization import rendering

        release_renderer()
        _renderer_cache["renderer"] = rendering.OffscreenRenderer(width, height)
        _renderer_cache["size"] = (width, height)
    return _renderer_cache["renderer"]


def _line_set(boxes: BoxSet) -> Any:
    import open3d as o3d

    verts, lines, colours = boxes.line_arrays()
    ls = o3d.geometry.LineSet(
        o3d.utility.Vector3dVector(verts), o3d.utility.Vector2iVector(lines.astype(np.int32))
    )
    ls.colors = o3d.utility.Vector3dVector(colours)
    return ls


def _clip_planes(scene: Scene, camera: ViewCamera) -> tuple[float, float]:
    """Near / far distances (m) that hold every point and box vertex in front of the camera."""
    xyz = np.concatenate(
        [scene.points.reshape(-1, 3), scene.gt.vertices.reshape(-1, 3), scene.pred.vertices.reshape(-1, 3)]
    )
    _, depth = camera.project(xyz)
    far = float(depth.max()) * 1.1 + 1.0 if len(depth) else 100.0
    return 0.05, max(far, 1.0)


def render_scene(
    scene: Scene,
    camera: ViewCamera,
    *,
    point_size: float = 2.0,
    line_width: float = 2.0,
    background: Sequence[float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """Render ``scene`` as seen by ``camera``.

    Args:
        scene: points and box wireframes (LiDAR frame).
        camera: view; its ``width`` x ``height`` is the picture size.
        point_size: point squares' side in pixels.
        line_width: box line width in pixels.
        background: RGB in ``[0, 1]``.

    Returns:
        uint8 ``(height, width, 3)`` RGB picture. An empty scene gives a picture of the background colour.

    Raises:
        OffscreenUnavailableError: the renderer cannot run here (see the module doc).
        ValueError: a non-positive ``point_size`` / ``line_width`` or a background outside ``[0, 1]``.
    """
    bg = [float(v) for v in background]
    if len(bg) != 3 or not all(0.0 <= v <= 1.0 for v in bg):
        raise ValueError(f"background must be 3 values in [0, 1], got {background}")
    if not (point_size > 0 and line_width > 0):
        raise ValueError(f"point_size and line_width must be > 0, got {point_size}, {line_width}")
    r = _renderer(camera.width, camera.height)  # first: where open3d cannot even import, this says why
    import open3d as o3d
    from open3d.visualization import rendering

    r.scene.clear_geometry()
    r.scene.set_background([*bg, 1.0])
    r.scene.view.set_post_processing(False)
    if len(scene.points):
        pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(scene.points))
        pc.colors = o3d.utility.Vector3dVector(scene.point_colours)
        mat = rendering.MaterialRecord()
        mat.shader = "defaultUnlit"
        mat.point_size = float(point_size)
        r.scene.add_geometry("points", pc, mat)
    for boxes in (scene.gt, scene.pred):  # predictions added last
        if len(boxes):
            mat = rendering.MaterialRecord()
            mat.shader = "unlitLine"
            mat.line_width = float(line_width)
            r.scene.add_geometry(f"boxes_{boxes.kind}", _line_set(boxes), mat)
    r.setup_camera(camera.intrinsics, camera.lidar_to_camera, camera.width, camera.height)
    # setup_camera derives the clip planes from the scene's bounding box, which is degenerate for one point or an
    # empty scene: set them from the scene's extent along the viewing direction instead.
    near, far = _clip_planes(scene, camera)
    r.scene.camera.set_projection(camera.intrinsics, near, far, float(camera.width), float(camera.height))
    try:
        image = np.asarray(r.render_to_image())
    finally:
        # Nothing may stay in the cached renderer's scene: Filament aborts the process at exit when it destroys
        # a material still used by a geometry.
        r.scene.clear_geometry()
    return np.ascontiguousarray(image[..., :3], dtype=np.uint8)


def save_png(image: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write a uint8 ``(H, W, 3)`` RGB picture as PNG (creating folders)."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3), got {arr.dtype} {arr.shape}")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(out)
    return out
