"""nuScenes devkit box <-> Boxes3D conversion: round trip and the meaning of every field."""

from __future__ import annotations

import math

import numpy as np
import torch
from pyquaternion import Quaternion

from perception.formats.nuscenes_boxes import boxes_from_devkit, boxes_to_devkit, velocity_known
from perception.structures import Boxes3D, limit_period


def test_devkit_round_trip() -> None:
    g = torch.Generator().manual_seed(0)
    t = torch.cat(
        [
            torch.randn(20, 3, generator=g) * 30,
            torch.rand(20, 3, generator=g) * 4 + 0.5,
            (torch.rand(20, 1, generator=g) - 0.5) * 2 * math.pi,
            torch.randn(20, 2, generator=g) * 5,
        ],
        dim=1,
    )
    back = boxes_from_devkit(boxes_to_devkit(Boxes3D(t)))
    torch.testing.assert_close(back.tensor[:, :6], t[:, :6])
    torch.testing.assert_close(back.tensor[:, 7:], t[:, 7:])
    assert limit_period(back.yaw - t[:, 6]).abs().max() < 1e-5


def test_devkit_fields_mean_what_the_convention_says() -> None:
    boxes = Boxes3D(torch.tensor([[10.0, 5.0, -1.0, 4.5, 1.9, 1.6, math.pi / 2]]))
    (box,) = boxes_to_devkit(boxes, names=["car"], scores=[0.7])
    np.testing.assert_allclose(box.wlh, [1.9, 4.5, 1.6], rtol=1e-6)  # width, length, height
    # The devkit's corners: its first four are the front face; the front is along +y for yaw = 90 degrees.
    front = box.corners()[:, :4].mean(axis=1)
    np.testing.assert_allclose(front, [10.0, 5.0 + 2.25, -1.0], atol=1e-5)
    assert box.name == "car" and abs(box.score - 0.7) < 1e-9
    # the devkit's corners and ours describe the same solid
    ours = boxes.corners()[0].double().numpy()
    np.testing.assert_allclose(np.sort(ours, axis=0), np.sort(box.corners().T, axis=0), atol=1e-5)


def test_unknown_velocity_becomes_zero_and_is_reported() -> None:
    from nuscenes.utils.data_classes import Box

    b = Box(
        [0, 0, 0], [2, 4, 1.5], Quaternion(axis=[0, 0, 1], radians=0.3), velocity=(np.nan, np.nan, np.nan)
    )
    out = boxes_from_devkit([b])
    assert out.velocity is not None and out.velocity.abs().sum() == 0
    assert velocity_known([b]).tolist() == [False]
    assert len(boxes_from_devkit([])) == 0 and boxes_from_devkit([], with_velocity=False).tensor.shape == (
        0,
        7,
    )
