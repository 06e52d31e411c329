"""Interactive open3d viewer: step through samples with the keyboard, toggle ground truth and predictions.

The logic is separate from the window: :class:`ViewerState` plus :func:`handle_key` (pure, unit-tested) decide
what to show; :class:`SceneSource` turns a state into a :class:`~perception.viz.scene.Scene`; :class:`Viewer` only
puts that scene into an ``open3d.visualization.VisualizerWithKeyCallback`` window (needs a display: X11 or
Wayland; under Xvfb it runs too).

Keys (:data:`KEY_ACTIONS`):

=================  ===========================================
N, Right, Space    next sample
B, Left            previous sample
G                  show / hide ground truth (white by default)
D                  show / hide predictions (class colours)
C                  point colours: height -> intensity -> time lag -> uniform (channels the points lack are skipped)
Up / Down          score threshold +0.1 / -0.1 (in [0, 1])
Q, Escape          quit
=================  ===========================================

open3d's own keys still work (mouse to orbit, ``-`` / ``=`` point size, ``R`` reset the view, ``H`` help).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from perception.structures import Detections, Sample

from .camera import chase_camera
from .colours import COLOUR_MODES, ColourBy
from .scene import Scene, scene_from_sample

logger = logging.getLogger(__name__)

Action = Literal["next", "previous", "toggle_gt", "toggle_pred", "cycle_colour", "threshold_up", "threshold_down",
                 "quit"]  # fmt: skip

#: Key name -> action. Letters are upper case; arrows and Escape by name.
KEY_ACTIONS: dict[str, Action] = {
    "N": "next",
    "RIGHT": "next",
    "SPACE": "next",
    "B": "previous",
    "LEFT": "previous",
    "G": "toggle_gt",
    "D": "toggle_pred",
    "C": "cycle_colour",
    "UP": "threshold_up",
    "DOWN": "threshold_down",
    "Q": "quit",
    "ESCAPE": "quit",
}
#: GLFW key codes of the named keys (letters use their upper-case ASCII code).
GLFW_KEY_CODES: dict[str, int] = {
    "SPACE": 32,
    "ESCAPE": 256,
    "RIGHT": 262,
    "LEFT": 263,
    "DOWN": 264,
    "UP": 265,
}
THRESHOLD_STEP = 0.1


def key_code(name: str) -> int:
    """GLFW key code of a key name of :data:`KEY_ACTIONS`."""
    if name in GLFW_KEY_CODES:
        return GLFW_KEY_CODES[name]
    if len(name) == 1 and name.isalpha() and name.isupper():
        return ord(name)
    raise ValueError(
        f"unknown key name {name!r}; use an upper-case letter or one of {sorted(GLFW_KEY_CODES)}"
    )


@dataclass(frozen=True)
class ViewerState:
    """What the viewer shows.

    Attributes:
        index: current sample, ``0 <= index < num_samples``.
        num_samples: samples available (>= 1).
        show_gt, show_pred: draw ground truth / predictions.
        colour_by: point colouring, one of ``colour_modes``.
        colour_modes: the modes ``C`` cycles through (those the points support).
        score_threshold: predictions below it are hidden, in ``[0, 1]``.
        quit: the user asked to close the window.
    """

    index: int
    num_samples: int
    show_gt: bool = True
    show_pred: bool = True
    colour_by: ColourBy = "height"
    colour_modes: tuple[ColourBy, ...] = COLOUR_MODES
    score_threshold: float = 0.3
    quit: bool = False

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if not 0 <= self.index < self.num_samples:
            raise ValueError(f"index must lie in [0, {self.num_samples}), got {self.index}")
        if self.colour_by not in self.colour_modes:
            raise ValueError(f"colour_by {self.colour_by!r} is not one of colour_modes {self.colour_modes}")
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"score_threshold must lie in [0, 1], got {self.score_threshold}")


def apply_action(state: ViewerState, action: Action) -> ViewerState:
    """The state after ``action``. Stepping stops at the first / last sample (no wrap-around)."""
    if action == "next":
        return replace(state, index=min(state.index + 1, state.num_samples - 1))
    if action == "previous":
        return replace(state, index=max(state.index - 1, 0))
    if action == "toggle_gt":
        return replace(state, show_gt=not state.show_gt)
    if action == "toggle_pred":
        return replace(state, show_pred=not state.show_pred)
    if action == "cycle_colour":
        modes = state.colour_modes
        return replace(state, colour_by=modes[(modes.index(state.colour_by) + 1) % len(modes)])
    if action in ("threshold_up", "threshold_down"):
        step = THRESHOLD_STEP if action == "threshold_up" else -THRESHOLD_STEP
        return replace(state, score_threshold=round(min(1.0, max(0.0, state.score_threshold + step)), 6))
    if action == "quit":
        return replace(state, quit=True)
    raise ValueError(f"unknown viewer action {action!r}")


def handle_key(state: ViewerState, key: str) -> ViewerState:
    """The state after pressing ``key`` (a name of :data:`KEY_ACTIONS`, case-insensitive); unbound keys change
    nothing."""
    action = KEY_ACTIONS.get(key.upper())
    return state if action is None else apply_action(state, action)


def colour_modes_for(channels: Sequence[str]) -> tuple[ColourBy, ...]:
    """The colour modes points with these channels support (``height`` and ``uniform`` always)."""
    return tuple(m for m in COLOUR_MODES if m in ("height", "uniform") or m in channels)


class SceneSource:
    """Samples (and optional detections by sample token) -> the :class:`Scene` of a :class:`ViewerState`.

    Args:
        samples: anything with ``len()`` and ``[i] -> Sample`` (a dataset); the current sample is cached.
        detections: sample token -> :class:`Detections` in that sample's LiDAR frame; samples without an entry
            show no predictions.
    """

    def __init__(self, samples: Sequence[Sample], detections: Mapping[str, Detections] | None = None) -> None:
        if len(samples) == 0:
            raise ValueError("the viewer needs at least one sample")
        self.samples = samples
        self.detections = dict(detections or {})
        self._cached: tuple[int, Sample] | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def sample(self, index: int) -> Sample:
        if self._cached is None or self._cached[0] != index:
            self._cached = (index, self.samples[index])
        return self._cached[1]

    def initial_state(self, **kwargs: Any) -> ViewerState:
        """State at sample 0 with the colour modes the first sample's points support."""
        modes = colour_modes_for(self.sample(0).points.channels)
        return ViewerState(index=0, num_samples=len(self), colour_modes=modes, **kwargs)

    def scene(self, state: ViewerState) -> Scene:
        sample = self.sample(state.index)
        colour_by = (
            state.colour_by if state.colour_by in colour_modes_for(sample.points.channels) else "height"
        )
        return scene_from_sample(
            sample,
            self.detections.get(sample.token),
            score_threshold=state.score_threshold,
            colour_by=colour_by,
            show_gt=state.show_gt,
            show_pred=state.show_pred,
            title=f"[{state.index + 1}/{state.num_samples}] {sample.token}",
        )


