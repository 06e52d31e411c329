"""ONNX export of the whole DSVT network after the VFE (set indices, masks and in-window coordinates as inputs):
onnxruntime against torch eager at several voxel / set counts from real synthetic frames (max abs error <= 1e-4 on
every output, identical detections after decode + NMS), for the shipped one-stage demo detector and a three-stage
DSVT-voxel detector with attention pooling; the runtime equal to ``Detector.detect`` with per-stage times; empty
frames; the manifest (inputs, dynamic axes, profiles from the frames, trtexec line); the profile computation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import perception
from perception.deploy.dsvt_export import export_dsvt, pick_example
from perception.deploy.dsvt_graph import DSVTGraph
from perception.deploy.manifest import TENSORRT_OPS, file_sha256
from perception.deploy.profiles import ShapeProfile, bucket_profiles, profile_from_sizes
from perception.deploy.runtime import OnnxModel, OnnxRuntime

pytest.importorskip("onnxruntime")
REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO / "checkpoints" / "demo_detector.pth"
COLUMNS = ("x", "y", "z", "intensity", "ring")
pytestmark = pytest.mark.filterwarnings(
    "ignore::FutureWarning", "ignore::DeprecationWarning", "ignore::UserWarning"
)


@pytest.fixture(scope="module")
def detector() -> perception.Detector:
    return perception.load_detector(CHECKPOINT, device="cpu")


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """LIDAR_TOP files of a small synthetic nuScenes set (32 beams, as the demo detector was trained on)."""
    root = tmp_path_factory.mktemp("deploy_dsvt_nusc")
    subprocess.run(
        [sys.executable, str(REPO / "tools" / "create_data.py"), "synthetic", "--format", "nuscenes", "--out",
         str(root), "--scenes", "2", "--samples", "2", "--sweeps", "1", "--cameras", "none", "--seed", "7"],
        check=True, capture_output=True,
    )  # fmt: skip
    files = sorted((root / "samples" / "LIDAR_TOP").glob("*.pcd.bin"))
    assert len(files) >= 4
    return files[:4]


def _frames(detector: perception.Detector, model: torch.nn.Module, scans: list[Path]) -> list[tuple]:
    """``(VFE output, graph inputs)`` of four real frames, thinned differently so that their voxel and set counts
    differ."""
    graph = DSVTGraph(model)
    out = []
    for keep, path in zip((1, 2, 4, 3), scans, strict=True):
        pts = np.fromfile(path, dtype=np.float32).reshape(-1, 5)[::keep]
        with torch.no_grad():
            sparse = model.voxel_features(detector.prepare(pts, columns=COLUMNS).batch)
        out.append((sparse, graph.feeds(sparse, model.backbone_3d.geometry(sparse))))
    sizes = [graph.axis_sizes(graph.layout, f) for _, f in out]
    assert len({s["voxels0"] for s in sizes}) == 4, sizes
    return out


def _check_parity(model: torch.nn.Module, folder: Path, frames: list[dict], *, detections: bool) -> None:
    graph = DSVTGraph(model).eval()
    onnx_model = OnnxModel(model, folder)
    for sparse, feeds in frames:
        with torch.no_grad():  # the detector's own eager path (chunked CPU attention, its BEV scatter)
            ref = list(graph.dense(model.to_bev(model.backbone_3d(sparse))))
        got = onnx_model.run_graph(feeds)
        for name, g, r in zip(graph.output_names, got, ref, strict=True):
            assert g.shape == r.shape and g.dtype == r.dtype, name
            assert float((g - r).abs().max()) <= 1e-4, name
        if detections:
            (a,) = model.head.decode(graph.dense.head_output(ref))
            (b,) = model.head.decode(graph.dense.head_output(got))
            assert len(a) > 0 and torch.equal(a.labels, b.labels)
            torch.testing.assert_close(b.boxes.tensor, a.boxes.tensor, atol=1e-4, rtol=0)
            torch.testing.assert_close(b.scores, a.scores, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def demo_export(detector: perception.Detector, scans: list[Path], tmp_path_factory: pytest.TempPathFactory):
    frames = _frames(detector, detector.model, scans)
    out = tmp_path_factory.mktemp("dsvt_export")
    manifest = export_dsvt(
        detector.model,
        out,
        config=detector.config,
        frames=[f for _, f in frames[:3]],
        checkpoint=CHECKPOINT,
        buckets=2,
    )
    return out, manifest, frames


def test_demo_parity_at_four_voxel_counts(detector: perception.Detector, demo_export) -> None:
    folder, _, frames = demo_export
    _check_parity(detector.model, folder, frames, detections=True)  # frames[3] was not among the export's


def test_manifest(detector: perception.Detector, demo_export) -> None:
    folder, manifest, frames = demo_export
    m = json.loads((folder / "manifest.json").read_text())
    graph = DSVTGraph(detector.model)
    assert m["kind"] == "dsvt" and m["onnx"] == "model.onnx" and m["variants"] == {"fp32": "model.onnx"}
    names = [i["name"] for i in m["inputs"]]
    assert names == list(graph.layout.names)
    assert names[:2] == ["voxel_features", "coords"] and "s0.c1.coords_in_window" in names
    assert not any("pos" in n or "embed" in n for n in names)  # embeddings are computed in the graph
    assert m["dynamic_axes"]["s0.c0.voxel_index"] == {"1": "sets0_0"}
    assert m["dynamic_axes"]["voxel_features"] == {"0": "voxels0"}
    assert set(m["operators"]) <= TENSORRT_OPS and {"Softmax", "ScatterND", "Conv"} <= set(m["operators"])
    assert m["checkpoint_sha256"] == file_sha256(CHECKPOINT) and "set partition" in " ".join(m["outside"])
    sizes = [graph.axis_sizes(graph.layout, f) for _, f in frames[:3]]
    full, *buckets = manifest.profiles
    assert len(buckets) == 2 and all(full.covers(s) for s in sizes)
    assert all(any(b.covers(s) for b in buckets) for s in sizes)
    lo = min(s["voxels0"] for s in sizes)
    assert full.dims["voxels0"][0] == lo and f"--minShapes=voxel_features:{lo}x32" in m["trtexec"]
    assert m["profiles"][0]["dims"]["sets0_1"] == list(full.dims["sets0_1"])
    with pytest.raises(ValueError, match="has no 'int8' file"):
        OnnxModel(detector.model, folder, precision="int8")


def test_runtime_equals_detect(detector: perception.Detector, demo_export, scans: list[Path]) -> None:
    runtime = OnnxRuntime(detector, demo_export[0])
    for path in scans[:2]:
        timed = runtime.detect(path)
        ref = detector.detect(path)
        assert list(timed.times) == ["prepare", "vfe", "geometry", "engine", "postprocess"]
        assert all(t > 0 for t in timed.times.values())
        assert timed.result.names == ref.names and len(ref.names) > 0
        np.testing.assert_allclose(timed.result.boxes, ref.boxes, atol=1e-4)
    with pytest.raises(ValueError, match="needs a dense export"):
        runtime.model.run_dense(torch.zeros(1, 1))


def test_empty_frame_gives_the_torch_result(detector: perception.Detector, demo_export) -> None:
    """No point in range: no graph input; the outputs are the torch model's on an all-zero BEV map."""
    runtime = OnnxRuntime(detector, demo_export[0])
    far = np.array([[500.0, 500.0, 0.0, 1.0, 0.0]], dtype=np.float32)
    timed = runtime.detect(far, columns=COLUMNS)
    ref = detector.detect(far, columns=COLUMNS)
    assert timed.result.names == ref.names
    np.testing.assert_allclose(timed.result.boxes, ref.boxes, atol=1e-5)


