"""perception.viz: scene description, camera model, open3d off-screen renders checked pixel by pixel, the
matplotlib fallback."""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import subprocess
import sys

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from perception.structures import Boxes3D, CameraRig, Detections, Points, Sample
from perception.viz import o3d_render
from perception.viz.camera import ViewCamera, bev_camera, chase_camera, look_at
from perception.viz.colours import GT_COLOUR, class_colour, hex_to_rgb, point_colours
from perception.viz.o3d_render import OffscreenStatus, OffscreenUnavailableError, render_scene
from perception.viz.pictures import write_sample_pictures
from perception.viz.scene import BOX_LINES, box_vertices, build_scene, scene_from_sample

NAMES = ("car", "pedestrian")
RANGE = (-20.0, -20.0, -3.0, 20.0, 20.0, 3.0)
W, H = 320, 240
WHITE = (255, 255, 255)
CAR = tuple(round(255 * c) for c in hex_to_rgb(class_colour("car")))
PED = tuple(round(255 * c) for c in hex_to_rgb(class_colour("pedestrian")))


def _points(n: int = 4000, seed: int = 0) -> Points:
    """Ground points in a ring 12-20 m from the ego (the boxes below stay on clear ground in the pictures)."""
    g = torch.Generator().manual_seed(seed)
    r = 12.0 + 8.0 * torch.rand(n, generator=g)
    a = 2 * math.pi * torch.rand(n, generator=g)
    z = -1.8 + 0.2 * torch.rand(n, generator=g)
    extra = torch.rand(n, 2, generator=g)
    return Points(torch.stack([r * torch.cos(a), r * torch.sin(a), z, extra[:, 0], extra[:, 1]], dim=1))


GT = Boxes3D(torch.tensor([[6.0, 3.0, -1.0, 4.0, 2.0, 1.6, 0.3], [-5.0, -4.0, -1.0, 0.8, 0.8, 1.8, 0.0]]))
GT_LABELS = torch.tensor([0, 1])
DETS = Detections(
    Boxes3D(torch.tensor([[3.0, -6.0, -1.0, 4.2, 1.9, 1.5, -0.4], [-6.0, 6.0, -1.0, 4.0, 2.0, 1.5, 0.0]])),
    torch.tensor([0.9, 0.1]),
    torch.tensor([0, 0]),
)


def _sample(with_camera: bool = False) -> Sample:
    images = rig = None
    if with_camera:
        cam = look_at((-6.0, 0.0, 1.5), (10.0, 0.0, -1.0), fov_deg=70.0, width=W, height=H)
        rig = cam.to_camera_rig("CAM_FRONT")
        images = torch.full((1, 3, H, W), 90, dtype=torch.uint8)
    return Sample("tok0", _points(), GT, GT_LABELS, NAMES, images, rig)


@pytest.fixture(scope="module")
def offscreen() -> None:
    status = o3d_render.offscreen_status()
    if not status.available:
        pytest.skip(f"open3d off-screen rendering unavailable here: {status.reason}")


def _near(img: np.ndarray, uv: np.ndarray, colour: tuple[int, ...], radius: int = 1) -> bool:
    u, v = int(round(uv[0])), int(round(uv[1]))
    win = img[max(v - radius, 0) : v + radius + 1, max(u - radius, 0) : u + radius + 1].reshape(-1, 3)
    return bool((win == np.asarray(colour, np.uint8)).all(axis=1).any())


def _edge_midpoints(vertices: np.ndarray) -> np.ndarray:
    """``(K, 15, 3)`` 3D midpoints of every wireframe line (they project onto the projected lines)."""
    return (vertices[:, BOX_LINES[:, 0]] + vertices[:, BOX_LINES[:, 1]]) / 2


# ---------------------------------------------------------------------------------------------------------------
# colours and scene
# ---------------------------------------------------------------------------------------------------------------


