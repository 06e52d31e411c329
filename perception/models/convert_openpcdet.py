"""Convert OpenPCDet / DSVT-authors detector weights (``model_state``) to our :class:`~.detector.VoxelDetector`.

Covers the models both code bases have: CenterPoint (MeanVFE + spconv ``VoxelResBackBone8x`` + HeightCompression
+ ``BaseBEVBackbone`` + ``CenterHead``) and DSVT (``DynamicPillarVFE`` / ``DynPillarVFE3D`` + ``DSVT`` +
``PointPillarScatter3d`` + ``BaseBEVResBackbone`` + ``CenterHead``). The DSVT authors' repository is OpenPCDet-based,
so their checkpoints have the same layout; both read with :func:`convert_openpcdet_state_dict`.

Key mapping (source -> ours; ``t`` task, ``k`` conv index of a branch with ``n`` convs):

===================================================  =================================================================
OpenPCDet                                            ours
===================================================  =================================================================
``vfe.pfn_layers.*``                                 ``vfe.pfn_layers.*`` (same ``linear`` / ``norm``)
``backbone_3d.conv_input|conv1..4|conv_out.*``       same names (spconv ResNet); weights re-laid out to spconv 2.x KRSC
``backbone_3d.<DSVT keys>``                          ``backbone_3d.<ours>`` by :mod:`.backbones.dsvt_convert`
``backbone_2d.*``                                    ``bev_backbone.*`` (same ``blocks`` / ``deblocks`` names)
``dense_head.shared_conv.{0,1}.*``                   ``head.shared_conv.{0,1}.*``
``dense_head.heads_list.t.<b>.k.0.*`` (k < n - 1)    ``head.task_heads.t.<ours b>.layers.{3k}.*`` (hidden conv)
``dense_head.heads_list.t.<b>.k.1.*`` (k < n - 1)    ``head.task_heads.t.<ours b>.layers.{3k + 1}.*`` (its BatchNorm)
``dense_head.heads_list.t.<b>.{n-1}.*``              ``head.task_heads.t.<ours b>.layers.{3(n-1)}.*`` (output conv)
===================================================  =================================================================

Branches ``<b>``: ``hm -> heatmap``, ``center -> offset``, ``center_z -> height``, ``dim -> log_dims``,
``rot -> rot``, ``vel -> velocity`` (:data:`HEAD_BRANCHES`). Meaning is kept, not only names:

* ``rot``: OpenPCDet predicts ``[cos, sin]``, ours ``[sin, cos]``: the output conv's two rows are swapped.
* Conv biases before a BatchNorm (OpenPCDet's ``USE_BIAS_BEFORE_NORM: True``, as its nuScenes CenterPoint) are
  folded into that BatchNorm's ``running_mean`` (``BN(Wx + b)`` with mean ``m`` equals ``BN(Wx)`` with mean
  ``m - b``; in training mode the batch mean absorbs ``b`` as well).
* Head BatchNorm eps: ours is 1e-5 (OpenPCDet's default); a source trained with another (the DSVT authors' configs:
  ``BN_EPS: 0.001``) has ``running_var`` shifted by the difference, so ``var + eps`` is the same.
* spconv weights: spconv >= 2.2 stores ``(out, kD, kH, kW, in)`` (KRSC) for every algorithm, as ours; spconv 1.x
  checkpoints hold ``(kD, kH, kW, in, out)`` and spconv 2.1 Native ones ``(kD, kH, kW, out, in)``. The layout is
  found once per file from the convs whose shapes tell them apart (``in != out``) and applied to all.
* Box coding is otherwise the same: the centre offset is ``[x, y]`` from the cell's corner in cells, ``center_z`` the
  box-centre height, ``dim`` log sizes, ``vel`` ``[vx, vy]``.

Ignored source keys (:data:`IGNORED_SOURCE_KEYS`): ``global_step`` (the training-step counter buffer of
OpenPCDet's ``Detector3DTemplate``). Any other key that maps nowhere is an error listing them (a head branch we
lack, e.g. the DSVT Waymo head's ``iou``, another backbone); so is any of our tensors that no source key fills.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from .backbones.dsvt_convert import authors_key_to_ours

__all__ = [
    "HEAD_BRANCHES",
    "IGNORED_SOURCE_KEYS",
    "SPCONV_LAYOUTS",
    "ConversionError",
    "ConversionReport",
    "convert_openpcdet_state_dict",
]

IGNORED_SOURCE_KEYS: dict[str, str] = {
    "global_step": "OpenPCDet's training-step counter (a buffer of Detector3DTemplate)",
}
"""Source keys that are read and dropped on purpose, with the reason."""

HEAD_BRANCHES: dict[str, str] = {
    "hm": "heatmap",
    "center": "offset",
    "center_z": "height",
    "dim": "log_dims",
    "rot": "rot",
    "vel": "velocity",
}
"""OpenPCDet ``CenterHead`` branch name -> our ``_TaskHead`` attribute."""

SPCONV_LAYOUTS: dict[str, tuple[str, tuple[int, ...]]] = {
    "krsc": ("spconv >= 2.2 (out, kD, kH, kW, in)", (0, 1, 2, 3, 4)),
    "spconv1": ("spconv 1.x (kD, kH, kW, in, out)", (4, 0, 1, 2, 3)),
    "native21": ("spconv 2.1 Native (kD, kH, kW, out, in)", (3, 0, 1, 2, 4)),
}
"""Name -> (description, permutation that turns the source tensor into ours ``(out, kD, kH, kW, in)``)."""

_PREFIXES = {
    "vfe.": "vfe.",
    "backbone_3d.": "backbone_3d.",
    "backbone_2d.": "bev_backbone.",
    "dense_head.": "head.",
}
_HIDDEN = re.compile(r"heads_list\.(\d+)\.(\w+?)\.(\d+)\.([01])\.(\w+)\Z")
_FINAL = re.compile(r"heads_list\.(\d+)\.(\w+?)\.(\d+)\.(weight|bias)\Z")
_SHARED = re.compile(r"shared_conv\.([01])\.(\w+)\Z")
_SHOW = 5


class ConversionError(ValueError):
    """The source weights do not map onto the model (the message lists the keys, a few of each kind)."""


@dataclass(frozen=True)
class ConversionReport:
    """What :func:`convert_openpcdet_state_dict` did.

    Attributes:
        converted: source tensors that went into the result (bias folds included).
        ignored: source keys dropped on purpose (:data:`IGNORED_SOURCE_KEYS`).
        spconv_layout: the spconv weight layout found (a :data:`SPCONV_LAYOUTS` key), or None (no spconv weights).
        folded_biases: source conv biases folded into the next BatchNorm's ``running_mean``.
        bn_eps_shifted: our head BatchNorms whose ``running_var`` was shifted for a different source eps.
    """

    converted: int
    ignored: tuple[str, ...]
    spconv_layout: str | None
    folded_biases: tuple[str, ...]
    bn_eps_shifted: tuple[str, ...]

    def summary(self) -> str:
        """One line for the user."""
        layout = SPCONV_LAYOUTS[self.spconv_layout][0] if self.spconv_layout else "none"
        return (
            f"{self.converted} source tensors converted, {len(self.ignored)} ignored {list(self.ignored)}; "
            f"spconv weight layout: {layout}; {len(self.folded_biases)} conv biases folded into BatchNorm; "
            f"{len(self.bn_eps_shifted)} head BatchNorms adjusted for the source eps"
        )


def _some(names: list[str] | tuple[str, ...]) -> str:
    names = sorted(names)
    more = f" and {len(names) - _SHOW} more" if len(names) > _SHOW else ""
    return f"{names[:_SHOW]}{more}"


def _head_key(rest: str) -> tuple[str, str | None]:
    """``dense_head.`` key (without the prefix) -> (our key without ``head.``, kind: None / 'bias' / 'final')."""
    if m := _SHARED.match(rest):
        conv, param = m.groups()
        if conv == "0" and param == "bias":
            return "shared_conv.1", "bias"
        return f"shared_conv.{conv}.{param}", None
    m = _HIDDEN.match(rest)
    if m:
        t, branch, k, sub, param = m.groups()
        ours = HEAD_BRANCHES.get(branch)
        if ours is None:
            raise KeyError(rest)
        index = 3 * int(k) + int(sub)
        if sub == "0" and param == "bias":
            return f"task_heads.{t}.{ours}.layers.{index + 1}", "bias"
        return f"task_heads.{t}.{ours}.layers.{index}.{param}", None
    m = _FINAL.match(rest)
    if m:
        t, branch, k, param = m.groups()
        ours = HEAD_BRANCHES.get(branch)
        if ours is None:
            raise KeyError(rest)
        return f"task_heads.{t}.{ours}.layers.{3 * int(k)}.{param}", "rot" if branch == "rot" else None
    raise KeyError(rest)


def _spconv_layout(pairs: list[tuple[str, torch.Tensor, torch.Size]]) -> str | None:
    """The one layout (a :data:`SPCONV_LAYOUTS` key) that fits every ``(key, source tensor, our shape)``."""
    if not pairs:
        return None
    fits = set(SPCONV_LAYOUTS)
    for key, value, want in pairs:
        here = {n for n, (_, perm) in SPCONV_LAYOUTS.items() if value.permute(perm).shape == want}
        if not here:
            raise ConversionError(
                f"spconv weight {key!r} has shape {tuple(value.shape)}, which is no known spconv layout of our "
                f"{tuple(want)} (out, kD, kH, kW, in)"
            )
        fits &= here
        if not fits:
            raise ConversionError(f"spconv weights in different layouts (conflict at {key!r})")
    if len(fits) > 1:
        raise ConversionError(
            f"cannot tell the spconv weight layout apart ({sorted(fits)} all fit every conv's shape)"
        )
    return fits.pop()


def convert_openpcdet_state_dict(
    source: Mapping[str, torch.Tensor], model: nn.Module, *, source_head_bn_eps: float = 1e-5
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Map an OpenPCDet ``model_state`` onto ``model``'s ``state_dict`` (see the module docstring).

    Args:
        source: the checkpoint's ``model_state`` (``{key: tensor}`` with ``vfe.`` / ``backbone_3d.`` /
            ``backbone_2d.`` / ``dense_head.`` prefixes).
        model: our detector, built from the config the weights are for; only its keys, shapes and head
            BatchNorm eps are read.
        source_head_bn_eps: the eps of the source ``CenterHead``'s BatchNorms (``BN_EPS``; 1e-5 by default in
            OpenPCDet, 1e-3 in the DSVT authors' configs).

    Returns:
        ``(state_dict, report)``: a state dict for ``model.load_state_dict(..., strict=True)`` (every key, every
        shape as ``model``'s), and a :class:`ConversionReport`.

    Raises:
        ConversionError: source keys that map nowhere, model keys no source key fills, shape mismatches, or an
            spconv layout that cannot be told; the message lists a few keys of each.
    """
    target = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    biases: dict[str, tuple[str, torch.Tensor]] = {}
    unknown: list[str] = []
    ignored: list[str] = []
    spconv: list[tuple[str, str, torch.Tensor]] = []
    for key, value in source.items():
        if not isinstance(value, torch.Tensor):
            raise ConversionError(f"model_state[{key!r}] is a {type(value).__name__}, not a tensor")
        if key in IGNORED_SOURCE_KEYS:
            ignored.append(key)
            continue
        prefix = next((p for p in _PREFIXES if key.startswith(p)), None)
        if prefix is None:
            unknown.append(key)
            continue
        rest, ours_prefix = key[len(prefix) :], _PREFIXES[prefix]
        try:
            if prefix == "dense_head.":
                name, kind = _head_key(rest)
            elif prefix == "backbone_3d." and ours_prefix + rest not in target:
                name, kind = authors_key_to_ours(rest), None
            else:
                name, kind = rest, None
        except KeyError:
            unknown.append(key)
            continue
        name = ours_prefix + name
        if kind == "bias":
            biases[name] = (key, value)
            continue
        if kind == "rot" and value.shape[0] == 2:
            value = value[[1, 0]]  # [cos, sin] -> [sin, cos]
        if prefix == "backbone_3d." and value.ndim == 5 and name in target and target[name].ndim == 5:
            spconv.append((key, name, value))
            continue
        out[name] = value
    layout = _spconv_layout([(k, v, target[n].shape) for k, n, v in spconv])
    if layout is not None:
        perm = SPCONV_LAYOUTS[layout][1]
        for _, name, value in spconv:
            out[name] = value.permute(perm).contiguous()
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} source keys map to nothing in the model: {_some(unknown)}")
    missing = [k for k in target if k not in out]
    if missing:
        problems.append(f"{len(missing)} model tensors have no source: {_some(missing)}")
    shapes = [
        f"{k} {tuple(v.shape)} vs ours {tuple(target[k].shape)}"
        for k, v in out.items()
        if k in target and v.shape != target[k].shape
    ]
    if shapes:
        problems.append(f"{len(shapes)} shapes differ: {_some(shapes)}")
    bad_bias = [src for name, (src, _) in biases.items() if f"{name}.running_mean" not in out]
    if bad_bias:
        problems.append(f"conv biases with no BatchNorm to fold into: {_some(bad_bias)}")
    if problems:
        raise ConversionError("; ".join(problems))
    for name, (_, bias) in biases.items():
        out[f"{name}.running_mean"] = out[f"{name}.running_mean"] - bias
    shifted = []
    for mod_name, module in model.named_modules():
        full = f"{mod_name}.running_var"
        if isinstance(module, nn.BatchNorm2d) and mod_name.startswith("head.") and full in out:
            delta = source_head_bn_eps - module.eps
            if delta != 0:
                var = out[full] + delta
                if bool((var <= 0).any()):
                    raise ConversionError(
                        f"{full}: the source eps {source_head_bn_eps} is smaller than ours {module.eps} "
                        "by more than the running variance; cannot keep var + eps"
                    )
                out[full] = var
                shifted.append(mod_name)
    report = ConversionReport(
        converted=len(source) - len(ignored),
        ignored=tuple(ignored),
        spconv_layout=layout,
        folded_biases=tuple(src for src, _ in biases.values()),
        bn_eps_shifted=tuple(shifted),
    )
    return {k: out[k] for k in target}, report
