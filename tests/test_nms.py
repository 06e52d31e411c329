"""Rotated BEV NMS and circle NMS: numba CPU vs torch reference vs numba CUDA (simulator), vs independent
brute-force references, ordering/tie rules, limits, errors and greedy-NMS properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import Polygon

from perception.ops.iou3d import boxes_iou_bev
from perception.ops.nms import circle_nms, nms_bev


def clustered_boxes(
    n: int, seed: int, clusters: int = 8, extent: float = 40.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Detections jittered around a few objects (so that NMS has work to do) and their scores."""
    g = torch.Generator().manual_seed(seed)
    objects = torch.cat(
        [
            torch.rand(clusters, 2, generator=g) * extent,
            torch.rand(clusters, 1, generator=g),
            torch.rand(clusters, 3, generator=g) * 2 + torch.tensor([3.0, 1.5, 1.5]),
            torch.rand(clusters, 1, generator=g) * 2 * math.pi,
        ],
        dim=1,
    )
    which = torch.randint(0, clusters, (n,), generator=g)
    boxes = objects[which] + torch.randn(n, 7, generator=g) * torch.tensor(
        [0.6, 0.6, 0.1, 0.3, 0.2, 0.1, 0.3]
    )
    boxes[:, 3:6] = boxes[:, 3:6].clamp(min=0.3)
    scores = torch.rand(n, generator=g)
    return boxes, scores


def greedy(order: list[int], suppress: list[list[bool]], post_max: int | None = None) -> list[int]:
    """Textbook greedy NMS over a precomputed suppression relation."""
    keep: list[int] = []
    for i in order:
        if any(suppress[k][i] for k in keep):
            continue
        keep.append(i)
        if post_max is not None and len(keep) == post_max:
            break
    return keep


def polygon(box: torch.Tensor) -> Polygon:
    x, y, _, dx, dy, _, yaw = box[:7].double().tolist()
    c, s = math.cos(yaw), math.sin(yaw)
    corners = [(u * dx / 2, v * dy / 2) for u, v in ((1, 1), (-1, 1), (-1, -1), (1, -1))]
    return Polygon([(x + c * u - s * v, y + s * u + c * v) for u, v in corners])


@pytest.mark.parametrize("threshold", [0.0, 0.1, 0.5, 0.8])
@pytest.mark.parametrize("limits", [(None, None), (150, 20), (40, None)])
def test_nms_cpu_equals_torch_reference(threshold: float, limits: tuple[int | None, int | None]) -> None:
    boxes, scores = clustered_boxes(300, seed=int(threshold * 10))
    pre, post = limits
    cpu = nms_bev(boxes, scores, threshold, pre, post, backend="cpu")
    ref = nms_bev(boxes, scores, threshold, pre, post, backend="torch")
    assert cpu.dtype == torch.int64
    assert torch.equal(cpu, ref)
    assert 0 < len(cpu) <= (pre or 300)
    if threshold <= 0.5:
        order = torch.sort(scores, descending=True, stable=True).indices
        assert not torch.equal(cpu, order[: len(cpu)])  # something was suppressed
    if post is not None:
        assert len(cpu) <= post


def test_nms_matches_shapely_brute_force() -> None:
    boxes, scores = clustered_boxes(60, seed=11, clusters=5, extent=15.0)
    polys = [polygon(b) for b in boxes.double()]
    n = len(polys)
    iou = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            inter = polys[i].intersection(polys[j]).area
            iou[i][j] = inter / (polys[i].area + polys[j].area - inter)
    order = sorted(range(n), key=lambda i: (-scores[i].item(), i))
    for threshold in (0.05, 0.3, 0.6):
        near = [abs(v - threshold) < 1e-5 for row in iou for v in row]
        assert not any(near)  # no decision within rounding of the threshold
        expected = greedy(order, [[v > threshold for v in row] for row in iou])
        assert nms_bev(boxes, scores, threshold).tolist() == expected


