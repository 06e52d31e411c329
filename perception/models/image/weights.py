"""Load a user's local torchvision or mmdet / mmdet3d weights into the image backbone and neck, by path.

Layouts read (``torch.load(weights_only=True)``, so no pickled code runs; the engine's ``load_torch_dict`` is a
layer above the models and cannot be imported here):

=====================  ==================================================================================
torchvision            a bare state dict: ``conv1.weight``, ``layer1.0.conv1.weight``, ... (``fc.*`` is
                       reported as unexpected and not loaded)
mmdet                  ``{"state_dict": {"backbone.conv1.weight", ..., "neck.lateral_convs.0.conv.weight"}}``
mmdet3d                ``{"state_dict": {"img_backbone.conv1.weight", ..., "img_neck.fpn_convs.0.conv.bias"}}``
=====================  ==================================================================================

A ``module.`` prefix on every key (a saved ``DataParallel``) is dropped. For each part of the target (``backbone``:
a :class:`~.resnet.ResNet`, ``neck``: a :class:`~.fpn.FPN`) the prefix that names most of its entries is used.
Entries the file lacks keep their values and are reported as missing (``num_batches_tracked`` is not reported:
torchvision's older files do not have it); entries under the used prefixes that the part lacks are reported as
unexpected; other entries of a detector checkpoint (``pts_bbox_head.*``, ...) are counted as ignored. A shape
mismatch is a ``ValueError`` naming the key and both shapes, and a file of which nothing fits is a ``ValueError``;
in both cases nothing is loaded.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .fpn import FPN
from .resnet import ResNet

__all__ = ["ImageWeightsReport", "load_image_weights"]

logger = logging.getLogger(__name__)

PREFIXES = {"backbone": ("img_backbone.", "backbone.", ""), "neck": ("img_neck.", "neck.", "")}
"""Key prefixes tried for each part, in the order ties are broken."""
_SHOWN = 5


@dataclass(frozen=True)
class ImageWeightsReport:
    """What :func:`load_image_weights` did.

    Attributes:
        path: the file.
        prefixes: the file prefix used for each loaded part (``{"backbone": "img_backbone.", ...}``; ``""``: bare).
        loaded: the target's ``state_dict`` keys that were loaded.
        missing: the target's keys the file did not provide (they keep their values).
        unexpected: file keys under the used prefixes that the target lacks (e.g. torchvision's ``fc.weight``).
        ignored: number of other file entries (other parts of a detector checkpoint).
    """

    path: Path
    prefixes: dict[str, str]
    loaded: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    ignored: int

    def summary(self) -> str:
        def some(keys: tuple[str, ...]) -> str:
            more = f", ... (+{len(keys) - _SHOWN})" if len(keys) > _SHOWN else ""
            return f" [{', '.join(keys[:_SHOWN])}{more}]" if keys else ""

        used = ", ".join(f"{part} <- {prefix or '(no prefix)'}" for part, prefix in self.prefixes.items())
        return (
            f"{self.path}: loaded {len(self.loaded)} image weights ({used}); missing {len(self.missing)}"
            f"{some(self.missing)}; unexpected {len(self.unexpected)}{some(self.unexpected)}; "
            f"{self.ignored} other entries ignored"
        )


def _parts(module: nn.Module) -> dict[str, nn.Module]:
    """The loadable parts of ``module`` and the names they go by in a checkpoint."""
    if isinstance(module, ResNet):
        return {"backbone": module}
    if isinstance(module, FPN):
        return {"neck": module}
    parts = {}
    for name, cls in (("backbone", ResNet), ("neck", FPN)):
        child = getattr(module, name, None)
        if isinstance(child, cls):
            parts[name] = child
    if not parts:
        raise TypeError(
            f"load_image_weights needs a ResNet, an FPN or a module with .backbone (ResNet) / .neck (FPN), "
            f"got {type(module).__name__}"
        )
    return parts


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (a bare one, or an mmdet checkpoint's ``state_dict``), ``module.`` dropped."""
    if not path.is_file():
        raise FileNotFoundError(f"image weights not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: cannot be loaded as torch weights ({type(exc).__name__}: {exc})") from exc
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    bad = (
        [k for k, v in data.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
        if isinstance(data, dict)
        else [type(data).__name__]
    )
    if bad:
        raise ValueError(
            f"{path}: not a state dict (a torchvision file of tensors or an mmdet checkpoint with a "
            f"'state_dict' entry); non-tensor entries {bad[:_SHOWN]}"
        )
    if data and all(k.startswith("module.") for k in data):
        data = {k.removeprefix("module."): v for k, v in data.items()}
    return data


def load_image_weights(module: nn.Module, path: str | os.PathLike[str]) -> ImageWeightsReport:
    """Load the torchvision / mmdet / mmdet3d weights in ``path`` into ``module`` (see the module docstring).

    Args:
        module: a :class:`~.resnet.ResNet`, an :class:`~.fpn.FPN`, or a module with ``.backbone`` / ``.neck``
            (the :class:`~.encoder.ImageEncoder`).
        path: the checkpoint file.

    Returns:
        :class:`ImageWeightsReport` (also logged at INFO).

    Raises:
        FileNotFoundError: no such file. ValueError: not a state dict, a shape mismatch (naming the key and both
            shapes), or no entry fits any part.
    """
    path = Path(path)
    parts = _parts(module)
    data = _read_state_dict(path)
    prefixes: dict[str, str] = {}
    for name, part in parts.items():
        keys = part.state_dict().keys()
        counts = [(sum(p + k in data for k in keys), p) for p in PREFIXES[name]]
        best = max(counts, key=lambda c: c[0])  # first of equal counts: the explicit prefixes win over ""
        if best[0]:
            prefixes[name] = best[1]
    if not prefixes:
        raise ValueError(
            f"{path}: no entry fits the image {' / '.join(parts)} ({len(data)} entries, e.g. "
            f"{list(data)[:_SHOWN]}); expected torchvision names ('conv1.weight', 'layer1.0.conv1.weight', ...) "
            f"or the prefixes {sorted({p for v in PREFIXES.values() for p in v if p})}"
        )
    loaded: list[str] = []
    missing: list[str] = []
    used: set[str] = set()
    updates: list[tuple[nn.Module, dict[str, torch.Tensor]]] = []
    for name, part in parts.items():
        own = part.state_dict()
        label = "" if isinstance(module, (ResNet, FPN)) else f"{name}."
        prefix = prefixes.get(name)
        new = dict(own)
        for key, value in own.items():
            file_key = None if prefix is None else prefix + key
            if file_key not in data:
                if not key.endswith("num_batches_tracked"):
                    missing.append(label + key)
                continue
            tensor = data[file_key]
            if tensor.shape != value.shape:
                raise ValueError(
                    f"{path}: {file_key!r} has shape {tuple(tensor.shape)} in the file but the model's "
                    f"{label + key!r} is {tuple(value.shape)} (another depth / base_width / out_channels?)"
                )
            new[key] = tensor
            loaded.append(label + key)
            used.add(file_key)
        updates.append((part, new))
    for part, new in updates:
        part.load_state_dict(new)
    # a leftover file key under a prefix that was used is unexpected; any other is ignored (another part)
    chosen = set(prefixes.values())
    unexpected = [k for k in data if k not in used and any(k.startswith(p) for p in chosen)]
    report = ImageWeightsReport(
        path=path,
        prefixes=prefixes,
        loaded=tuple(loaded),
        missing=tuple(missing),
        unexpected=tuple(sorted(unexpected)),
        ignored=len(data) - len(used) - len(unexpected),
    )
    logger.info(report.summary())
    return report