def test_point_colours_follow_the_colour_maps() -> None:
    pts = Points(torch.tensor([[0, 0, -2.0, 0.0, 0.0], [0, 0, 0.0, 5.0, 0.3], [0, 0, 2.0, 10.0, 0.5]]))
    viridis = matplotlib.colormaps["viridis"]
    np.testing.assert_allclose(point_colours(pts, "height"), viridis([0.0, 0.5, 1.0])[:, :3])
    np.testing.assert_allclose(point_colours(pts, "height", (-2.0, 0.0))[2], viridis(1.0)[:3])  # clipped
    np.testing.assert_allclose(
        point_colours(pts, "intensity"), matplotlib.colormaps["plasma"]([0, 0.5, 1])[:, :3]
    )
    np.testing.assert_allclose(point_colours(pts, "time_lag")[0], matplotlib.colormaps["cool"](0.0)[:3])
    assert np.allclose(point_colours(pts, "uniform"), 0.6)
    flat = Points(torch.zeros(3, 5))
    np.testing.assert_allclose(point_colours(flat, "height"), viridis([0.5] * 3)[:, :3])  # constant -> middle
    with pytest.raises(KeyError, match="time_lag"):
        point_colours(Points(torch.zeros(2, 3), ("x", "y", "z")), "time_lag")
    with pytest.raises(ValueError, match="colour_by"):
        point_colours(pts, "speed")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="value_range"):
        point_colours(pts, "height", (1.0, 1.0))


def test_box_wireframe_geometry_and_heading() -> None:
    boxes = Boxes3D(
        torch.tensor([[1.0, 2.0, 0.5, 4.0, 2.0, 1.0, 0.0], [0.0, 0.0, 0.0, 4.0, 2.0, 1.0, math.pi / 2]])
    )
    v = box_vertices(boxes)
    assert v.shape == (2, 10, 3) and BOX_LINES.shape == (15, 2)
    np.testing.assert_allclose(v[0, 0], [3.0, 3.0, 0.0], atol=1e-6)  # front-left-bottom
    np.testing.assert_allclose(v[0, 8], [1.0, 2.0, 0.5], atol=1e-6)  # centre
    np.testing.assert_allclose(v[0, 9], [3.0, 2.0, 0.5], atol=1e-6)  # front-face centre: +dx/2 along yaw
    np.testing.assert_allclose(v[1, 9], [0.0, 2.0, 0.0], atol=1e-6)  # yaw 90 deg: heading along +y
    assert box_vertices(Boxes3D.empty()).shape == (0, 10, 3)


def test_build_scene_threshold_colours_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    pts = _points(100)
    t = pts.tensor.clone()
    t[:3, 0] = float("nan")
    with caplog.at_level(logging.WARNING, logger="perception.viz.scene"):
        scene = build_scene(
            Points(t), NAMES, gt_boxes=GT, gt_labels=GT_LABELS, detections=DETS, score_threshold=0.5
        )
    assert scene.num_nonfinite_points == 3 and len(scene.points) == 97 and "3 of 100" in caplog.text
    assert len(scene.gt) == 2 and len(scene.pred) == 1 and scene.num_below_threshold == 1
    np.testing.assert_allclose(scene.gt.colours, [GT_COLOUR] * 2)  # with predictions: GT in one colour
    np.testing.assert_allclose(scene.pred.colours, [hex_to_rgb(class_colour("car"))])
    assert scene.pred.scores is not None and scene.pred.scores.tolist() == pytest.approx([0.9])
    alone = build_scene(pts, NAMES, gt_boxes=GT, gt_labels=GT_LABELS)  # GT alone: class colours
    np.testing.assert_allclose(alone.gt.colours, [hex_to_rgb(class_colour(n)) for n in NAMES])
    hidden = build_scene(pts, NAMES, gt_boxes=GT, gt_labels=GT_LABELS, detections=DETS, show_gt=False)
    assert len(hidden.gt) == 0 and len(hidden.pred) == 2
    verts, lines, colours = hidden.pred.line_arrays()
    assert (
        verts.shape == (20, 3) and lines.shape == (30, 2) and lines.max() == 19 and colours.shape == (30, 3)
    )
    assert "2 predictions" in hidden.summary()
    empty = build_scene(Points(torch.zeros(0, 5)), NAMES)
    assert empty.points.shape == (0, 3) and len(empty.gt) == len(empty.pred) == 0