def test_batch_of_two_is_run_per_sample(
    detector: perception.Detector, demo_export, scans: list[Path]
) -> None:
    from perception.structures import Batch

    model = detector.model
    batch = Batch.collate([detector.prepare(p).sample for p in scans[:2]])
    onnx_model = OnnxModel(model, demo_export[0])
    got = onnx_model.predict(batch)
    with torch.no_grad():
        ref = model.predict(batch)
    assert len(got) == len(ref) == 2
    for g, r in zip(got, ref, strict=True):
        assert torch.equal(g.labels, r.labels)
        torch.testing.assert_close(g.boxes.tensor, r.boxes.tensor, atol=1e-4, rtol=0)


def test_three_stage_dsvt_voxel_with_pooling(
    detector: perception.Detector, scans: list[Path], tmp_path: Path
):
    """A DSVT-voxel backbone (4 z layers, pooled 4 -> 2 -> 1 by attention pooling, as the authors' voxel model):
    every stage's sets, in-window coordinates and pooling indices are graph inputs."""
    from perception.config import load_config
    from perception.models.build import build_detector

    stage = "window_shape: [{z}, 16, 16], hybrid_factor: [1, 2, 2], shift: [0, 8, 8], set_size: 36, num_blocks: 1, "
    stage += "d_model: 32, num_heads: 4, dim_feedforward: 64"
    stages = [f"{{{stage.format(z=4)}, downsample_stride: [2, 1, 1]}}",
              f"{{{stage.format(z=2)}, downsample_stride: [2, 1, 1]}}",
              f"{{{stage.format(z=1)}}}"]  # fmt: skip
    cfg = load_config(
        REPO / "configs" / "tiny_dsvt_pillar_centerpoint.yaml",
        [
            "data.voxel_size=[0.4, 0.4, 2.0]",
            "model.vfe={dynamic_voxel: {filters: [32, 32]}}",
            f"model.backbone_3d.dsvt.stages=[{', '.join(stages)}]",
        ],
    )
    torch.manual_seed(0)
    model = build_detector(cfg.model, cfg.data).eval()
    frames = _frames(detector, model, scans)
    graph = DSVTGraph(model)
    names = graph.layout.names
    assert "s1.pool.mask" in names and "s2.pool.mask" not in names and "s2.c0.first_slot" in names
    # one block per stage, alternating window configurations across stages: 0, 1, 0
    assert "s1.c1.voxel_index" in names and "s1.c0.voxel_index" not in names and "s1.c0.keep" not in names
    assert "s2.c0.coords_in_window" in names and "s2.c1.coords_in_window" not in names
    export_dsvt(model, tmp_path, config=cfg, frames=[f for _, f in frames[:2]])
    _check_parity(model, tmp_path, frames, detections=False)  # random weights: no meaningful detections


