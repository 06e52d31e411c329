"""The main job of `make demo`, end to end on a tiny synthetic set: generate -> devkit -> typed sample -> pictures."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _load_demo_module():  # tools/ is not a package
    spec = importlib.util.spec_from_file_location("perception_demo_tool", REPO / "tools" / "demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("demo")
    data, out = tmp / "data", tmp / "out"
    demo = _load_demo_module()
    argv = [
        "--out", str(out), "--set", f"data.root={data}", "data.max_sweeps=3", "synthetic.scenes=2",
        "synthetic.samples=2", "synthetic.sweeps=2", "synthetic.cameras=front", "synthetic.seed=5",
    ]  # fmt: skip
    assert demo.main(argv) == 0
    return data, out


def test_demo_writes_pictures(demo_run: tuple[Path, Path]) -> None:
    _, out = demo_run
    bev = np.asarray(Image.open(out / "bev.png").convert("RGB"))
    assert bev.shape[0] > 400 and bev.shape[1] > 400
    assert len(np.unique(bev.reshape(-1, 3), axis=0)) > 50  # a real picture, not a blank canvas
    cams = np.asarray(Image.open(out / "cameras.png").convert("RGB"))
    assert cams.std() > 10


def test_demo_sample_agrees_with_the_devkit(demo_run: tuple[Path, Path]) -> None:
    from nuscenes import NuScenes

    from perception.demo_scene import load_devkit_sample

    data, _ = demo_run
    names = ("car", "truck", "construction_vehicle", "bus", "trailer", "barrier", "motorcycle", "bicycle",
             "pedestrian", "traffic_cone")  # fmt: skip
    loaded = load_devkit_sample(data, "v1.0-mini", names, max_sweeps=3)
    s = loaded.sample
    assert loaded.scene_name in ("scene-0103", "scene-0916")  # the devkit's mini_val scenes
    assert loaded.num_sweeps == 3 and s.points.tensor.shape[1] == 5
    lags = s.points.channel("time_lag")
    assert float(lags.min()) == 0.0 and 0.05 < float(lags.max()) < 0.2  # 20 Hz sweeps: 0.05 s apart
    assert len(s.boxes) > 0 and s.cameras is not None and s.cameras.names == ("CAM_FRONT",)

    # The boxes in our convention describe the devkit's boxes in the LiDAR frame: same corners as point sets.
    nusc = NuScenes("v1.0-mini", str(data), verbose=False)
    _, dk_boxes, _ = nusc.get_sample_data(nusc.get("sample", s.token)["data"]["LIDAR_TOP"])
    ours = s.boxes.corners().double().numpy()
    for i, b in enumerate(dk_boxes):
        np.testing.assert_allclose(np.sort(ours[i], axis=0), np.sort(b.corners().T, axis=0), atol=2e-3)

    # Keyframe points inside each box equal the annotation's num_lidar_pts (independent inside test).
    key = s.points.select(s.points.channel("time_lag") == 0).xyz.double()
    for i, box in enumerate(s.boxes.tensor.double()):
        d = key - box[:3]
        c, sn = math.cos(float(box[6])), math.sin(float(box[6]))
        lx, ly = d[:, 0] * c + d[:, 1] * sn, -d[:, 0] * sn + d[:, 1] * c
        inside = (lx.abs() <= box[3] / 2) & (ly.abs() <= box[4] / 2) & (d[:, 2].abs() <= box[5] / 2)
        # the devkit drops points within 1 m of the sensor in from_file_multisweep; objects are farther away
        assert int(inside.sum()) == loaded.num_lidar_pts[i]
    assert torch.isfinite(s.boxes.tensor).all()