def test_nms_cuda_matches_cpu(cuda_backend_device: torch.device) -> None:
    # 70 boxes: two 64-bit words per mask row.
    boxes, scores = clustered_boxes(70, seed=3, clusters=5, extent=12.0)
    for threshold, pre, post in ((0.2, None, None), (0.5, 30, 6)):
        cpu = nms_bev(boxes, scores, threshold, pre, post, backend="cpu")
        cuda = nms_bev(
            boxes.to(cuda_backend_device),
            scores.to(cuda_backend_device),
            threshold,
            pre,
            post,
            backend="cuda",
        )
        assert cuda.device == cuda_backend_device
        assert torch.equal(cuda.cpu(), cpu)
        assert len(cpu) < 70
    # 66 identical boxes: every bit of the mask is set (including bit 63, the int64 sign bit); only the best survives.
    same = torch.tensor([[1.0, 2.0, 0.0, 4.0, 2.0, 1.5, 0.3]], device=cuda_backend_device).repeat(66, 1)
    ranks = torch.arange(66, device=cuda_backend_device).float()
    assert nms_bev(same, ranks, 0.5, backend="cuda").tolist() == [65]
    assert circle_nms(same, ranks, 0.1, backend="cuda").tolist() == [65]


@pytest.mark.parametrize("backend", ["torch", "cpu", "cuda"])
def test_nms_ties_order_and_limits(backend: str, cuda_backend_device: torch.device) -> None:
    dev = cuda_backend_device if backend == "cuda" else torch.device("cpu")
    box = [0.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.3]
    far = [50.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.3]
    far2 = [-50.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.3]
    boxes = torch.tensor([far, box, box, box, far2], device=dev)
    scores = torch.tensor([0.5, 0.9, 0.9, 0.2, 0.5], device=dev)
    # Ties go to the lower index; identical boxes (IoU 1) suppress each other.
    assert nms_bev(boxes, scores, 0.5, backend=backend).tolist() == [1, 0, 4]
    # Threshold 1.0: IoU 1.0 is not > 1.0, nothing is suppressed.
    assert nms_bev(boxes, scores, 1.0, backend=backend).tolist() == [1, 2, 0, 4, 3]
    assert nms_bev(boxes, scores, 0.5, post_max=2, backend=backend).tolist() == [1, 0]
    assert nms_bev(boxes, scores, 0.5, pre_max=1, backend=backend).tolist() == [1]
    assert nms_bev(boxes, scores, 0.5, pre_max=0, backend=backend).tolist() == []
    assert nms_bev(boxes, scores, 0.5, post_max=0, backend=backend).tolist() == []
    empty = nms_bev(boxes[:0], scores[:0], 0.5, backend=backend)
    assert empty.shape == (0,) and empty.dtype == torch.int64
    # Circle NMS: same order rules.
    assert circle_nms(boxes, scores, 1.0, backend=backend).tolist() == [1, 0, 4]
    assert circle_nms(boxes, scores, 0.0, backend=backend).tolist() == [1, 0, 4]  # distance 0 <= 0
    assert circle_nms(boxes, scores, 60.0, backend=backend).tolist() == [1]
    assert circle_nms(boxes, scores, 60.0, post_max=0, backend=backend).tolist() == []


def test_nms_bad_inputs() -> None:
    boxes, scores = clustered_boxes(5, seed=0)
    with pytest.raises(ValueError, match=r"scores must have shape \(5,\), got \(4,\)"):
        nms_bev(boxes, scores[:4], 0.5)
    with pytest.raises(TypeError, match="scores must have dtype"):
        nms_bev(boxes, (scores * 10).long(), 0.5)
    bad = scores.clone()
    bad[2] = float("nan")
    with pytest.raises(ValueError, match="scores contains NaN or inf"):
        nms_bev(boxes, bad, 0.5)
    with pytest.raises(ValueError, match="iou_threshold must be in"):
        nms_bev(boxes, scores, 1.5)
    with pytest.raises(ValueError, match="iou_threshold must be in"):
        nms_bev(boxes, scores, float("nan"))
    with pytest.raises(ValueError, match="pre_max must be None or an int >= 0"):
        nms_bev(boxes, scores, 0.5, pre_max=-1)
    with pytest.raises(ValueError, match="post_max must be None or an int >= 0"):
        nms_bev(boxes, scores, 0.5, post_max=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"boxes must have shape \(N, 7\+\)"):
        nms_bev(boxes[:, :5], scores, 0.5)
    nan_boxes = boxes.clone()
    nan_boxes[0, 3] = float("nan")
    with pytest.raises(ValueError, match="boxes contains NaN"):
        nms_bev(nan_boxes, scores, 0.5)
    with pytest.raises(ValueError, match=r"centres must have shape \(N, 2\+\)"):
        circle_nms(boxes[:, :1], scores, 1.0)
    with pytest.raises(ValueError, match="distance must be a finite number >= 0"):
        circle_nms(boxes, scores, -1.0)
    nan_centres = boxes.clone()
    nan_centres[1, 1] = float("nan")
    with pytest.raises(ValueError, match="centres contains NaN or inf"):
        circle_nms(nan_centres, scores, 1.0)