def test_build_scene_rejects_bad_input() -> None:
    pts = _points(10)
    bad = GT.tensor.clone()
    bad[1, 6] = float("inf")
    with pytest.raises(ValueError, match=r"ground-truth boxes must be finite; rows \[1\]"):
        build_scene(pts, NAMES, gt_boxes=Boxes3D(bad), gt_labels=GT_LABELS)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        build_scene(pts, NAMES, gt_boxes=GT, gt_labels=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="together"):
        build_scene(pts, NAMES, gt_boxes=GT)
    with pytest.raises(ValueError, match="score_threshold"):
        build_scene(pts, NAMES, detections=DETS, score_threshold=1.5)
    nan_scores = Detections(DETS.boxes, torch.tensor([0.5, float("nan")]), DETS.labels)
    with pytest.raises(ValueError, match="scores must be finite"):
        build_scene(pts, NAMES, detections=nan_scores)
    with pytest.raises(ValueError, match="'class' or 'single'"):
        build_scene(pts, NAMES, detections=DETS, pred_colour_by="rainbow")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------------
# camera model
# ---------------------------------------------------------------------------------------------------------------


def test_view_cameras_match_the_camera_rig_model() -> None:
    cam = bev_camera(RANGE, W, H)
    uv, depth = cam.project(np.array([[0.0, 0.0, -3.0], [10.0, 0.0, -3.0], [0.0, 10.0, -3.0]]))
    np.testing.assert_allclose(uv[0], [W / 2, H / 2], atol=1e-6)
    assert uv[1, 1] < H / 2 and abs(uv[1, 0] - W / 2) < 1e-6  # forward (+x) is up in the picture
    assert uv[2, 0] < W / 2 and abs(uv[2, 1] - H / 2) < 1e-6  # left (+y) is left
    assert (depth > 0).all()
    corners = cam.project(np.array([[RANGE[0], RANGE[1], RANGE[2]], [RANGE[3], RANGE[4], RANGE[2]]]))[0]
    assert ((corners >= -1) & (corners <= [W + 1, H + 1])).all()  # the whole range is in view
    rig = cam.to_camera_rig()
    assert isinstance(rig, CameraRig)
    xyz = torch.tensor([[3.0, -2.0, 0.5], [12.0, 7.0, -1.0]])
    rig_uv, rig_depth, visible = rig.project(xyz)
    np.testing.assert_allclose(rig_uv[0].numpy(), cam.project(xyz.numpy())[0], atol=1e-3)
    assert visible.all()
    chase = chase_camera(RANGE, W, H)
    assert chase.project(np.array([[10.0, 0.0, 0.0]]))[1][0] > 0  # looks forward
    with pytest.raises(ValueError, match="parallel"):
        look_at((0, 0, 10), (0, 0, 0), up=(0, 0, 1))
    with pytest.raises(ValueError, match="fov_deg"):
        look_at((0, 0, 10), (1, 0, 0), fov_deg=180)
    with pytest.raises(ValueError, match="intrinsics"):
        ViewCamera(np.eye(2), np.eye(4), W, H)
    with pytest.raises(ValueError, match="point_range"):
        bev_camera((0, 0, 0, -1, 1, 1))


