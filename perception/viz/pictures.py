"""Pictures of one sample on disk: an open3d render when the machine can render off-screen, else the matplotlib
bird's-eye view and camera views -- never a crash for want of a renderer.

Files written into ``out_dir`` (``stem`` prefixes every name):
    * ``<stem>render.png``: open3d render (:mod:`perception.viz.o3d_render`) from the ``view`` camera;
    * ``<stem>bev.png``: matplotlib top view (:func:`perception.viz.bev.draw_bev_scene`);
    * ``<stem>cameras.png``: every camera image with projected boxes, when the sample has images.

The BEV and camera pictures are written when ``matplotlib_too`` is set or when the render is unavailable; in the
second case a WARNING on logger ``perception.viz.pictures`` names the reason and the Debian packages to install,
and :attr:`PictureSet.fallback_reason` holds it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from perception.structures import Detections, Sample

from .camera import ViewCamera, bev_camera, chase_camera
from .o3d_render import OffscreenUnavailableError, render_scene, save_png
from .scene import Scene, scene_from_sample

logger = logging.getLogger(__name__)

View = Literal["chase", "bev"]


@dataclass(frozen=True)
class PictureSet:
    """Paths written by :func:`write_sample_pictures` (None: not written) and why the render fell back."""

    render: Path | None
    bev: Path | None
    cameras: Path | None
    fallback_reason: str | None = None

    @property
    def paths(self) -> list[Path]:
        return [p for p in (self.render, self.bev, self.cameras) if p is not None]


def view_camera(view: View | ViewCamera, point_range: Sequence[float], size: tuple[int, int]) -> ViewCamera:
    """``"chase"`` / ``"bev"`` -> the camera of :mod:`perception.viz.camera` at ``size`` ``(width, height)``;
    a :class:`ViewCamera` is returned as is."""
    if isinstance(view, ViewCamera):
        return view
    if view == "chase":
        return chase_camera(point_range, *size)
    if view == "bev":
        return bev_camera(point_range, *size)
    raise ValueError(f"view must be 'chase', 'bev' or a ViewCamera, got {view!r}")


def write_matplotlib_pictures(
    scene: Scene, sample: Sample, out_dir: Path, point_range: Sequence[float], stem: str = ""
) -> tuple[Path, Path | None]:
    """Write ``<stem>bev.png`` and (when ``sample`` has images) ``<stem>cameras.png`` of ``scene``."""
    import matplotlib.pyplot as plt

    from .bev import draw_bev_scene, draw_camera_scene, save_figure

    fig, ax = plt.subplots(figsize=(8, 8))
    draw_bev_scene(ax, scene, point_range)
    ax.set_title(scene.summary(), fontsize=8)
    bev = save_figure(fig, out_dir / f"{stem}bev.png")
    cams = None
    if sample.images is not None and sample.cameras is not None:
        n = len(sample.cameras)
        cols = (n + 1) // 2 if n > 1 else 1
        rows = 2 if n > 1 else 1
        fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.5 * rows), squeeze=False)
        for i, a in enumerate(axes.flat):
            if i < n:
                draw_camera_scene(a, sample.images[i], sample.cameras, i, scene)
            else:
                a.axis("off")
        cams = save_figure(fig, out_dir / f"{stem}cameras.png")
    return bev, cams


def write_sample_pictures(
    sample: Sample,
    out_dir: str | Path,
    point_range: Sequence[float],
    *,
    detections: Detections | None = None,
    view: View | ViewCamera = "chase",
    size: tuple[int, int] = (960, 720),
    stem: str = "",
    matplotlib_too: bool = False,
    **scene_kwargs: object,
) -> PictureSet:
    """Render ``sample`` (and ``detections``) to PNG files, falling back to matplotlib (see the module doc).

    Args:
        sample: points, ground truth, images in the LiDAR frame.
        out_dir: folder (created).
        point_range: ``(x0, y0, z0, x1, y1, z1)``: frames the views and limits the BEV plot.
        detections: predictions in the sample's LiDAR frame, or None.
        view: ``"chase"`` (behind and above the ego vehicle), ``"bev"`` (top-down) or any :class:`ViewCamera`.
        size: ``(width, height)`` of the render in pixels (ignored for a :class:`ViewCamera`).
        stem: prefix of the file names (e.g. the sample token and ``_``).
        matplotlib_too: write the BEV / camera pictures even when the render succeeded.
        scene_kwargs: passed to :func:`perception.viz.scene.build_scene` (``score_threshold``, ``colour_by``,
            ``gt_colour_by``, ``pred_colour_by``, ``show_gt``, ``show_pred``, ``frame``, ...). Pass
            ``frame=perception.viz.frames.lidar_axes(cfg.data.dataset)`` so the BEV axes say which way is forward
            (without it they read ``x (m)`` / ``y (m)``).
    """
    out = Path(out_dir)
    scene = scene_from_sample(sample, detections, **scene_kwargs)
    camera = view_camera(view, point_range, size)
    render = None
    reason = None
    try:
        render = save_png(render_scene(scene, camera), out / f"{stem}render.png")
    except (OffscreenUnavailableError, RuntimeError) as e:
        reason = str(e)
        logger.warning(
            "sample %s: no open3d render (%s); writing the matplotlib BEV / camera pictures instead",
            sample.token,
            reason,
        )
    bev = cams = None
    if render is None or matplotlib_too:
        bev, cams = write_matplotlib_pictures(scene, sample, out, point_range, stem)
    return PictureSet(render, bev, cams, reason)
