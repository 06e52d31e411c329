"""TensorRT engine plans for an export (:mod:`perception.deploy.tensorrt_engine`).

Here, without TensorRT: the plan of the demo detector's DSVT manifest (the ONNX file and builder flags per
precision, the profiles' per-input min / opt / max shapes equal to the manifest's, ``profiles="first"``), profile
selection on real frames (the first covering one, a frame below the first profile's range going to the bucket
that starts at 1, clear errors for a frame outside every profile), the frame's axis sizes, the plan's JSON round
trip and the errors (unknown precision, missing INT8 file, profiles missing). The manifest is written the way
:func:`~perception.deploy.dsvt_export.export_dsvt` writes it (the graph's layout, the profile functions, three
real frames) but without tracing the ONNX file (10 s); the TensorRT test traces it.

With TensorRT and a CUDA device: the engine built from a real export (fp32, every profile) runs frames of two
buckets and matches onnxruntime (max abs error <= 1e-3 on every output).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import perception
from perception.datasets.synthetic import make_lidar_scan
from perception.deploy.dense_export import _flatten
from perception.deploy.dsvt_graph import DSVTGraph
from perception.deploy.manifest import ExportManifest, TensorSpec
from perception.deploy.profiles import ShapeProfile, bucket_profiles, profile_from_sizes
from perception.deploy.tensorrt_engine import (
    TENSORRT_MISSING,
    EnginePlan,
    axis_sizes,
    build_engine,
    plan_engine,
    select_profile,
    torch_dtype,
)

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO / "checkpoints" / "demo_detector.pth"
COLUMNS = ("x", "y", "z", "intensity", "time_lag")
pytestmark = pytest.mark.filterwarnings(
    "ignore::FutureWarning", "ignore::DeprecationWarning", "ignore::UserWarning"
)


@pytest.fixture(scope="module")
def detector() -> perception.Detector:
    return perception.load_detector(CHECKPOINT, device="cpu")


@pytest.fixture(scope="module")
def graph(detector: perception.Detector) -> DSVTGraph:
    return DSVTGraph(
        detector.model
    )  # runs the dense part once (seconds on a busy 2-core machine): build it once


@pytest.fixture(scope="module")
def frames(detector: perception.Detector, graph: DSVTGraph) -> list[dict[str, torch.Tensor]]:
    """Graph inputs of three simulated 32-beam scans, thinned differently (different voxel and set counts)."""
    model = detector.model
    out = []
    for seed, keep in ((0, 1), (1, 2), (2, 4)):
        pts = make_lidar_scan(num_sweeps=1, beams=32, seed=seed)[::keep]
        with torch.no_grad():
            sparse = model.voxel_features(detector.prepare(pts, columns=COLUMNS).batch)
        out.append(graph.feeds(sparse, model.backbone_3d.geometry(sparse)))
    return out


@pytest.fixture(scope="module")
def other_frames(detector: perception.Detector, graph: DSVTGraph) -> dict[str, dict[str, torch.Tensor]]:
    """Two frames the export did not see: ``"small"`` (a scan cut to +-15 m: fewer voxels and sets than any export
    frame) and ``"gap"`` (a scan thinned 8x: fewer voxels than any export frame, more sets than the smallest)."""
    model = detector.model
    scan = make_lidar_scan(num_sweeps=1, beams=32, seed=5)
    out = {}
    for name, pts in (("small", scan[np.abs(scan[:, :2]).max(axis=1) < 15]), ("gap", scan[::8])):
        with torch.no_grad():
            sparse = model.voxel_features(detector.prepare(pts, columns=COLUMNS).batch)
        out[name] = graph.feeds(sparse, model.backbone_3d.geometry(sparse))
    return out


def _sizes(graph: DSVTGraph, frames: list[dict[str, torch.Tensor]]) -> list[dict[str, int]]:
    return [DSVTGraph.axis_sizes(graph.layout, f) for f in frames]


@pytest.fixture(scope="module")
def export_dir(
    graph: DSVTGraph, frames: list[dict[str, torch.Tensor]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """``manifest.json`` as ``export_dsvt(..., buckets=2)`` writes it for the demo detector (no ONNX file)."""
    sizes = _sizes(graph, frames)
    # the head's outputs on an all-zero BEV map, which DenseStage computed when it was built (shapes, dtypes)
    outputs = [t for _, t in _flatten(graph.dense._template)]
    folder = tmp_path_factory.mktemp("trt_plan")
    ExportManifest(
        onnx=folder / "model.onnx",
        kind="dsvt",
        part="DSVT + BEV scatter + bev_backbone + head",
        outside=("voxelize", "vfe", "set partition + pooling windows (numba)", "decode", "nms"),
        inputs=graph.layout.inputs,
        outputs=tuple(
            TensorSpec(n, tuple(t.shape), str(t.dtype).removeprefix("torch."))
            for n, t in zip(graph.output_names, outputs, strict=True)
        ),
        dynamic_axes=graph.layout.dynamic_axes,
        max_batch=1,
        opset=18,
        operators=(),
        checkpoint_sha256=None,
        config_sha256="",
        decode={},
        profiles=(profile_from_sizes(sizes), *bucket_profiles(sizes, 2, by="voxels0")),
        variants={"fp32": "model.onnx"},
    ).write(folder)
    return folder


def _with_variants(folder: Path, tmp_path: Path, **variants: str) -> Path:
    m = json.loads((folder / "manifest.json").read_text())
    m["variants"].update(variants)
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    return tmp_path


def test_plan_shapes_are_the_manifests(export_dir: Path) -> None:
    m = json.loads((export_dir / "manifest.json").read_text())
    plan = plan_engine(export_dir)
    assert plan.onnx == export_dir / "model.onnx" and plan.source == "fp32" and plan.flags == ()
    assert not plan.tf32 and not plan.strongly_typed and plan.workspace_bytes == 4 << 30
    assert [s.name for s in plan.inputs] == [i["name"] for i in m["inputs"]]
    assert plan.outputs == tuple(o["name"] for o in m["outputs"]) and plan.outputs[0] == "tasks0.heatmap"
    assert len(plan.profiles) == len(m["profiles"]) == 3 and plan.manifest_profiles == (0, 1, 2)
    assert len(plan.dynamic_inputs) == len(m["inputs"])  # every DSVT input has a voxel or set axis
    for i, prof in enumerate(m["profiles"]):
        shapes = plan.profile_shapes(i)
        for spec in m["inputs"]:
            want = tuple(
                tuple(prof["dims"][d][k] if isinstance(d, str) else d for d in spec["shape"])
                for k in range(3)
            )
            assert shapes[spec["name"]] == want, (i, spec["name"])
    lo, opt, hi = plan.profile_shapes(1)["s0.c0.voxel_index"]
    assert lo == (2, 1, 36) and opt[1] <= hi[1] and lo[1] <= opt[1]  # bucket 0 starts at 1 set
    text = plan.describe()
    assert "profile 2 (manifest profile 2): voxels0" in text and "s0.c1.keep: 2x" in text
    assert EnginePlan.from_json(plan.to_json()) == plan


def test_plan_options(export_dir: Path, tmp_path: Path) -> None:
    first = plan_engine(export_dir, profiles="first")
    assert first.profiles == plan_engine(export_dir).profiles[:1] and first.manifest_profiles == (0,)
    fp16 = plan_engine(export_dir, precision="fp16", workspace_bytes=1 << 30, tf32=True)
    assert (
        fp16.flags == ("FP16",) and fp16.onnx == export_dir / "model.onnx" and fp16.workspace_bytes == 1 << 30
    )
    with_fp16 = _with_variants(export_dir, tmp_path, fp16="model.fp16.onnx")
    typed = plan_engine(with_fp16, precision="fp16", strongly_typed=True)
    assert typed.flags == () and typed.onnx.name == "model.fp16.onnx" and typed.strongly_typed
    int8 = plan_engine(_with_variants(export_dir, tmp_path, int8="model.int8.onnx"), precision="int8")
    assert int8.flags == ("INT8",) and int8.onnx == tmp_path / "model.int8.onnx" and int8.source == "int8"


def test_plan_errors(export_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"precision must be one of \('fp32', 'fp16', 'int8'\), got 'bf16'"):
        plan_engine(export_dir, precision="bf16")
    with pytest.raises(ValueError, match=r"has no 'int8' file \(a Q/DQ file.*it has \['fp32'\]"):
        plan_engine(export_dir, precision="int8")
    with pytest.raises(ValueError, match="has no 'fp16' file"):
        plan_engine(export_dir, precision="fp16", strongly_typed=True)
    with pytest.raises(ValueError, match="builds from the int8 file, not the 'fp32' one"):
        plan_engine(export_dir, precision="int8", source="fp32")
    with pytest.raises(ValueError, match="profiles must be 'all' or 'first'"):
        plan_engine(export_dir, profiles="buckets")
    with pytest.raises(ValueError, match="at least 1 MiB"):
        plan_engine(export_dir, workspace_bytes=1000)
    with pytest.raises(FileNotFoundError, match="not a folder tools/export.py wrote"):
        plan_engine(tmp_path / "nothing")
    m = json.loads((export_dir / "manifest.json").read_text())
    with pytest.raises(
        ValueError, match=r"dynamic axes \['sets0_0', 'sets0_1', 'voxels0'\] but .* no profiles"
    ):
        EnginePlan.from_manifest({**m, "profiles": []}, export_dir)
    m["profiles"][1]["dims"].pop("sets0_1")
    with pytest.raises(ValueError, match=r"profile 1 has no range for axes \['sets0_1'\]"):
        EnginePlan.from_manifest(m, export_dir)


def test_select_profile_on_real_frames(
    graph: DSVTGraph,
    frames: list[dict[str, torch.Tensor]],
    other_frames: dict[str, dict[str, torch.Tensor]],
    export_dir: Path,
) -> None:
    plan = plan_engine(export_dir)
    sizes = _sizes(graph, frames)
    for feeds, s in zip(frames, sizes, strict=True):
        assert axis_sizes(plan.inputs, feeds) == s
        assert select_profile(plan, s) == 0  # the first profile covers every frame the export saw
    full = plan.profiles[0]
    small = axis_sizes(plan.inputs, other_frames["small"])
    assert all(v < full.dims[k][0] for k, v in small.items())  # below the smallest frame seen, on every axis
    assert select_profile(plan, small) == 1  # bucket 0, whose range starts at 1
    gap = axis_sizes(plan.inputs, other_frames["gap"])
    with pytest.raises(
        ValueError, match="fits some profile, but no profile holds them all: profile 0: voxels0 = "
    ):
        select_profile(plan, gap)  # bucket 0's set ranges end at its frames' largest set counts
    first = plan_engine(export_dir, profiles="first")
    with pytest.raises(ValueError, match=rf"outside every profile.*voxels0 = {small['voxels0']} \(ranges: "):
        select_profile(first, small)
    big = {**sizes[0], "voxels0": full.dims["voxels0"][2] + 1}
    with pytest.raises(
        ValueError, match=r"voxels0 = \d+ \(ranges: \d+\.\.\d+, 1\.\.\d+, \d+\.\.\d+\)"
    ) as err:
        select_profile(plan, big)
    assert "sets0_0" not in str(err.value)  # only the axis outside every range is named
    with pytest.raises(ValueError, match=r"lack the axes \['sets0_1'\]"):
        select_profile(plan, {"voxels0": 10, "sets0_0": 2})
    low, high = ShapeProfile({"a": (1, 1, 5), "b": (1, 1, 5)}), ShapeProfile({"a": (6, 6, 9), "b": (6, 6, 9)})
    two = dataclasses.replace(plan, profiles=(low, high))
    with pytest.raises(
        ValueError, match=r"no profile holds them all: profile 0: b = 7 not in 1\.\.5; profile 1"
    ):
        select_profile(two, {"a": 2, "b": 7})
    assert select_profile(dataclasses.replace(plan, profiles=()), {}) == 0  # a static graph


def test_axis_sizes_errors(export_dir: Path, frames: list[dict[str, torch.Tensor]]) -> None:
    plan = plan_engine(export_dir)
    feeds = dict(frames[0])
    with pytest.raises(ValueError, match="lack the input 's0.c1.keep'"):
        axis_sizes(plan.inputs, {k: v for k, v in feeds.items() if k != "s0.c1.keep"})
    with pytest.raises(
        ValueError, match=r"'voxel_features' has shape \(\d+, 31\), the graph's is \('voxels0', 32\)"
    ):
        axis_sizes(plan.inputs, {**feeds, "voxel_features": feeds["voxel_features"][:, :31]})
    with pytest.raises(ValueError, match="axis 'voxels0' is .* in an earlier input but"):
        axis_sizes(plan.inputs, {**feeds, "coords": feeds["coords"][:-1]})


def test_dense_manifest_plan(tmp_path: Path) -> None:
    """A dense export: the batch axis alone is dynamic; a static one (max_batch 1) has no profile."""
    spec = {"name": "bev", "shape": ["batch", 32, 128, 128], "dtype": "float32"}
    profiles = [{"dims": {"batch": [1, 1, 4]}}]
    m = {
        "onnx": "dense.onnx",
        "inputs": [spec],
        "outputs": [{"name": "tasks0.heatmap"}],
        "profiles": profiles,
    }
    plan = EnginePlan.from_manifest(m, tmp_path)
    assert plan.onnx == tmp_path / "dense.onnx"
    assert plan.profile_shapes(0) == {"bev": ((1, 32, 128, 128), (1, 32, 128, 128), (4, 32, 128, 128))}
    assert select_profile(plan, {"batch": 3}) == 0
    static = EnginePlan.from_manifest(
        {**m, "inputs": [{**spec, "shape": [1, 32, 128, 128]}], "profiles": []}, tmp_path
    )
    assert static.profiles == () and static.dynamic_inputs == () and select_profile(static, {}) == 0
    assert "static graph" in static.describe()


def test_dtypes() -> None:
    assert torch_dtype("FLOAT") is torch.float32 and torch_dtype("DataType.INT64") is torch.int64
    assert torch_dtype("BOOL") is torch.bool and torch_dtype("INT32") is torch.int32
    assert torch_dtype("HALF") is torch.float16
    with pytest.raises(ValueError, match="FP8 has no torch dtype"):
        torch_dtype("FP8")


def test_build_without_tensorrt_says_so(export_dir: Path) -> None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("TensorRT is installed here: test_engine_matches_onnxruntime builds one")
    with pytest.raises(ImportError, match="TensorRT is not installed here"):
        build_engine(plan_engine(export_dir), export_dir / "model.plan")


def test_engine_matches_onnxruntime(
    detector: perception.Detector,
    frames: list[dict[str, torch.Tensor]],
    other_frames: dict[str, dict[str, torch.Tensor]],
    tmp_path: Path,
) -> None:
    """fp32 engine with every profile vs onnxruntime on the export's frames and one smaller one (bucket 0)."""
    pytest.importorskip("tensorrt", reason=TENSORRT_MISSING)
    if not torch.cuda.is_available():
        pytest.skip("TensorRT engines run on a CUDA device; torch sees none here")
    from perception.deploy.dsvt_export import export_dsvt
    from perception.deploy.runtime import OnnxModel
    from perception.deploy.tensorrt_engine import TensorRTEngine

    model = detector.model
    export_dsvt(model, tmp_path, config=detector.config, frames=frames, checkpoint=CHECKPOINT, buckets=2)
    plan = plan_engine(tmp_path)
    engine = TensorRTEngine(build_engine(plan, tmp_path / "model.fp32.plan"))
    onnx = OnnxModel(model, tmp_path)
    chosen = []
    for feeds in (*frames, other_frames["small"]):
        chosen.append(select_profile(engine.plan, axis_sizes(engine.plan.inputs, feeds)))
        got, ref = engine.run(feeds), onnx.run_graph(feeds)
        for name, g, r in zip(plan.outputs, got, ref, strict=True):
            assert g.shape == r.shape, name
            assert float((g.cpu().float() - r.float()).abs().max()) <= 1e-3, name
    assert chosen[:3] == [0, 0, 0] and chosen[3] == 1, chosen  # the smaller frame switches profiles


def test_build_engine_tool_prints_the_plan(
    export_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``tools/build_engine.py``: the plan is printed; without TensorRT it exits 3 saying nothing was built."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("_build_engine_tool", REPO / "tools" / "build_engine.py")
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails, as where it is not installed
    assert tool.main(["--export", str(export_dir), "--profiles", "first"]) == 3
    out, err = capsys.readouterr()
    assert "tensorrt is not installed; plan printed, nothing built" in err
    first = plan_engine(export_dir, profiles="first")
    assert out.strip() == first.describe() and "profile 1" not in out
    assert tool.main(["--export", str(export_dir), "--precision", "int8"]) == 2
    assert "has no 'int8' file" in capsys.readouterr().err
