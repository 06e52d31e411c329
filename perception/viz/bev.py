"""Bird's-eye-view and camera pictures with matplotlib (headless, Agg backend).

Class colours are fixed per class name so every picture of the project uses the same colour for a class.
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

from perception.structures import Boxes3D, CameraRig, Points  # noqa: E402

CLASS_COLOURS: dict[str, str] = {
    "car": "#e6194b",
    "truck": "#f58231",
    "construction_vehicle": "#9a6324",
    "bus": "#ffe119",
    "trailer": "#808000",
    "barrier": "#a9a9a9",
    "motorcycle": "#f032e6",
    "bicycle": "#911eb4",
    "pedestrian": "#3cb44b",
    "traffic_cone": "#42d4f4",
    "Car": "#e6194b",
    "Pedestrian": "#3cb44b",
    "Cyclist": "#911eb4",
}


def class_colour(name: str) -> str:
    """Hex colour of a class (grey for unknown names)."""
    return CLASS_COLOURS.get(name, "#4363d8")


def draw_bev(
    ax: Axes,
    points: Points,
    boxes: Boxes3D,
    labels: torch.Tensor,
    class_names: Sequence[str],
    point_range: Sequence[float],
    max_points: int = 200_000,
) -> None:
    """Top view: points coloured by height, boxes as class-coloured rectangles with a heading tick.

    Args:
        points: ``(N, C)`` LiDAR points (metres).
        boxes: ``(K, 7|9)`` boxes in the same frame; velocities drawn as arrows when present.
        labels: int64 ``(K,)`` index into ``class_names``.
        point_range: ``(x0, y0, z0, x1, y1, z1)`` limits of the plot.
    """
    xyz = points.xyz.detach().cpu().numpy()
    if len(xyz) > max_points:
        xyz = xyz[np.random.default_rng(0).choice(len(xyz), max_points, replace=False)]
    ax.set_facecolor("black")
    ax.scatter(
        xyz[:, 0],
        xyz[:, 1],
        c=xyz[:, 2],
        s=0.15,
        cmap="viridis",
        vmin=point_range[2],
        vmax=point_range[5] - 2,
    )
    corners = boxes.bev_corners().detach().cpu().numpy()
    t = boxes.tensor.detach().cpu().numpy()
    for i, poly in enumerate(corners):
        colour = class_colour(class_names[int(labels[i])])
        ring = np.vstack([poly, poly[:1]])
        ax.plot(ring[:, 0], ring[:, 1], color=colour, lw=1.0)
        front = poly[[0, 3]].mean(axis=0)
        ax.plot([t[i, 0], front[0]], [t[i, 1], front[1]], color=colour, lw=1.0)
        if boxes.has_velocity and np.hypot(t[i, 7], t[i, 8]) > 0.2:
            ax.arrow(t[i, 0], t[i, 1], t[i, 7], t[i, 8], color="white", width=0.05, head_width=0.6, lw=0)
    ax.set_xlim(point_range[0], point_range[3])
    ax.set_ylim(point_range[1], point_range[4])
    ax.set_aspect("equal")
    ax.set_xlabel("x (m, forward)")
    ax.set_ylabel("y (m, left)")


_EDGES = [(0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7)]


def draw_camera(
    ax: Axes,
    image: torch.Tensor,
    rig: CameraRig,
    camera: int,
    boxes: Boxes3D,
    labels: torch.Tensor,
    class_names: Sequence[str],
) -> None:
    """One camera image with the boxes' projected edges (boxes with a corner behind the camera are skipped).

    Args:
        image: uint8 ``(3, H, W)``.
        camera: index into ``rig``.
    """
    ax.imshow(image.permute(1, 2, 0).cpu().numpy())
    if len(boxes):
        corners = boxes.corners().reshape(-1, 3).float()
        uv, depth, _ = rig.project(corners)
        uv = uv[camera].reshape(-1, 8, 2).cpu().numpy()
        depth = depth[camera].reshape(-1, 8).cpu().numpy()
        h, w = (int(v) for v in rig.image_sizes[camera])
        for i in range(len(boxes)):
            if (depth[i] <= 0.5).any():
                continue
            if not ((uv[i, :, 0] > 0) & (uv[i, :, 0] < w) & (uv[i, :, 1] > 0) & (uv[i, :, 1] < h)).any():
                continue
            colour = class_colour(class_names[int(labels[i])])
            for a, b in _EDGES:
                ax.plot(uv[i, [a, b], 0], uv[i, [a, b], 1], color=colour, lw=1.0)
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
