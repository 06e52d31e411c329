"""OpenPCDet / DSVT-authors checkpoints -> ours (``tools/convert_checkpoint.py``, ``models.convert_openpcdet``).

Each test builds one of our tiny detectors with random weights and BatchNorm statistics, writes its weights in the
source layout as OpenPCDet's modules would hold them (written here, independently of the converter: their key
names, spconv 1.x / 2.1 / 2.2 weight layouts, ``rot`` as ``[cos, sin]``, conv biases before BatchNorm, another head
BatchNorm eps), converts the file with the command and checks that the converted detector gives the original's
outputs on a synthetic scan; a functional forward of the source head in their layout checks the meaning of the
branches. Also: every source key is used or listed as ignored, unknown keys and missing tensors are errors listing
them, and the command's one-line errors.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from perception.config import load_config
from perception.engine.checkpoint import load_model_weights
from perception.models.backbones.dsvt_convert import to_authors_state_dict
from perception.models.build import build_detector
from perception.models.convert_openpcdet import (
    HEAD_BRANCHES,
    ConversionError,
    convert_openpcdet_state_dict,
)
from perception.structures import Batch, Boxes3D

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "convert_checkpoint_tool", REPO / "tools" / "convert_checkpoint.py"
)
assert _spec is not None and _spec.loader is not None
_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tool)
convert_main = _tool.main
SPCONV_CFG = REPO / "configs" / "tiny_centerpoint_spconv.yaml"
DSVT_CFG = REPO / "configs" / "tiny_dsvt_pillar_centerpoint.yaml"
DSVT_SET = ["model.backbone_3d.dsvt.authors_pos_embed=true", "model.backbone_3d.dsvt.pool_mask_empty=false"]
OURS_BRANCH = {v: k for k, v in HEAD_BRANCHES.items()}
# ours (out, kD, kH, kW, in) -> the source layout
TO_SOURCE_LAYOUT = {"krsc": (0, 1, 2, 3, 4), "spconv1": (1, 2, 3, 4, 0), "native21": (1, 2, 3, 0, 4)}
_HEAD_KEY = re.compile(r"head\.task_heads\.(\d+)\.(\w+)\.layers\.(\d+)\.(\w+)\Z")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(config: Path, overrides: list[str], seed: int):
    cfg = load_config(config, overrides)
    torch.manual_seed(seed)
    model = build_detector(cfg.model, cfg.data)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that folds and eps shifts matter
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0.0, 0.3)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    return cfg, model.eval()


def _scan(cfg, seed: int = 1) -> Batch:
    g = torch.Generator().manual_seed(seed)
    n = 3000
    lo = torch.tensor(cfg.data.point_cloud_range[:3])
    hi = torch.tensor(cfg.data.point_cloud_range[3:])
    xyz = lo + (hi - lo) * torch.rand(n, 3, generator=g) * 0.98 + (hi - lo) * 0.01
    extra = torch.rand(n, 2, generator=g) * torch.tensor([1.0, 0.05])
    return Batch(
        points=torch.cat([xyz, extra], 1),
        batch_index=torch.zeros(n, dtype=torch.int64),
        point_channels=("x", "y", "z", "intensity", "time_lag"),
        boxes=[Boxes3D(torch.zeros(0, 9))],
        labels=[torch.zeros(0, dtype=torch.int64)],
        class_names=tuple(cfg.data.class_names),
        tokens=["scan"],
    )


def _num_convs(model) -> int:
    return model.head.config.num_head_convs


def to_source_layout(
    model, *, spconv_layout: str = "krsc", bias_before_norm: bool, head_bn_eps: float, seed: int = 5
) -> dict[str, torch.Tensor]:
    """Our detector's weights as an OpenPCDet ``model_state`` (their module names and tensor layouts)."""
    g = torch.Generator().manual_seed(seed)
    ours = {k: v.clone() for k, v in model.state_dict().items()}
    n = _num_convs(model)
    src: dict[str, torch.Tensor] = {"global_step": torch.tensor([1234])}
    dsvt = {k[len("backbone_3d.") :]: v for k, v in ours.items() if k.startswith("backbone_3d.stages")}
    if dsvt:
        backbone = {k[len("backbone_3d.") :]: v for k, v in ours.items() if k.startswith("backbone_3d.")}
        src.update(to_authors_state_dict(backbone, prefix="backbone_3d."))
    for key, value in ours.items():
        if key.startswith("backbone_3d."):
            if not dsvt:
                src[key] = value.permute(TO_SOURCE_LAYOUT[spconv_layout]) if value.ndim == 5 else value
        elif key.startswith(("vfe.", "bev_backbone.")):
            src[key.replace("bev_backbone.", "backbone_2d.", 1)] = value
        elif key.startswith("head.shared_conv."):
            src["dense_head." + key[len("head.") :]] = value
        else:
            t, branch, i, param = _HEAD_KEY.match(key).groups()
            k, j = divmod(int(i), 3)
            base = f"dense_head.heads_list.{t}.{OURS_BRANCH[branch]}"
            if k == n - 1:  # the output conv: rot is [cos, sin] in OpenPCDet
                src[f"{base}.{k}.{param}"] = value[[1, 0]] if branch == "rot" else value
            else:
                src[f"{base}.{k}.{j}.{param}"] = value
    for bn in [
        k[: -len(".running_var")] for k in src if k.startswith("dense_head.") and k.endswith("running_var")
    ]:
        src[f"{bn}.running_var"] = src[f"{bn}.running_var"] + 1e-5 - head_bn_eps  # same var + eps
        if bias_before_norm:
            conv = bn[:-1] + "0"  # shared_conv.1 <- shared_conv.0; ...k.1 <- ...k.0
            bias = torch.randn(src[f"{bn}.running_mean"].shape, generator=g)
            src[f"{conv}.bias"] = bias
            src[f"{bn}.running_mean"] = src[f"{bn}.running_mean"] + bias
    return src