def test_profiles() -> None:
    sizes = [{"voxels0": v, "sets0_0": v // 10} for v in (100, 400, 200, 300, 1000)]
    p = profile_from_sizes(sizes, margin=0.1)
    assert p.dims == {"voxels0": (100, 300, 1100), "sets0_0": (10, 30, 110)}
    assert p.covers({"voxels0": 1100, "sets0_0": 10}) and not p.covers({"voxels0": 1101, "sets0_0": 10})
    buckets = bucket_profiles(sizes, 2, by="voxels0", margin=0.1)
    assert buckets[0].dims["voxels0"] == (1, 100, 200) and buckets[1].dims["voxels0"] == (201, 400, 1100)
    assert all(any(b.covers(s) for b in buckets) for s in sizes)
    from perception.deploy.manifest import TensorSpec

    spec = TensorSpec("s0.c0.voxel_index", (2, "sets0_0", 36), "int64")
    assert p.shapes(spec) == ((2, 10, 36), (2, 30, 36), (2, 110, 36))
    assert ShapeProfile({"sets0_0": (1, 2, 3)}).trtexec_flags([spec]) == (
        "--minShapes=s0.c0.voxel_index:2x1x36 --optShapes=s0.c0.voxel_index:2x2x36 "
        "--maxShapes=s0.c0.voxel_index:2x3x36"
    )
    with pytest.raises(ValueError, match="at least one frame"):
        profile_from_sizes([])
    with pytest.raises(ValueError, match="empty axes"):
        profile_from_sizes([{"voxels0": 0}])
    with pytest.raises(ValueError, match=r"buckets must lie in \[1, 5\]"):
        bucket_profiles(sizes, 6, by="voxels0")


def test_pick_example() -> None:
    sizes = [{"voxels0": 1, "sets0_0": 1}, {"voxels0": 50, "sets0_0": 50}, {"voxels0": 40, "sets0_0": 4}]
    assert pick_example(sizes) == 2
    with pytest.raises(ValueError, match="no frame to trace"):
        pick_example(sizes[:2])


def test_not_a_dsvt_detector() -> None:
    from types import SimpleNamespace

    with pytest.raises(TypeError, match="dense part"):
        DSVTGraph(SimpleNamespace(backbone_3d=torch.nn.Identity()))  # type: ignore[arg-type]


def test_export_tool_with_fp16_and_int8(detector: perception.Detector, tmp_path: Path) -> None:
    """tools/export.py on the demo checkpoint with its config's (generated) data: the fp32 graph, an fp16 file
    (float32 I/O) close to it, and an INT8 Q/DQ file (head kept float) whose strongest detections match fp32's."""
    out = tmp_path / "export"
    done = subprocess.run(
        [sys.executable, str(REPO / "tools" / "export.py"), str(REPO / "configs" / "demo_detector.yaml"), "--ckpt",
         str(CHECKPOINT), "--out", str(out), "--int8", "--fp16", "--frames", "3", "--calib-samples", "3", "--set",
         f"data.root={tmp_path / 'data'}", "synthetic.scenes=3", "synthetic.samples=2"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["variants"] == {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
    q = m["quantization"]["int8"]
    assert q["calibration_frames"] == 3 and q["quantize_nodes"] > 0 and q["kept_float"] > 0
    assert q["spec"]["keep_float_scopes"] == ["dense.head", "head"]
    import onnx

    int8_ops = {n.op_type for n in onnx.load(str(out / "model.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= int8_ops <= TENSORRT_OPS
    half = onnx.load(str(out / "model.fp16.onnx"))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in half.graph.initializer)
    assert all(i.type.tensor_type.elem_type != onnx.TensorProto.FLOAT16 for i in half.graph.input)

    scan = sorted((tmp_path / "data" / "samples" / "LIDAR_TOP").glob("*.pcd.bin"))[0]
    batch = detector.prepare(scan).batch
    models = {p: OnnxModel(detector.model, out, precision=p) for p in ("fp32", "fp16", "int8")}
    outs = {p: mdl.run_frames(batch)[0] for p, mdl in models.items()}
    assert max(float((a - r).abs().max()) for a, r in zip(outs["fp16"], outs["fp32"], strict=True)) <= 0.05
    (ref,) = models["fp32"].decode(outs["fp32"])
    (got,) = models["int8"].decode(outs["int8"])
    top = ref.select(torch.arange(min(5, len(ref))))
    assert len(top) == 5
    for box, label, score in zip(top.boxes.tensor, top.labels, top.scores, strict=True):
        near = (got.boxes.tensor[:, :2] - box[:2]).norm(dim=1) < 0.5
        same = near & (got.labels == label)
        assert bool(same.any()) and float((got.scores[same] - score).abs().min()) < 0.1
