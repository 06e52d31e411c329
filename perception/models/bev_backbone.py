"""2D BEV backbone: strided conv stages, each upsampled ("deblock") to a common stride, concatenated (FPN-style).

As in CenterPoint / PointPillars (OpenPCDet ``BaseBEVBackbone``, ``block="plain"``) and DSVT
(``BaseBEVResBackbone``, ``block="residual"``):

* stage ``i``: ``plain``: ZeroPad(1) + Conv3x3(stride ``layer_strides[i]``) + BN + ReLU, then ``layer_nums[i]`` x
  (Conv3x3 + BN + ReLU); ``residual``: a basic block with stride ``layer_strides[i]`` and a 1x1 conv + BN
  projection shortcut, then ``layer_nums[i]`` basic blocks (``relu(bn2(conv2(relu(bn1(conv1 x)))) + x)``).
* deblock ``i`` (when ``upsample_strides`` is given): stride ``u >= 1``: ConvTranspose2d(kernel = stride = u);
  ``u < 1``: Conv2d(kernel = stride = round(1 / u)) (downsampling); then BN + ReLU. Each stage's cumulative
  stride divided by its ``u`` must be the same for all stages (checked), which is the output stride.
  ``plain`` with ``use_conv_for_no_stride`` uses a 1x1 Conv2d instead of a ConvTranspose2d for ``u == 1``.
* outputs concatenated along channels; one more entry in ``upsample_strides`` than stages adds a final
  ConvTranspose2d + BN + ReLU on the concatenation.
* without ``upsample_strides`` the raw stage outputs are concatenated (all must have the same stride).

Memory format: the input is made channels-last (NHWC strides) first and the output is returned channels-last, so
every convolution here and in the head after it runs oneDNN's channels-last kernels; the shapes are unchanged. On
this project's 2-core CPU (demo detector, real frames, one process taking turns): inference 2D backbone 34.7 ms
channels-last vs 32.0 NCHW (no gain), CenterPoint head after it 52.8 vs 61.0 ms; the 2D backbone + head training
step (batch 2) 839 vs 1251 ms.

All BatchNorms use eps 1e-3 and momentum 0.01. Module names (``blocks.{i}.{j}``, ``deblocks.{i}.{0,1}``, and
``conv1 / bn1 / conv2 / bn2 / downsample_layer`` inside residual blocks) follow OpenPCDet, so its
``BaseBEVBackbone`` / ``BaseBEVResBackbone`` checkpoints load with ``load_state_dict``.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Literal

import torch
from torch import nn

from perception.shapes import MapShape

from .model_config import BEVBackboneConfig

BlockType = Literal["plain", "residual"]


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class BasicBlock2d(nn.Module):
    """ResNet basic block; ``downsample`` adds a 1x1 conv + BN projection on the shortcut.

    Args:
        in_channels / out_channels: widths.
        stride: stride of the first 3x3 conv (and of the projection).
        downsample: use the projection shortcut (needed when the width or stride changes).
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, stride: int = 1, downsample: bool = False
    ) -> None:
        super().__init__()
        if not downsample and (stride != 1 or in_channels != out_channels):
            raise ValueError("a basic block that changes width or stride needs downsample=True")
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _bn(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = _bn(out_channels)
        self.relu2 = nn.ReLU()
        self.downsample = downsample
        if downsample:
            self.downsample_layer = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), _bn(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = self.downsample_layer(x) if self.downsample else x
        return self.relu2(out + identity)


def _plain_stage(c_in: int, c_out: int, stride: int, num_layers: int) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.ZeroPad2d(1),
        nn.Conv2d(c_in, c_out, 3, stride=stride, bias=False),
        _bn(c_out),
        nn.ReLU(),
    ]
    for _ in range(num_layers):
        layers += [nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), _bn(c_out), nn.ReLU()]
    return nn.Sequential(*layers)


def _residual_stage(c_in: int, c_out: int, stride: int, num_layers: int) -> nn.Sequential:
    blocks = [BasicBlock2d(c_in, c_out, stride=stride, downsample=True)]
    blocks += [BasicBlock2d(c_out, c_out) for _ in range(num_layers)]
    return nn.Sequential(*blocks)