# ---------------------------------------------------------------------------------------------------------------
# open3d renders, checked in the picture
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("view", ["bev", "chase"])
def test_render_puts_boxes_where_the_camera_model_says(offscreen: None, view: str) -> None:
    cam = bev_camera(RANGE, W, H) if view == "bev" else chase_camera(RANGE, W, H)
    scene = build_scene(
        _points(), NAMES, gt_boxes=GT, gt_labels=GT_LABELS, detections=DETS, score_threshold=0.5
    )
    img = render_scene(scene, cam, point_size=2.0, line_width=2.0)
    assert img.shape == (H, W, 3) and img.dtype == np.uint8
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 20  # not a uniform picture
    rig = cam.to_camera_rig()
    for boxes, colour in ((scene.gt, WHITE), (scene.pred, CAR)):
        mids = _edge_midpoints(boxes.vertices).reshape(-1, 3)
        uv = rig.project(torch.from_numpy(mids).float())[0][0].numpy()
        hits = [_near(img, p, colour) for p in uv]
        assert np.mean(hits) > 0.9, (view, colour, hits)  # hidden-line overlap may cover a few midpoints
        # every pixel of the colour lies inside the projected boxes' extent (+ line width)
        ys, xs = np.nonzero((img == np.asarray(colour, np.uint8)).all(axis=2))
        proj = rig.project(torch.from_numpy(boxes.vertices.reshape(-1, 3)).float())[0][0].numpy()
        assert xs.min() >= proj[:, 0].min() - 2 and xs.max() <= proj[:, 0].max() + 2
        assert ys.min() >= proj[:, 1].min() - 2 and ys.max() <= proj[:, 1].max() + 2
    # the prediction below the threshold is not drawn: car colour nowhere near its box
    low = DETS.boxes.select(torch.tensor([1]))
    u, v = (rig.project(low.center.float())[0][0, 0]).numpy().round().astype(int)
    assert not (img[v - 15 : v + 16, u - 15 : u + 16] == np.asarray(CAR, np.uint8)).all(axis=2).any()
    # background where nothing is: the ego's surroundings inside the ring of points, away from every box
    u0, v0 = cam.project(np.array([[0.0, 0.0, -1.8]]))[0][0].round().astype(int)
    assert (img[v0 - 2 : v0 + 3, u0 - 2 : u0 + 3] == 0).all()


def test_render_toggles_and_point_colours(offscreen: None) -> None:
    cam = bev_camera(RANGE, W, H)
    gt_only = render_scene(
        build_scene(_points(), NAMES, gt_boxes=GT, gt_labels=GT_LABELS, detections=DETS, show_pred=False), cam
    )
    pred_only = render_scene(
        build_scene(_points(), NAMES, gt_boxes=GT, gt_labels=GT_LABELS, detections=DETS, show_gt=False), cam
    )
    is_white = (gt_only == 255).all(axis=2)
    assert is_white.sum() > 50 and not (pred_only == 255).all(axis=2).any()
    assert (pred_only == np.asarray(CAR, np.uint8)).all(axis=2).sum() > 50
    assert not (gt_only == np.asarray(CAR, np.uint8)).all(axis=2).any()
    # uniform grey points (0.6 -> 153; point edges blend with the black background): only grey levels
    grey = render_scene(build_scene(_points(), NAMES, colour_by="uniform"), cam).reshape(-1, 3).astype(int)
    assert (grey[:, 0] == grey[:, 1]).all() and (grey[:, 1] == grey[:, 2]).all() and grey.max() == 153
    assert (grey[:, 0] == 153).sum() > 1000
    # an empty scene renders the background colour
    empty = render_scene(build_scene(Points(torch.zeros(0, 5)), NAMES), cam, background=(0.0, 0.0, 1.0))
    assert (empty == np.array([0, 0, 255], np.uint8)).all()
    with pytest.raises(ValueError, match="background"):
        render_scene(build_scene(_points(10), NAMES), cam, background=(2.0, 0.0, 0.0))


# ---------------------------------------------------------------------------------------------------------------
# renderer unavailable: clear error, matplotlib fallback
# ---------------------------------------------------------------------------------------------------------------


