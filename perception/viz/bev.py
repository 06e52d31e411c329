"""Bird's-eye-view and camera pictures with matplotlib (headless, Agg backend): the report figures, and the
fallback when open3d cannot render (:mod:`perception.viz.pictures`).

Colours come from :mod:`perception.viz.colours` (the same in every picture of the project); what is drawn comes
from a :class:`~perception.viz.scene.Scene`, so these pictures and the open3d renders show the same boxes. The BEV
axes are labelled with the scene's LiDAR frame (:mod:`perception.viz.frames`: nuScenes ``x (m, right)`` /
``y (m, forward)``, KITTI ``x (m, forward)`` / ``y (m, left)``), and a legend beside the plot names the classes
drawn and the ground-truth (solid) / prediction (dashed) line styles (:func:`~perception.viz.scene.legend_entries`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.legend import Legend  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from perception.structures import Boxes3D, CameraRig, Detections, Points  # noqa: E402

from .colours import CLASS_COLOURS, BoxColourBy, ColourBy, class_colour  # noqa: E402
from .frames import UNKNOWN_AXIS_LABELS, LidarAxes  # noqa: E402
from .scene import BOX_LINES, LINE_STYLES, VERTICES_PER_BOX, Scene, build_scene, legend_entries  # noqa: E402

__all__ = [
    "CLASS_COLOURS",
    "add_legend",
    "class_colour",
    "draw_bev",
    "draw_bev_scene",
    "draw_camera",
    "draw_camera_scene",
    "save_figure",
]


def draw_bev(
    ax: Axes,
    points: Points,
    boxes: Boxes3D,
    labels: torch.Tensor,
    class_names: Sequence[str],
    point_range: Sequence[float],
    max_points: int = 200_000,
    *,
    detections: Detections | None = None,
    score_threshold: float = 0.0,
    colour_by: ColourBy = "height",
    value_range: tuple[float, float] | None = None,
    gt_colour_by: BoxColourBy | None = None,
    pred_colour_by: BoxColourBy = "class",
    frame: LidarAxes | None = None,
) -> Scene:
    """Top view: points coloured by a channel, boxes as rectangles with a heading tick (centre -> front).

    Args:
        points: ``(N, C)`` LiDAR points (metres).
        boxes: ``(K, 7|9)`` ground-truth boxes in the same frame; velocities drawn as white arrows when present.
        labels: int64 ``(K,)`` index into ``class_names``.
        point_range: ``(x0, y0, z0, x1, y1, z1)`` limits of the plot.
        max_points: draw at most this many points (a fixed random subset beyond it).
        detections: predictions to draw over the ground truth (dashed lines), those with ``score >=
            score_threshold``.
        colour_by, value_range: point colours (:func:`perception.viz.colours.point_colours`); for ``height`` the
            default range is ``(z0, z1 - 2)``.
        gt_colour_by: ``"class"`` or ``"single"`` (white); default ``"class"`` without detections and
            ``"single"`` with them, so ground truth and predictions stay apart.
        pred_colour_by: ``"class"`` or ``"single"`` (red).
        frame: the data's LiDAR frame for the axis labels (:func:`perception.viz.frames.lidar_axes`).

    Returns:
        The :class:`Scene` drawn (for its counts).
    """
    scene = _scene(points, boxes, labels, class_names, point_range, detections, score_threshold, colour_by,
                   value_range, gt_colour_by, pred_colour_by, frame)  # fmt: skip
    draw_bev_scene(ax, scene, point_range, max_points)
    if boxes.has_velocity and len(scene.gt):
        t = boxes.tensor.detach().cpu().numpy()
        for i in np.flatnonzero(np.hypot(t[:, 7], t[:, 8]) > 0.2):
            ax.arrow(t[i, 0], t[i, 1], t[i, 7], t[i, 8], color="white", width=0.05, head_width=0.6, lw=0)
    return scene


def _scene(
    points: Points,
    boxes: Boxes3D,
    labels: torch.Tensor,
    class_names: Sequence[str],
    point_range: Sequence[float] | None,
    detections: Detections | None,
    score_threshold: float,
    colour_by: ColourBy,
    value_range: tuple[float, float] | None,
    gt_colour_by: BoxColourBy | None,
    pred_colour_by: BoxColourBy,
    frame: LidarAxes | None = None,
) -> Scene:
    if value_range is None and colour_by == "height" and point_range is not None:
        value_range = (float(point_range[2]), float(max(point_range[5] - 2, point_range[2] + 0.5)))
    return build_scene(
        points,
        class_names,
        gt_boxes=boxes,
        gt_labels=labels,
        detections=detections,
        score_threshold=score_threshold,
        colour_by=colour_by,
        value_range=value_range,
        gt_colour_by=gt_colour_by,
        pred_colour_by=pred_colour_by,
        frame=frame,
    )


def draw_bev_scene(
    ax: Axes, scene: Scene, point_range: Sequence[float], max_points: int = 200_000, *, legend: bool = True
) -> None:
    """Draw a :class:`Scene` from above on a black background: LiDAR x to the right, y up, metres.

    Ground truth is drawn with solid lines, predictions with dashed lines on top. The axes are labelled with
    ``scene.frame`` (which axis is forward; ``x (m)`` / ``y (m)`` when None). ``legend``: add :func:`add_legend`.
    """
    xyz, colours = scene.points, scene.point_colours
    if len(xyz) > max_points:
        keep = np.random.default_rng(0).choice(len(xyz), max_points, replace=False)
        xyz, colours = xyz[keep], colours[keep]
    ax.set_facecolor("black")
    ax.scatter(xyz[:, 0], xyz[:, 1], c=colours, s=0.15, linewidths=0)
    for boxes in (scene.gt, scene.pred):
        style = LINE_STYLES[boxes.kind]
        for verts, colour in zip(boxes.vertices, boxes.colours, strict=True):
            ring = verts[[0, 1, 2, 3, 0], :2]
            ax.plot(ring[:, 0], ring[:, 1], color=colour, lw=1.0, ls=style)
            ax.plot(verts[[8, 9], 0], verts[[8, 9], 1], color=colour, lw=1.0, ls="-")
    ax.set_xlim(point_range[0], point_range[3])
    ax.set_ylim(point_range[1], point_range[4])
    ax.set_aspect("equal")
    xlabel, ylabel = scene.frame.axis_labels if scene.frame is not None else UNKNOWN_AXIS_LABELS
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if legend:
        add_legend(ax, scene)


def add_legend(ax: Axes, scene: Scene) -> Legend | None:
    """A legend beside ``ax`` (right of it, dark so white lines show) with :func:`legend_entries` of ``scene``:
    the line style of each kind of box drawn, then a swatch per class drawn in class colours. None when the
    scene has no boxes."""
    handles: list[Line2D | Patch] = []
    for e in legend_entries(scene):
        if e.kind == "style":
            handles.append(Line2D([], [], color=e.colour, ls=e.linestyle, lw=1.5, label=e.label))
        else:
            handles.append(Patch(facecolor=e.colour, edgecolor=e.colour, label=e.label))
    if not handles:
        return None
    return ax.legend(
        handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8,
        facecolor="0.15", edgecolor="0.5", labelcolor="white", framealpha=1.0,
    )  # fmt: skip


def draw_camera(
    ax: Axes,
    image: torch.Tensor,
    rig: CameraRig,
    camera: int,
    boxes: Boxes3D,
    labels: torch.Tensor,
    class_names: Sequence[str],
    *,
    detections: Detections | None = None,
    score_threshold: float = 0.0,
    gt_colour_by: BoxColourBy | None = None,
    pred_colour_by: BoxColourBy = "class",
) -> Scene:
    """One camera image with the boxes' projected edges, front-face cross and heading line.

    Boxes with a corner less than 0.5 m in front of the camera, or with no corner inside the image, are not
    drawn (a box behind the camera has no meaningful projection). Ground truth solid, predictions dashed;
    colours as in :func:`draw_bev`.

    Args:
        image: uint8 ``(3, H, W)``.
        camera: index into ``rig``.
    """
    no_points = Points(torch.zeros((0, 3)), ("x", "y", "z"))
    scene = _scene(no_points, boxes, labels, class_names, None, detections, score_threshold, "uniform", None,
                   gt_colour_by, pred_colour_by)  # fmt: skip
    draw_camera_scene(ax, image, rig, camera, scene)
    return scene


def draw_camera_scene(ax: Axes, image: torch.Tensor, rig: CameraRig, camera: int, scene: Scene) -> None:
    """The boxes of a :class:`Scene` projected into camera ``camera`` of ``rig`` over its uint8 ``(3, H, W)``
    image (points are not drawn)."""
    if not 0 <= camera < len(rig):
        raise ValueError(f"camera must index the rig's {len(rig)} cameras, got {camera}")
    ax.imshow(image.permute(1, 2, 0).cpu().numpy())
    h, w = (int(v) for v in rig.image_sizes[camera])
    for boxes in (scene.gt, scene.pred):
        style = LINE_STYLES[boxes.kind]
        if not len(boxes):
            continue
        verts = torch.from_numpy(boxes.vertices.reshape(-1, 3)).float()
        uv_all, depth_all, _ = rig.project(verts)
        uv = uv_all[camera].reshape(-1, VERTICES_PER_BOX, 2).numpy()
        depth = depth_all[camera].reshape(-1, VERTICES_PER_BOX).numpy()
        for i, colour in enumerate(boxes.colours):
            if (depth[i] <= 0.5).any():
                continue
            u, v = uv[i, :8, 0], uv[i, :8, 1]
            if not ((u > 0) & (u < w) & (v > 0) & (v < h)).any():
                continue
            for a, b in BOX_LINES:
                ax.plot(uv[i, [a, b], 0], uv[i, [a, b], 1], color=colour, lw=1.0, ls=style)
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_title(rig.names[camera])
    ax.axis("off")


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Write ``fig`` as PNG (creating folders) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