def _deblock(c_in: int, c_out: int, stride: Fraction, conv_for_one: bool) -> nn.Sequential:
    if stride > 1 or (stride == 1 and not conv_for_one):
        k = int(stride)
        if k != stride:
            raise ValueError(f"upsample strides >= 1 must be integers, got {float(stride)}")
        conv: nn.Module = nn.ConvTranspose2d(c_in, c_out, k, stride=k, bias=False)
    else:
        k = round(1 / stride)
        if Fraction(1, k) != stride:
            raise ValueError(f"upsample strides < 1 must be 1 / integer, got {float(stride)}")
        conv = nn.Conv2d(c_in, c_out, k, stride=k, bias=False)
    return nn.Sequential(conv, _bn(c_out), nn.ReLU())


class BaseBEVBackbone(nn.Module):
    """Multi-stage 2D backbone with per-stage up/down-sampling to one stride and concatenation.

    Args:
        config: the stages and deblocks (:class:`~perception.models.model_config.BEVBackboneConfig`, which also
            holds the stride arithmetic: ``out_stride``, ``max_stride``, ``out_channels``).
        input_shape: the BEV map it reads (channels, size, stride).

    Attributes:
        in_channels / out_channels: channels of the input / output map.
        out_stride: stride of the output w.r.t. the input (a float; e.g. 1.0 for CenterPoint, 2.0 for DSVT nuScenes).
        max_stride: the largest stage stride; input height and width must be multiples of it.
    """

    def __init__(self, config: BEVBackboneConfig, *, input_shape: MapShape) -> None:
        super().__init__()
        if input_shape.channels < 1:
            raise ValueError(f"the input map needs >= 1 channels, got {input_shape}")
        self.config = config
        self._input_shape = input_shape
        self._output_shape = config.output_shape(input_shape)
        self.in_channels = input_shape.channels
        self.out_channels = config.out_channels
        self.out_stride = float(config.out_stride)
        self.max_stride = config.max_stride
        n = len(config.layer_nums)
        ups = config.upsample_fractions
        make_stage = _plain_stage if config.block == "plain" else _residual_stage
        widths = [self.in_channels, *config.num_filters]
        self.blocks = nn.ModuleList(
            make_stage(widths[i], widths[i + 1], config.layer_strides[i], config.layer_nums[i])
            for i in range(n)
        )
        conv_for_one = config.use_conv_for_no_stride and config.block == "plain"
        self.deblocks = nn.ModuleList(
            _deblock(config.num_filters[i], config.num_upsample_filters[i], ups[i], conv_for_one)
            for i in range(min(n, len(ups)))
        )
        if len(ups) == n + 1:
            self.deblocks.append(_deblock(self.out_channels, self.out_channels, ups[n], False))
        self._has_deblocks = bool(ups)

    def input_shape(self) -> MapShape:
        return self._input_shape

    def output_shape(self) -> MapShape:
        """:meth:`BEVBackboneConfig.output_shape` of the input map."""
        return self._output_shape

    def forward(self, bev: torch.Tensor) -> torch.Tensor:
        """``bev`` ``(B, in_channels, H, W)`` -> ``(B, out_channels, H / out_stride, W / out_stride)`` (channels-last).

        ``H`` and ``W`` must be multiples of ``max_stride`` (the stages must line up to be concatenated).
        """
        if not isinstance(bev, torch.Tensor) or bev.ndim != 4:
            raise ValueError(
                f"bev must be a (B, C, H, W) tensor, got {getattr(bev, 'shape', type(bev).__name__)}"
            )
        if bev.shape[1] != self.in_channels:
            raise ValueError(f"bev must have {self.in_channels} channels, got {bev.shape[1]}")
        h, w = bev.shape[-2:]
        if h % self.max_stride or w % self.max_stride:
            raise ValueError(f"bev height and width must be multiples of {self.max_stride}, got {h} x {w}")
        outs = []
        x = bev.contiguous(memory_format=torch.channels_last)  # see the module docstring
        for i, stage in enumerate(self.blocks):
            x = stage(x)
            outs.append(self.deblocks[i](x) if self._has_deblocks else x)
        y = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
        if len(self.deblocks) > len(self.blocks):
            y = self.deblocks[-1](y)
        # transposed convolutions give NCHW: the head reads NHWC
        return y.contiguous(memory_format=torch.channels_last)
