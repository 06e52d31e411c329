"""Config of the image backbone and neck (the YAML schema and what :mod:`.resnet` / :mod:`.fpn` read).

.. code-block:: yaml

    resnet:
      depth: 50                 # 18 | 34 | 50
      base_width: 64            # channels of the stem; stage i has base_width * 2**i (x4 for ResNet-50 outputs)
      frozen_stages: 1          # -1 nothing, 0 stem, i: stem + layer1..layer_i (mmdet)
      norm_eval: true           # BatchNorm layers stay in eval mode while training (mmdet)
      pretrained: ../checkpoints/resnet50-0676ba61.pth   # torchvision or mmdet checkpoint, loaded by path
    fpn:
      out_channels: 256
      levels: [4, 8, 16, 32]    # output strides; 64, 128 add extra levels (``extra``)
      extra: max_pool

Torch-free (pydantic and :mod:`perception.config_types`).
"""

from __future__ import annotations

from itertools import pairwise
from typing import Annotated, Literal

from pydantic import Field, Strict, field_validator

from perception.config_types import Bool, ConfigPath, PosInt, StrictSection

__all__ = ["BACKBONE_STRIDES", "FPNConfig", "ResNetConfig"]

BACKBONE_STRIDES = (4, 8, 16, 32)
"""Strides of the ResNet outputs C2, C3, C4, C5 (``layer1`` .. ``layer4``)."""


class ResNetConfig(StrictSection):
    """A torchvision-layout ResNet (:class:`~perception.models.image.resnet.ResNet`).

    Attributes:
        depth: 18 or 34 (BasicBlock) or 50 (Bottleneck, stride on the 3x3 conv: torchvision / mmdet "pytorch").
        base_width: stem channels; stage ``i`` (``layer{i+1}``) has ``base_width * 2**i`` planes. 64 is the
            standard network (loads torchvision / mmdet weights); smaller values make CPU-sized networks with the
            same parameter names.
        frozen_stages: as mmdet: -1 nothing frozen, 0 the stem (``conv1``, ``bn1``), ``i`` the stem and
            ``layer1`` .. ``layer{i}`` (no gradients, BatchNorm in eval mode).
        norm_eval: keep every BatchNorm in eval mode (running statistics frozen) while training, as mmdet.
        pretrained: a local torchvision state dict or mmdet / mmdet3d checkpoint loaded when the
            :class:`~perception.models.image.encoder.ImageEncoder` is built
            (:func:`~perception.models.image.weights.load_image_weights`); None: random init.
    """

    depth: Literal[18, 34, 50] = 50
    base_width: PosInt = 64
    frozen_stages: Annotated[int, Strict(), Field(ge=-1, le=4)] = -1
    norm_eval: Bool = False
    pretrained: ConfigPath | None = None

    @property
    def out_channels(self) -> tuple[int, int, int, int]:
        """Channels of C2..C5."""
        expansion = 4 if self.depth == 50 else 1
        return tuple(self.base_width * 2**i * expansion for i in range(4))  # type: ignore[return-value]


class FPNConfig(StrictSection):
    """An mmdet-layout FPN (:class:`~perception.models.image.fpn.FPN`).

    Attributes:
        out_channels: channels of every output level.
        levels: output strides, each twice the one before. Those in :data:`BACKBONE_STRIDES` are built from the
            backbone level of that stride (mmdet ``start_level`` / ``end_level``); strides above 32 are extra
            levels (mmdet ``num_outs``), which need 32 among the levels.
        extra: how extra levels are made: ``max_pool`` (mmdet ``add_extra_convs=False``: 1x1 max pool, stride 2,
            of the level below; no parameters), ``on_input`` (a 3x3 stride-2 conv on C5, then on the level below)
            or ``on_output`` (a 3x3 stride-2 conv on the level below).
    """

    out_channels: PosInt = 256
    levels: tuple[PosInt, ...] = BACKBONE_STRIDES
    extra: Literal["max_pool", "on_input", "on_output"] = "max_pool"

    @field_validator("levels")
    @classmethod
    def _check_levels(cls, levels: tuple[int, ...]) -> tuple[int, ...]:
        if not levels or levels[0] not in BACKBONE_STRIDES:
            raise ValueError(
                f"levels must start at one of the backbone strides {BACKBONE_STRIDES}, got {levels}"
            )
        if any(b != 2 * a for a, b in pairwise(levels)):
            raise ValueError(f"each level's stride must be twice the one before, got {levels}")
        return levels

    @property
    def backbone_levels(self) -> tuple[int, ...]:
        """Indices into C2..C5 of the backbone levels used (0 = C2, stride 4)."""
        return tuple(BACKBONE_STRIDES.index(s) for s in self.levels if s in BACKBONE_STRIDES)

    @property
    def num_extra(self) -> int:
        """Extra levels above C5."""
        return sum(s > BACKBONE_STRIDES[-1] for s in self.levels)
