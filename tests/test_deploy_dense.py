"""ONNX export of the dense part (BEV backbone + head) and its runtime: onnxruntime against torch eager on BEV maps
of real synthetic frames with different voxel counts (max abs error <= 1e-4 on every output, identical detections
after decode + NMS), the dynamic batch axis, the runtime equal to ``Detector.detect``, the manifest, a TransFusion
head, and the errors (a manifest of another model, a batch over the export's maximum)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import perception
from perception.deploy.dense_export import DenseStage, export_dense
from perception.deploy.manifest import TENSORRT_OPS, file_sha256
from perception.deploy.runtime import OnnxRuntime

pytest.importorskip("onnxruntime")
REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO / "checkpoints" / "demo_detector.pth"
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def detector() -> perception.Detector:
    return perception.load_detector(CHECKPOINT, device="cpu")


@pytest.fixture(scope="module")
def exported(detector: perception.Detector, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export")
    export_dense(detector.model, out, config=detector.config, checkpoint=CHECKPOINT, max_batch=3)
    return out


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """LIDAR_TOP files of a small synthetic nuScenes set (32 beams, as the demo detector was trained on)."""
    root = tmp_path_factory.mktemp("deploy_nusc")
    subprocess.run(
        [sys.executable, str(REPO / "tools" / "create_data.py"), "synthetic", "--format", "nuscenes", "--out",
         str(root), "--scenes", "2", "--samples", "2", "--sweeps", "1", "--cameras", "none", "--seed", "7"],
        check=True, capture_output=True,
    )  # fmt: skip
    files = sorted((root / "samples" / "LIDAR_TOP").glob("*.pcd.bin"))
    assert len(files) >= 3
    return files[:3]


def _frames(detector: perception.Detector, scans: list[Path]) -> list[torch.Tensor]:
    """BEV maps of three real frames, thinned differently so that their voxel counts differ."""
    model = detector.model
    bevs, counts = [], []
    for keep, path in zip((1, 2, 4), scans, strict=True):
        pts = np.fromfile(path, dtype=np.float32).reshape(-1, 5)[::keep]
        prepared = detector.prepare(pts, columns=("x", "y", "z", "intensity", "ring"))
        with torch.no_grad():
            sparse = model.backbone_3d(model.voxel_features(prepared.batch))
            counts.append(int(sparse.features.shape[0]))
            bevs.append(model.to_bev(sparse))
    assert len(set(counts)) == 3, counts
    return bevs


def _session(folder: Path):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    return ort.InferenceSession(str(folder / "dense.onnx"), providers=["CPUExecutionProvider"])


def test_parity_on_real_frames(detector: perception.Detector, exported: Path, scans: list[Path]) -> None:
    stage = DenseStage(detector.model).eval()
    session = _session(exported)
    for bev in _frames(detector, scans):
        with torch.no_grad():
            ref = stage(bev)
        got = [torch.from_numpy(a) for a in session.run(None, {"bev": bev.numpy()})]
        for name, g, r in zip(stage.output_names, got, ref, strict=True):
            assert g.shape == r.shape and g.dtype == r.dtype, name
            assert float((g - r).abs().max()) <= 1e-4, name
        (a,) = detector.model.head.decode(stage.head_output(list(ref)))
        (b,) = detector.model.head.decode(stage.head_output(got))
        assert len(a) > 0 and torch.equal(a.labels, b.labels)
        torch.testing.assert_close(b.boxes.tensor, a.boxes.tensor, atol=1e-4, rtol=0)
        torch.testing.assert_close(b.scores, a.scores, atol=1e-5, rtol=0)


def test_dynamic_batch(detector: perception.Detector, exported: Path, scans: list[Path]) -> None:
    stage = DenseStage(detector.model).eval()
    bevs = _frames(detector, scans)
    got = _session(exported).run(None, {"bev": torch.cat(bevs).numpy()})
    for i, bev in enumerate(bevs):
        with torch.no_grad():
            ref = stage(bev)
        for g, r in zip(got, ref, strict=True):
            assert float((torch.from_numpy(g[i : i + 1]) - r).abs().max()) <= 1e-4


def test_runtime_equals_detect(detector: perception.Detector, exported: Path, scans: list[Path]) -> None:
    runtime = OnnxRuntime(detector, exported)
    for path in scans[:2]:
        timed = runtime.detect(path)
        ref = detector.detect(path)
        assert list(timed.times) == ["prepare", "lidar_to_bev", "engine", "postprocess"]
        assert all(t > 0 for t in timed.times.values()) and timed.total == pytest.approx(
            sum(timed.times.values())
        )
        assert timed.result.names == ref.names and timed.result.num_points == ref.num_points
        np.testing.assert_allclose(timed.result.boxes, ref.boxes, atol=1e-4)
    with pytest.raises(ValueError, match="max_batch 3"):
        runtime.model.run_dense(torch.zeros(4, *runtime.stage.input_shape))


def test_manifest(detector: perception.Detector, exported: Path) -> None:
    m = json.loads((exported / "manifest.json").read_text())
    stage = DenseStage(detector.model)
    assert m["onnx"] == "dense.onnx" and m["part"] == "bev_backbone + head" and m["max_batch"] == 3
    assert m["inputs"] == [{"name": "bev", "shape": ["batch", *stage.input_shape], "dtype": "float32"}]
    assert [o["name"] for o in m["outputs"]] == list(stage.output_names)
    assert all(o["shape"][0] == "batch" for o in m["outputs"]) and m["dynamic_axes"]["bev"] == {"0": "batch"}
    assert set(m["operators"]) <= TENSORRT_OPS and "Conv" in m["operators"]
    assert m["checkpoint_sha256"] == file_sha256(CHECKPOINT)
    assert m["decode"]["score_threshold"] == detector.model.head.config.decode.score_threshold
    c, h, w = stage.input_shape
    assert f"--maxShapes=bev:3x{c}x{h}x{w}" in m["trtexec"] and "voxelize" in m["outside"]


def test_manifest_of_another_model_is_refused(
    detector: perception.Detector, exported: Path, tmp_path: Path
) -> None:
    m = json.loads((exported / "manifest.json").read_text())
    m["outputs"] = m["outputs"][:-1]
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    (tmp_path / "dense.onnx").symlink_to(exported / "dense.onnx")
    with pytest.raises(ValueError, match="another model"):
        OnnxRuntime(detector, tmp_path)


def test_transfusion_head_exports(tmp_path: Path) -> None:
    """TransFusion's query selection (top-K) is in the graph; where the heatmap has fewer peaks than queries the
    remaining queries tie at score 0 and the two runtimes may order them differently, so the comparison is on the
    scored queries and on the decoded detections."""
    from perception.config import load_config
    from perception.models.build import build_detector

    cfg = load_config(REPO / "configs" / "tiny_dsvt_pillar_transfusion.yaml")
    torch.manual_seed(0)
    model = build_detector(cfg.model, cfg.data).eval()
    manifest = export_dense(model, tmp_path, config=cfg, max_batch=2)
    assert "TopK" in manifest.operators and manifest.checkpoint_sha256 is None
    stage = DenseStage(model).eval()
    session = _session(tmp_path)
    for b in (1, 2):
        bev = torch.randn(b, *stage.input_shape, generator=torch.Generator().manual_seed(b))
        with torch.no_grad():
            ref = dict(zip(stage.output_names, stage(bev), strict=True))
        got = dict(
            zip(
                stage.output_names,
                (torch.from_numpy(a) for a in session.run(None, {"bev": bev.numpy()})),
                strict=True,
            )
        )
        assert float((got["dense_heatmap"] - ref["dense_heatmap"]).abs().max()) <= 1e-4
        scored = ref["query_scores"] > 0
        assert torch.equal(got["query_scores"] > 0, scored)
        # near-equal scores may swap places between the runtimes: align the scored queries by (cell, class)
        k = ref["cls_logits"].shape[-1]
        for i in range(b):
            aligned = []
            for out in (ref, got):
                sel = scored[i]
                key = out["query_index"][i][sel] * k + out["query_labels"][i][sel]
                order = torch.argsort(key)
                aligned.append((key[order], [out[n][i][sel][order] for n in ("cls_logits", "box_codes")]))
            assert torch.equal(aligned[0][0], aligned[1][0])
            for r, g in zip(aligned[0][1], aligned[1][1], strict=True):
                assert float((g - r).abs().max()) <= 1e-4
        decoded = [
            model.head.decode(stage.head_output([v[n] for n in stage.output_names])) for v in (ref, got)
        ]
        for a, c in zip(*decoded, strict=True):
            assert len(a) == len(c)
            oa, oc = torch.argsort(a.boxes.tensor[:, 0]), torch.argsort(c.boxes.tensor[:, 0])
            torch.testing.assert_close(c.boxes.tensor[oc], a.boxes.tensor[oa], atol=1e-4, rtol=0)


def test_leaky_relu_branches_export(tmp_path: Path) -> None:
    """A CenterPoint head with LeakyReLU regression branches (``branch_negative_slope``) exports to operators the
    TensorRT parser takes, and onnxruntime gives torch's outputs (max abs error <= 1e-4)."""
    from perception.config import load_config
    from perception.models.build import build_detector

    cfg = load_config(
        REPO / "configs" / "demo_detector.yaml", ["model.head.centerpoint.branch_negative_slope=0.1"]
    )
    torch.manual_seed(0)
    model = build_detector(cfg.model, cfg.data).eval()
    manifest = export_dense(model, tmp_path, config=cfg, max_batch=1)
    assert "LeakyRelu" in manifest.operators and set(manifest.operators) <= TENSORRT_OPS
    stage = DenseStage(model).eval()
    bev = torch.randn(1, *stage.input_shape, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = stage(bev)
    got = _session(tmp_path).run(None, {"bev": bev.numpy()})
    for name, r, g in zip(stage.output_names, ref, got, strict=True):
        assert float((torch.from_numpy(g) - r).abs().max()) <= 1e-4, name