def test_probe_reports_a_missing_vulkan_driver() -> None:
    if (
        importlib.util.find_spec("open3d") is None
        or subprocess.run([sys.executable, "-c", "import open3d"], capture_output=True).returncode
    ):
        pytest.skip("open3d does not import here (libusb-1.0-0 missing?): no Vulkan stage to probe")
    env = {**os.environ, "VK_ICD_FILENAMES": "/nonexistent/icd.json"}  # no Vulkan driver -> Filament aborts
    status = o3d_render.probe_offscreen(env=env)
    assert not status.available
    assert "signal" in status.reason and "mesa-vulkan-drivers" in status.reason, status.reason


def test_offscreen_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERCEPTION_OFFSCREEN", "off")
    status = o3d_render.probe_offscreen()
    assert not status.available and "PERCEPTION_OFFSCREEN" in status.reason


def test_fallback_writes_matplotlib_pictures(
    tmp_path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(o3d_render, "_status", OffscreenStatus(False, "simulated: no Vulkan driver"))
    with pytest.raises(OffscreenUnavailableError, match="simulated"):
        render_scene(build_scene(_points(10), NAMES), bev_camera(RANGE, W, H))
    with caplog.at_level(logging.WARNING, logger="perception.viz.pictures"):
        pics = write_sample_pictures(_sample(with_camera=True), tmp_path, RANGE, detections=DETS, stem="s_")
    assert pics.render is None and pics.fallback_reason == "simulated: no Vulkan driver"
    assert "no open3d render (simulated: no Vulkan driver)" in caplog.text
    assert pics.bev == tmp_path / "s_bev.png" and pics.cameras == tmp_path / "s_cameras.png"
    assert not (tmp_path / "s_render.png").exists()
    bev = np.asarray(Image.open(pics.bev).convert("RGB"))
    assert len(np.unique(bev.reshape(-1, 3), axis=0)) > 20
    assert (bev == 255).all(axis=2).any()  # white ground truth (and the figure margin)
    inner = bev[60:-60, 80:-60]  # plot area
    assert (np.abs(inner.astype(int) - CAR).sum(axis=2) < 30).sum() > 20  # the car-coloured prediction
    cams = np.asarray(Image.open(pics.cameras).convert("RGB"))
    assert (np.abs(cams.astype(int) - WHITE).sum(axis=2) < 30).sum() > 20  # projected GT box in the image


def test_pictures_with_renderer(offscreen: None, tmp_path) -> None:
    pics = write_sample_pictures(
        _sample(with_camera=True),
        tmp_path,
        RANGE,
        detections=DETS,
        view="bev",
        size=(W, H),
        matplotlib_too=True,
    )
    assert pics.fallback_reason is None and pics.paths == [
        tmp_path / "render.png",
        tmp_path / "bev.png",
        tmp_path / "cameras.png",
    ]
    img = np.asarray(Image.open(pics.render).convert("RGB"))
    assert img.shape == (H, W, 3) and (img == 255).all(axis=2).sum() > 50
    scene = scene_from_sample(_sample(), DETS)
    assert scene.title == "tok0" and len(scene.pred) == 2


_TWO_SIZES = """
import numpy as np, torch
from perception.structures import Points
from perception.viz.camera import bev_camera
from perception.viz.o3d_render import render_scene
from perception.viz.scene import build_scene
scene = build_scene(Points(torch.rand(500, 5) * 10), ("car",))
sizes = [(64, 48), (96, 64), (64, 48)]
shapes = [render_scene(scene, bev_camera((0, 0, 0, 10, 10, 10), w, h)).shape for w, h in sizes]
assert shapes == [(48, 64, 3), (64, 96, 3), (48, 64, 3)], shapes
print("RENDER_OK")
"""


def test_renders_of_several_sizes_exit_cleanly(offscreen: None) -> None:
    # Filament aborts at interpreter exit if two renderers were alive: the process must end with status 0.
    proc = subprocess.run([sys.executable, "-c", _TWO_SIZES], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0 and "RENDER_OK" in proc.stdout, proc.stderr[-2000:]


# ---------------------------------------------------------------------------------------------------------------
# BEV axis labels (the data set's LiDAR frame) and the legend


def test_lidar_axes_per_data_set_format() -> None:
    from perception.viz.frames import LidarAxes, lidar_axes

    assert lidar_axes("nuscenes").axis_labels == ("x (m, right)", "y (m, forward)")  # LIDAR_TOP: y forward
    assert lidar_axes("kitti").axis_labels == ("x (m, forward)", "y (m, left)")  # Velodyne: x forward
    with pytest.raises(ValueError, match=r"'waymo'.*\['kitti', 'nuscenes'\]"):
        lidar_axes("waymo")
    with pytest.raises(ValueError, match="forward"):
        LidarAxes(forward="z")  # type: ignore[arg-type]


def _bev_axes(scene: object) -> matplotlib.axes.Axes:
    import matplotlib.pyplot as plt

    from perception.viz.bev import draw_bev_scene

    fig, ax = plt.subplots()
    draw_bev_scene(ax, scene, RANGE)  # type: ignore[arg-type]
    plt.close(fig)
    return ax


def test_bev_axis_labels_follow_the_data_frame() -> None:
    from perception.viz.frames import lidar_axes

    for dataset, labels in (
        ("nuscenes", ("x (m, right)", "y (m, forward)")),
        ("kitti", ("x (m, forward)", "y (m, left)")),
    ):
        ax = _bev_axes(build_scene(_points(50), NAMES, frame=lidar_axes(dataset)))
        assert (ax.get_xlabel(), ax.get_ylabel()) == labels
    unknown = _bev_axes(build_scene(_points(50), NAMES))
    assert (unknown.get_xlabel(), unknown.get_ylabel()) == ("x (m)", "y (m)")  # no direction claimed


def _legend(ax: matplotlib.axes.Axes) -> list[tuple[str, str, tuple[float, ...]]]:
    """``(text, linestyle or 'patch', RGB)`` of each legend entry."""
    from matplotlib.lines import Line2D

    legend = ax.get_legend()
    assert legend is not None
    out = []
    for text, handle in zip(legend.get_texts(), legend.legend_handles, strict=True):
        if isinstance(handle, Line2D):
            out.append(
                (text.get_text(), handle.get_linestyle(), matplotlib.colors.to_rgb(handle.get_color()))
            )
        else:
            out.append((text.get_text(), "patch", matplotlib.colors.to_rgb(handle.get_facecolor())))
    return out


def test_bev_legend_names_classes_drawn_and_line_styles() -> None:
    from perception.viz.scene import STYLE_IN_CLASS_COLOURS, legend_entries

    car, ped = hex_to_rgb(class_colour("car")), hex_to_rgb(class_colour("pedestrian"))
    alone = build_scene(_points(50), NAMES, gt_boxes=GT, gt_labels=GT_LABELS)  # GT alone: class colours
    assert _legend(_bev_axes(alone)) == [
        ("ground truth (solid, class colours)", "-", STYLE_IN_CLASS_COLOURS),
        ("car", "patch", car),
        ("pedestrian", "patch", ped),
    ]
    both = build_scene(
        _points(50), NAMES, gt_boxes=GT, gt_labels=GT_LABELS, detections=DETS, score_threshold=0.5
    )
    assert _legend(_bev_axes(both)) == [
        ("ground truth (solid, white)", "-", GT_COLOUR),
        ("prediction (dashed, class colours)", "--", STYLE_IN_CLASS_COLOURS),
        ("car", "patch", car),  # the one prediction above 0.5; the white GT pedestrian is no class colour
    ]
    single = build_scene(_points(50), NAMES, detections=DETS, pred_colour_by="single")
    assert [(e.label, e.kind, e.linestyle) for e in legend_entries(single)] == [
        ("prediction (dashed, red)", "style", "--")
    ]
    assert _bev_axes(build_scene(_points(50), NAMES)).get_legend() is None  # no boxes, no legend
