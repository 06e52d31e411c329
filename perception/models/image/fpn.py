"""Feature Pyramid Network with mmdet's parameter names (``lateral_convs.{i}.conv``, ``fpn_convs.{i}.conv``).

As mmdet's ``FPN`` without normalisation or activation: a 1x1 lateral conv per used backbone level, a top-down
path (nearest upsampling to the size of the level below, added), a 3x3 output conv per level; extra levels
above C5 by max pooling (``add_extra_convs=False``) or by 3x3 stride-2 convs appended to ``fpn_convs`` (``on_input``
/ ``on_output``). Convs use xavier-uniform weights and zero bias, as mmdet's FPN init. Index ``i`` counts the
used levels from the lowest stride, so an mmdet FPN with ``in_channels=[256, 512, 1024, 2048]`` and ``num_outs=5``
loads into ``levels: [4, 8, 16, 32, 64]`` (``extra: max_pool``), and ``num_outs=4`` (or the same checkpoint, its
5th level being parameter-free) into ``levels: [4, 8, 16, 32]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .image_config import BACKBONE_STRIDES, FPNConfig
from .shapes import ImageFeatureShape

__all__ = ["FPN"]


class _ConvModule(nn.Module):
    """A conv under the attribute name ``conv`` (mmcv ``ConvModule`` without norm / activation)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2)
        nn.init.xavier_uniform_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class FPN(nn.Module):
    """FPN over the backbone's C2..C5.

    Args:
        config: :class:`~perception.models.image.image_config.FPNConfig`.
        in_channels: channels of the four backbone outputs C2..C5 (strides 4, 8, 16, 32), e.g.
            ``ResNet.out_channels``.
    """

    def __init__(self, config: FPNConfig, *, in_channels: Sequence[int]) -> None:
        super().__init__()
        if len(in_channels) != len(BACKBONE_STRIDES):
            raise ValueError(
                f"FPN in_channels must give the channels of the {len(BACKBONE_STRIDES)} backbone levels "
                f"(strides {BACKBONE_STRIDES}), got {list(in_channels)}"
            )
        self.config = config
        self.in_channels = tuple(int(c) for c in in_channels)
        self.used = config.backbone_levels
        out = config.out_channels
        self.lateral_convs = nn.ModuleList(_ConvModule(self.in_channels[i], out, 1) for i in self.used)
        self.fpn_convs = nn.ModuleList(_ConvModule(out, out, 3) for _ in self.used)
        if config.extra != "max_pool":
            for k in range(config.num_extra):
                cin = self.in_channels[-1] if k == 0 and config.extra == "on_input" else out
                self.fpn_convs.append(_ConvModule(cin, out, 3, stride=2))

    def output_shape(self) -> ImageFeatureShape:
        return ImageFeatureShape(channels=self.config.out_channels, strides=tuple(self.config.levels))

    def forward(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """
        Args:
            inputs: C2..C5, ``(N, in_channels[i], H / s_i, W / s_i)``.

        Returns:
            one ``(N, out_channels, H / s, W / s)`` per stride ``s`` of ``config.levels``.
        """
        if len(inputs) != len(self.in_channels):
            raise ValueError(
                f"FPN inputs must be the {len(self.in_channels)} levels C2..C5, got {len(inputs)}"
            )
        for i, (x, c) in enumerate(zip(inputs, self.in_channels, strict=True)):
            if x.ndim != 4 or x.shape[1] != c:
                raise ValueError(f"FPN inputs[{i}] must be (N, {c}, H, W), got {tuple(x.shape)}")
        laterals = [conv(inputs[i]) for conv, i in zip(self.lateral_convs, self.used, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            up = F.interpolate(laterals[i], size=laterals[i - 1].shape[2:], mode="nearest")
            laterals[i - 1] = laterals[i - 1] + up
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs[: len(laterals)], laterals, strict=True)]
        n = len(outs)
        for k in range(self.config.num_extra):
            if self.config.extra == "max_pool":
                outs.append(F.max_pool2d(outs[-1], 1, stride=2))
            elif k == 0 and self.config.extra == "on_input":
                outs.append(self.fpn_convs[n](inputs[-1]))
            else:
                outs.append(self.fpn_convs[n + k](outs[-1]))
        return outs