def _their_head(
    src: dict[str, torch.Tensor], x: torch.Tensor, n: int, eps: float
) -> list[dict[str, torch.Tensor]]:
    """OpenPCDet's CenterHead forward on ``x`` with the source tensors (functional: conv [+ bias] -> BN -> ReLU)."""

    def conv_bn_relu(prefix: str, y: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(y, src[f"{prefix}.0.weight"], src.get(f"{prefix}.0.bias"), padding=1)
        bn = {p: src[f"{prefix}.1.{p}"] for p in ("weight", "bias", "running_mean", "running_var")}
        y = F.batch_norm(y, bn["running_mean"], bn["running_var"], bn["weight"], bn["bias"], False, 0.0, eps)
        return F.relu(y)

    shared = conv_bn_relu("dense_head.shared_conv", x)
    tasks = []
    t = 0
    while f"dense_head.heads_list.{t}.hm.{n - 1}.weight" in src:
        out = {}
        for branch in HEAD_BRANCHES:
            base = f"dense_head.heads_list.{t}.{branch}"
            if f"{base}.{n - 1}.weight" not in src:
                continue
            y = shared
            for k in range(n - 1):
                y = conv_bn_relu(f"{base}.{k}", y)
            out[branch] = F.conv2d(y, src[f"{base}.{n - 1}.weight"], src[f"{base}.{n - 1}.bias"], padding=1)
        tasks.append(out)
        t += 1
    return tasks


def _convert(tmp_path: Path, src: dict, fmt: str, config: Path, overrides: list[str], *extra: str) -> Path:
    path = tmp_path / "openpcdet.pth"
    torch.save(
        {"model_state": src, "epoch": 7, "it": 0, "optimizer_state": {}, "version": "pcdet+0.6.0"}, path
    )
    out = tmp_path / "converted.pth"
    set_args = ["--set", *overrides] if overrides else []
    assert (
        convert_main(
            ["--from", fmt, str(path), "--config", str(config), "--out", str(out), *set_args, *extra]
        )
        == 0
    )
    return out


CASES = {
    # name: (config, overrides, --from, spconv layout, conv bias before BN, source head BN eps)
    "centerpoint-spconv1-bias": (SPCONV_CFG, [], "openpcdet", "spconv1", True, 1e-5),
    "centerpoint-native21": (SPCONV_CFG, [], "openpcdet", "native21", False, 1e-5),
    "centerpoint-krsc-exact": (SPCONV_CFG, [], "openpcdet", "krsc", False, 1e-5),
    "dsvt-authors": (DSVT_CFG, DSVT_SET, "dsvt-authors", "krsc", False, 1e-3),
    "dsvt-openpcdet-bias": (DSVT_CFG, DSVT_SET, "openpcdet", "krsc", True, 1e-5),
}


@pytest.mark.parametrize("case", list(CASES))
def test_converted_model_gives_the_source_outputs(tmp_path: Path, case: str, capsys) -> None:
    config, overrides, fmt, layout, bias, eps = CASES[case]
    cfg, original = _model(config, overrides, seed=0)
    src = to_source_layout(original, spconv_layout=layout, bias_before_norm=bias, head_bn_eps=eps)
    out = _convert(tmp_path, src, fmt, config, overrides)
    line = capsys.readouterr().out
    assert f"{len(src) - 1} source tensors converted, 1 ignored ['global_step']" in line, line
    assert "trained 7 epochs" in line

    _, converted = _model(config, overrides, seed=1)  # other random weights, all replaced
    loaded = load_model_weights(converted, out, strict=True)
    assert loaded.checkpoint is not None and loaded.checkpoint.config["model"] == cfg.model.model_dump(
        mode="json"
    )
    assert loaded.class_names == tuple(cfg.data.class_names)
    converted.eval()

    batch = _scan(cfg)
    with torch.no_grad():
        bev = original.bev_features(batch)
        assert torch.equal(
            bev, converted.bev_features(batch)
        )  # VFE, backbones: tensors copied / permuted only
        want, got = original.head(bev), converted.head(bev)
        theirs = _their_head(src, bev, _num_convs(original), eps)
    exact = not bias and eps == 1e-5
    for w, g, th in zip(want.tasks, got.tasks, theirs, strict=True):
        for name in ("heatmap", "offset", "height", "log_dims", "rot", "velocity"):
            a, b = getattr(w, name), getattr(g, name)
            if exact:
                assert torch.equal(a, b), name
            else:
                torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
        # the source head's meaning: hm, center, center_z, dim, [cos, sin], vel
        torch.testing.assert_close(g.heatmap, th["hm"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(g.offset, th["center"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(g.rot, th["rot"][:, [1, 0]], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(g.velocity, th["vel"], rtol=1e-5, atol=1e-5)
    assert len(original.head.decode(want)[0].scores) == len(converted.head.decode(got)[0].scores)


def test_every_source_key_is_mapped_or_listed(tmp_path: Path) -> None:
    cfg, model = _model(SPCONV_CFG, [], seed=0)
    src = to_source_layout(model, spconv_layout="spconv1", bias_before_norm=True, head_bn_eps=1e-5)
    weights, report = convert_openpcdet_state_dict(src, model)
    assert report.ignored == ("global_step",) and report.converted == len(src) - 1
    assert report.spconv_layout == "spconv1"
    biases = [
        k for k in src if k.startswith("dense_head.") and re.search(r"(shared_conv|\.\d+)\.0\.bias\Z", k)
    ]
    assert sorted(report.folded_biases) == sorted(biases) and len(biases) == 1 + 6 * 6  # shared + 6 tasks x 6
    assert set(weights) == set(model.state_dict())

    extra = dict(src)
    extra["dense_head.heads_list.0.iou.0.0.weight"] = torch.zeros(32, 32, 3, 3)  # DSVT Waymo's IoU branch
    extra["roi_head.shared_fc_layer.0.weight"] = torch.zeros(4, 4)
    with pytest.raises(
        ConversionError,
        match=r"2 source keys map to nothing in the model: \['dense_head\.heads_list"
        r"\.0\.iou\.0\.0\.weight', 'roi_head\.shared_fc_layer\.0\.weight'\]",
    ):
        convert_openpcdet_state_dict(extra, model)

    fewer = {k: v for k, v in src.items() if not k.startswith("dense_head.heads_list.5.")}
    with pytest.raises(ConversionError, match=r"model tensors have no source: \['head\.task_heads\.5\."):
        convert_openpcdet_state_dict(fewer, model)

    mixed = dict(src)
    key = "backbone_3d.conv2.0.0.weight"
    mixed[key] = model.state_dict()[key]  # KRSC among spconv 1.x weights
    with pytest.raises(ConversionError, match="different layouts"):
        convert_openpcdet_state_dict(mixed, model)


def test_command_errors_are_one_line(tmp_path: Path, capsys) -> None:
    cfg, model = _model(SPCONV_CFG, [], seed=0)
    src = to_source_layout(model, bias_before_norm=False, head_bn_eps=1e-5)
    path = tmp_path / "openpcdet.pth"
    torch.save({"model_state": src, "epoch": 1}, path)
    out = tmp_path / "out.pth"

    # the spconv checkpoint against the DSVT config: keys listed, nothing written
    args = [
        "--from",
        "openpcdet",
        str(path),
        "--config",
        str(DSVT_CFG),
        "--out",
        str(out),
        "--set",
        *DSVT_SET,
    ]
    assert convert_main(args) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith(f"convert_checkpoint.py: error: {path} does not fit {DSVT_CFG}: ")
        and err.count("\n") == 1
    )
    assert "source keys map to nothing in the model: ['backbone_3d.conv1.0.bn1.bias'" in err
    assert not out.exists()

    # DSVT without the authors' semantics
    assert (
        convert_main(["--from", "dsvt-authors", str(path), "--config", str(DSVT_CFG), "--out", str(out)]) == 2
    )
    err = capsys.readouterr().err
    assert (
        "--set model.backbone_3d.dsvt.authors_pos_embed=true model.backbone_3d.dsvt.pool_mask_empty=false"
        in err
    )

    assert (
        convert_main(["--from", "dsvt-authors", str(path), "--config", str(SPCONV_CFG), "--out", str(out)])
        == 2
    )
    assert "--from dsvt-authors needs a DSVT model" in capsys.readouterr().err

    junk = tmp_path / "junk.pth"
    torch.save({"epoch": 3, "notes": "x"}, junk)
    assert (
        convert_main(["--from", "openpcdet", str(junk), "--config", str(SPCONV_CFG), "--out", str(out)]) == 2
    )
    assert "no 'model_state' entry and not a bare state dict (top-level keys ['epoch', 'notes'])" in (
        capsys.readouterr().err
    )