@pytest.mark.parametrize("distance", [0.5, 1.5, 4.0])
def test_circle_nms_cpu_equals_torch_and_centerpoint_rule(distance: float) -> None:
    boxes, scores = clustered_boxes(250, seed=5)
    centres = boxes[:, :3]
    cpu = circle_nms(centres, scores, distance, backend="cpu")
    ref = circle_nms(centres, scores, distance, backend="torch")
    assert torch.equal(cpu, ref)
    # CenterPoint's rule: suppress when the squared distance is <= thresh (thresh = distance ** 2 here).
    xy = centres[:, :2].double()
    d2 = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1)
    order = sorted(range(len(xy)), key=lambda i: (-scores[i].item(), i))
    expected = greedy(order, (d2 <= distance**2).tolist())
    assert cpu.tolist() == expected
    # Only x, y matter: (N, 2), (N, 3) and boxes (N, 7) give the same result; post_max truncates.
    assert torch.equal(circle_nms(boxes, scores, distance), cpu)
    assert torch.equal(circle_nms(centres[:, :2].double(), scores.double(), distance), cpu)
    assert torch.equal(circle_nms(centres, scores, distance, post_max=3), cpu[:3])


def test_circle_nms_boundary_is_inclusive() -> None:
    centres = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 5.5]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    for backend in ("torch", "cpu"):
        assert circle_nms(centres, scores, 5.0, backend=backend).tolist() == [0, 2]  # distance exactly 5
        assert circle_nms(centres, scores, 4.999, backend=backend).tolist() == [0, 1]  # 2 is 3.35 m from 1


def test_circle_nms_cuda_matches_cpu(cuda_backend_device: torch.device) -> None:
    boxes, scores = clustered_boxes(130, seed=9, clusters=6, extent=20.0)
    for distance, post in ((1.0, None), (2.5, 5)):
        cpu = circle_nms(boxes, scores, distance, post_max=post, backend="cpu")
        cuda = circle_nms(
            boxes.to(cuda_backend_device),
            scores.to(cuda_backend_device),
            distance,
            post_max=post,
            backend="cuda",
        )
        assert torch.equal(cuda.cpu(), cpu)
        assert len(cpu) < 130


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), threshold=st.floats(0.0, 0.9), n=st.integers(1, 40))
def test_property_greedy_nms(seed: int, threshold: float, n: int) -> None:
    """Kept boxes never overlap above the threshold; every dropped box overlaps a higher-ranked kept box."""
    boxes, scores = clustered_boxes(n, seed, clusters=4, extent=10.0)
    keep = nms_bev(boxes, scores, threshold)
    assert len(set(keep.tolist())) == len(keep)
    assert torch.all(scores[keep][:-1] >= scores[keep][1:])
    iou = boxes_iou_bev(boxes, boxes).double()
    kept = keep.tolist()
    for a in range(len(kept)):
        for b in range(a + 1, len(kept)):
            assert iou[kept[a], kept[b]] <= threshold + 1e-6
    rank = {i: r for r, i in enumerate(sorted(range(n), key=lambda i: (-scores[i].item(), i)))}
    for j in set(range(n)) - set(kept):
        assert any(rank[k] < rank[j] and iou[k, j] > threshold - 1e-6 for k in kept)
