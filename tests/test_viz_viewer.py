"""The interactive viewer: key handling without a window, scene selection, and a window smoke test under Xvfb."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from perception.structures import Boxes3D, Detections, Points, Sample
from perception.viz.viewer import (
    GLFW_KEY_CODES,
    KEY_ACTIONS,
    SceneSource,
    ViewerState,
    apply_action,
    colour_modes_for,
    handle_key,
    key_code,
    status_line,
)

NAMES = ("car", "pedestrian")


def _sample(i: int, channels: tuple[str, ...] = ("x", "y", "z", "intensity", "time_lag")) -> Sample:
    g = torch.Generator().manual_seed(i)
    pts = torch.rand(200, len(channels), generator=g) * 10
    box = torch.tensor([[5.0 + i, 2.0, 0.0, 4.0, 2.0, 1.5, 0.1 * i]])
    return Sample(f"tok{i}", Points(pts, channels), Boxes3D(box), torch.tensor([0]), NAMES)


DETS = {
    "tok0": Detections(
        Boxes3D(torch.tensor([[1.0, 1.0, 0.0, 4.0, 2.0, 1.5, 0.0], [3.0, 1.0, 0.0, 1.0, 1.0, 1.8, 0.0]])),
        torch.tensor([0.8, 0.25]),
        torch.tensor([0, 1]),
    )
}


def test_stepping_stops_at_the_ends() -> None:
    s = ViewerState(index=0, num_samples=3)
    assert handle_key(s, "B").index == 0  # no wrap-around before the first sample
    s = handle_key(handle_key(s, "N"), "right")  # key names are case-insensitive
    assert s.index == 2
    assert handle_key(s, "SPACE").index == 2  # nor after the last
    assert handle_key(s, "LEFT").index == 1


def test_toggles_colours_threshold_and_quit() -> None:
    s = ViewerState(index=0, num_samples=1, colour_modes=("height", "intensity", "uniform"))
    assert not handle_key(s, "G").show_gt and handle_key(handle_key(s, "G"), "G").show_gt
    assert not handle_key(s, "D").show_pred and handle_key(s, "D").show_gt
    modes = [s.colour_by]
    for _ in range(3):
        s = handle_key(s, "C")
        modes.append(s.colour_by)
    assert modes == ["height", "intensity", "uniform", "height"]
    t = ViewerState(index=0, num_samples=1, score_threshold=0.3)
    assert handle_key(t, "UP").score_threshold == pytest.approx(0.4)
    assert handle_key(t, "DOWN").score_threshold == pytest.approx(0.2)
    top = ViewerState(index=0, num_samples=1, score_threshold=0.95)
    assert handle_key(top, "UP").score_threshold == 1.0  # clamped to [0, 1]
    assert handle_key(ViewerState(0, 1, score_threshold=0.05), "DOWN").score_threshold == 0.0
    assert handle_key(s, "Q").quit and handle_key(s, "ESCAPE").quit
    assert handle_key(s, "Z") == s  # unbound key: nothing changes
    with pytest.raises(ValueError, match="unknown viewer action"):
        apply_action(s, "explode")  # type: ignore[arg-type]


def test_state_validation_and_key_codes() -> None:
    with pytest.raises(ValueError, match="index"):
        ViewerState(index=3, num_samples=3)
    with pytest.raises(ValueError, match="num_samples"):
        ViewerState(index=0, num_samples=0)
    with pytest.raises(ValueError, match="colour_modes"):
        ViewerState(index=0, num_samples=1, colour_by="time_lag", colour_modes=("height",))
    with pytest.raises(ValueError, match="score_threshold"):
        ViewerState(index=0, num_samples=1, score_threshold=-0.1)
    assert key_code("N") == ord("N") and key_code("RIGHT") == GLFW_KEY_CODES["RIGHT"] == 262
    assert len({key_code(k) for k in KEY_ACTIONS}) == len(KEY_ACTIONS)  # no two keys share a code
    with pytest.raises(ValueError, match="unknown key name"):
        key_code("F13")


def test_scene_source_follows_the_state() -> None:
    samples = [_sample(0), _sample(1), _sample(2, ("x", "y", "z", "intensity"))]
    src = SceneSource(samples, DETS)
    state = src.initial_state(score_threshold=0.3)
    assert state.colour_modes == ("height", "intensity", "time_lag", "uniform")
    scene = src.scene(state)
    assert len(scene.gt) == 1 and len(scene.pred) == 1 and scene.num_below_threshold == 1
    assert scene.title == "[1/3] tok0"
    assert "GT on" in status_line(state, scene) and "score >= 0.3" in status_line(state, scene)
    assert len(src.scene(handle_key(state, "DOWN")).pred) == 2  # threshold 0.2 shows the 0.25 detection
    assert len(src.scene(handle_key(state, "G")).gt) == 0 and len(src.scene(handle_key(state, "D")).pred) == 0
    last = handle_key(handle_key(state, "N"), "N")
    assert src.scene(last).title == "[3/3] tok2" and len(src.scene(last).pred) == 0  # no detections for tok2
    # time_lag colouring on a sample without that channel falls back to height instead of failing
    lag = ViewerState(index=2, num_samples=3, colour_by="time_lag")
    assert src.scene(lag).points.shape == (200, 3)
    assert colour_modes_for(("x", "y", "z")) == ("height", "uniform")
    with pytest.raises(ValueError, match="at least one sample"):
        SceneSource([])


_SMOKE = textwrap.dedent(
    """
    import numpy as np, torch
    from perception.structures import Boxes3D, Points, Sample
    from perception.viz.viewer import SceneSource, Viewer
    g = torch.Generator().manual_seed(0)
    def mk(i):
        pts = torch.cat([torch.rand(2000, 2, generator=g) * 30 - 15, torch.rand(2000, 1, generator=g) - 2.0,
                         torch.rand(2000, 2, generator=g)], 1)
        return Sample(f"s{i}", Points(pts), Boxes3D(torch.tensor([[6.0, 2.0, -1.0, 4.0, 2.0, 1.6, 0.3]])),
                      torch.tensor([0]), ("car",))
    lines = []
    v = Viewer(SceneSource([mk(0), mk(1)]), [-20, -20, -3, 20, 20, 3], size=(320, 240), on_status=lines.append)
    v.open(visible=True)
    car = np.array([230, 25, 75])
    def car_pixels():
        img = v.capture()
        assert img.shape == (240, 320, 3), img.shape
        return int((np.abs(img.astype(int) - car).sum(axis=2) < 40).sum()), len(np.unique(img.reshape(-1, 3), axis=0))
    n0, colours = car_pixels()
    assert n0 > 30 and colours > 20, (n0, colours)
    assert v.press("N") and v.state.index == 1
    assert v.press("G") and not v.state.show_gt
    n1, _ = car_pixels()
    assert n1 == 0, n1
    v.press("Q")
    assert v.state.quit and len(lines) == 3, lines
    v.vis.destroy_window()
    print("VIEWER_SMOKE_OK")
    """
)


@pytest.mark.skipif(shutil.which("xvfb-run") is None, reason="Xvfb not installed (apt-get install -y xvfb)")
def test_viewer_window_under_xvfb(tmp_path: Path) -> None:
    script = tmp_path / "smoke.py"
    script.write_text(_SMOKE)
    proc = subprocess.run(
        ["xvfb-run", "-a", "-s", "-screen 0 640x480x24", sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0 and "VIEWER_SMOKE_OK" in proc.stdout, (
        proc.stdout[-2000:] + proc.stderr[-3000:]
    )