def status_line(state: ViewerState, scene: Scene) -> str:
    """What the viewer prints after each key: the scene summary and the toggles."""
    return (
        f"{scene.summary()} | GT {'on' if state.show_gt else 'off'}, predictions "
        f"{'on' if state.show_pred else 'off'}, score >= {state.score_threshold:.1f}, colour by {state.colour_by}"
    )


class Viewer:
    """The open3d window around a :class:`SceneSource` (see the module doc for the keys).

    Args:
        source: samples and detections.
        point_range: frames the initial view (:func:`perception.viz.camera.chase_camera`).
        size: window ``(width, height)`` in pixels.
        point_size: pixels.
        on_status: called with :func:`status_line` after every change (default: ``print``).
    """

    def __init__(
        self,
        source: SceneSource,
        point_range: Sequence[float],
        *,
        size: tuple[int, int] = (1280, 800),
        point_size: float = 2.0,
        score_threshold: float = 0.3,
        colour_by: ColourBy = "height",
        on_status: Callable[[str], None] = print,
    ) -> None:
        self.source = source
        self.point_range = tuple(float(v) for v in point_range)
        self.size = size
        self.point_size = point_size
        self.state = source.initial_state(score_threshold=score_threshold, colour_by=colour_by)
        self.on_status = on_status
        self.vis: Any = None

    def open(self, visible: bool = True) -> None:
        """Create the window and draw the first sample."""
        import open3d as o3d

        vis = o3d.visualization.VisualizerWithKeyCallback()
        if not vis.create_window("perception viewer", self.size[0], self.size[1], visible=visible):
            raise RuntimeError(
                "open3d could not create a window (no display? use tools/visualize.py --headless)"
            )
        opt = vis.get_render_option()
        opt.background_color = np.zeros(3)
        opt.point_size = float(self.point_size)
        for name in KEY_ACTIONS:
            vis.register_key_callback(key_code(name), self._callback(name))
        self.vis = vis
        self.redraw(reset_view=True)

    def _callback(self, key: str) -> Callable[[Any], bool]:
        def fn(_vis: Any) -> bool:
            return self.press(key)

        return fn

    def press(self, key: str) -> bool:
        """Apply ``key`` and redraw; returns True when the picture changed (open3d then refreshes it)."""
        new = handle_key(self.state, key)
        if new == self.state:
            return False
        self.state = new
        if new.quit:
            self.vis.close()
            return False
        self.redraw(reset_view=False)
        return True

    def redraw(self, reset_view: bool) -> Scene:
        """Replace the window's geometry with the scene of the current state."""
        import open3d as o3d

        scene = self.source.scene(self.state)
        view = self.vis.get_view_control()
        params = None if reset_view else view.convert_to_pinhole_camera_parameters()
        self.vis.clear_geometries()
        pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(scene.points))
        pc.colors = o3d.utility.Vector3dVector(scene.point_colours)
        self.vis.add_geometry(pc, reset_bounding_box=True)
        for boxes in (scene.gt, scene.pred):
            if len(boxes):
                verts, lines, colours = boxes.line_arrays()
                ls = o3d.geometry.LineSet(
                    o3d.utility.Vector3dVector(verts), o3d.utility.Vector2iVector(lines.astype(np.int32))
                )
                ls.colors = o3d.utility.Vector3dVector(colours)
                self.vis.add_geometry(ls, reset_bounding_box=False)
        if params is None:
            cam = chase_camera(self.point_range, *self._window_size())
            params = o3d.camera.PinholeCameraParameters()
            params.intrinsic = o3d.camera.PinholeCameraIntrinsic(cam.width, cam.height, cam.intrinsics)
            params.extrinsic = cam.lidar_to_camera
        view.convert_from_pinhole_camera_parameters(params, allow_arbitrary=True)
        self.on_status(status_line(self.state, scene))
        return scene

    def _window_size(self) -> tuple[int, int]:
        intr = self.vis.get_view_control().convert_to_pinhole_camera_parameters().intrinsic
        return int(intr.width), int(intr.height)

    def capture(self) -> np.ndarray:
        """The window's current picture, uint8 ``(H, W, 3)``."""
        self.vis.poll_events()
        self.vis.update_renderer()
        img = np.asarray(self.vis.capture_screen_float_buffer(do_render=True))
        return (np.clip(img, 0.0, 1.0) * 255).round().astype(np.uint8)

    def run(self) -> None:
        """Open the window (if needed) and run until it is closed."""
        if self.vis is None:
            self.open()
        self.vis.run()
        self.vis.destroy_window()
        self.vis = None
