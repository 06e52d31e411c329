"""Multi-view image encoder: ResNet backbone + FPN run on the valid views only.

Parameter names: ``backbone.*`` (torchvision ResNet names) and ``neck.*`` (mmdet FPN names), i.e. those of an
mmdet detector's ``backbone`` / ``neck``; :func:`~perception.models.image.weights.load_image_weights` also maps
mmdet3d's ``img_backbone.`` / ``img_neck.`` and a bare torchvision state dict onto them.
"""

from __future__ import annotations

import torch
from torch import nn

from .fpn import FPN
from .image_config import FPNConfig, ResNetConfig
from .resnet import ResNet
from .shapes import ImageFeatureShape

__all__ = ["ImageEncoder"]


class ImageEncoder(nn.Module):
    """Backbone + neck over ``(B, V)`` camera views.

    Args:
        backbone: :class:`ResNetConfig`; its ``pretrained`` file, when set, is loaded into the whole encoder at
            construction (a torchvision file fills the backbone; an mmdet checkpoint the backbone and neck).
        fpn: :class:`FPNConfig`.
    """

    def __init__(self, backbone: ResNetConfig, fpn: FPNConfig) -> None:
        super().__init__()
        self.backbone = ResNet(backbone)
        self.neck = FPN(fpn, in_channels=self.backbone.out_channels)
        if backbone.pretrained is not None:
            from .weights import load_image_weights  # noqa: PLC0415 (weights imports this module's class)

            load_image_weights(self, backbone.pretrained)

    def output_shape(self) -> ImageFeatureShape:
        return self.neck.output_shape()

    def forward(self, images: torch.Tensor, valid: torch.Tensor) -> list[torch.Tensor]:
        """
        Args:
            images: float32 ``(B, V, 3, H, W)`` normalised images, ``H`` and ``W`` multiples of the largest stride.
            valid: bool ``(B, V)``; only these views are computed (as one batch of ``valid.sum()`` images).

        Returns:
            one float ``(B, V, C, H / s, W / s)`` per stride ``s`` of :meth:`output_shape`; invalid views are
            exactly zero (and carry no gradient).
        """
        if images.ndim != 5 or images.shape[2] != 3:
            raise ValueError(f"ImageEncoder images must be (B, V, 3, H, W), got {tuple(images.shape)}")
        b, v, _, h, w = images.shape
        if valid.shape != (b, v) or valid.dtype != torch.bool:
            raise ValueError(
                f"ImageEncoder valid must be bool ({b}, {v}), got {valid.dtype} {tuple(valid.shape)}"
            )
        shape = self.output_shape()
        sizes = shape.level_sizes((h, w))
        outs = [images.new_zeros(b, v, shape.channels, hl, wl) for hl, wl in sizes]
        if not bool(valid.any()):
            return outs
        feats = self.neck(self.backbone(images[valid]))
        for out, feat in zip(outs, feats, strict=True):
            out[valid] = feat
        return outs
