"""ResNet-18 / 34 / 50 in plain torch with torchvision's parameter and buffer names, without the classifier.

Names and shapes are those of ``torchvision.models.resnet{18,34,50}().state_dict()`` minus ``fc.*``:
``conv1.weight``, ``bn1.{weight,bias,running_mean,running_var,num_batches_tracked}``, then
``layer{1..4}.{j}.conv{1,2[,3]}.weight`` / ``bn{1,2[,3]}.*`` and, on the first block of a stage whose input and
output differ, ``layer{i}.0.downsample.0.weight`` (1x1 conv) / ``downsample.1.*`` (BatchNorm). mmdet's ResNet
(``style='pytorch'``) uses the same names, so both kinds of checkpoint load (:mod:`.weights`).

Blocks: BasicBlock (two 3x3 convs) for 18 / 34; Bottleneck (1x1, 3x3, 1x1, expansion 4) for 50 with the stride on
the 3x3 conv (torchvision "v1.5", mmdet ``style='pytorch'``). Init as torchvision: Kaiming-normal (fan out)
convs, BatchNorm weight 1 and bias 0.
"""

from __future__ import annotations

import torch
from torch import nn

from .image_config import BACKBONE_STRIDES, ResNetConfig

__all__ = ["BLOCKS_PER_STAGE", "BasicBlock", "Bottleneck", "ResNet"]

BLOCKS_PER_STAGE = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN, identity (or ``downsample``) shortcut; output ``planes`` channels."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 (reduce) -> 3x3 (stride) -> 1x1 (expand x4) conv + BN, identity (or ``downsample``) shortcut."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet backbone returning C2..C5 (strides 4, 8, 16, 32).

    Args:
        config: :class:`~perception.models.image.image_config.ResNetConfig` (``pretrained`` is read by the
            :class:`~perception.models.image.encoder.ImageEncoder`, not here).
    """

    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        self.config = config
        block: type[BasicBlock] | type[Bottleneck] = Bottleneck if config.depth == 50 else BasicBlock
        width = config.base_width
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = width
        for i, blocks in enumerate(BLOCKS_PER_STAGE[config.depth]):
            planes = width * 2**i
            stride = 1 if i == 0 else 2
            downsample = None
            if stride != 1 or inplanes != planes * block.expansion:
                downsample = nn.Sequential(
                    _conv1x1(inplanes, planes * block.expansion, stride),
                    nn.BatchNorm2d(planes * block.expansion),
                )
            layers = [block(inplanes, planes, stride, downsample)]
            inplanes = planes * block.expansion
            layers += [block(inplanes, planes, 1, None) for _ in range(1, blocks)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self._freeze_stages()

    @property
    def out_channels(self) -> tuple[int, int, int, int]:
        """Channels of C2..C5."""
        return self.config.out_channels

    @property
    def strides(self) -> tuple[int, ...]:
        return BACKBONE_STRIDES

    def _frozen_modules(self) -> list[nn.Module]:
        frozen = self.config.frozen_stages
        if frozen < 0:
            return []
        return [self.conv1, self.bn1] + [getattr(self, f"layer{i}") for i in range(1, frozen + 1)]

    def _freeze_stages(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> ResNet:
        """As ``nn.Module.train``, but frozen stages, and with ``norm_eval`` every BatchNorm, stay in eval mode."""
        super().train(mode)
        if mode:
            self._freeze_stages()
            if self.config.norm_eval:
                for m in self.modules():
                    if isinstance(m, nn.BatchNorm2d):
                        m.eval()
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """
        Args:
            x: float ``(N, 3, H, W)`` normalised images.

        Returns:
            C2..C5: ``(N, out_channels[i], H / s, W / s)`` for ``s`` = 4, 8, 16, 32 (sizes rounded up as the
            strided convs do; exact when ``H`` and ``W`` are multiples of 32).
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"ResNet input x must be (N, 3, H, W), got {tuple(x.shape)}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            outs.append(x)
        return outs
