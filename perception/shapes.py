"""What a stage outputs, declared by the stage (detectron2's ``ShapeSpec`` / ``output_shape()``), and the
protocols the detector's stages follow.

Every stage of :class:`~perception.models.detector.VoxelDetector` says what it takes and what it gives:

* a VFE or a 3D backbone works on sparse voxels: :class:`SparseShape` (channels, grid, stride);
* the BEV step, the 2D backbone and the head work on dense maps: :class:`MapShape` (channels, ``(H, W)``, stride).

The same arithmetic serves both moments at which shapes matter: a stage's config class computes
``output_shape(input)`` without building anything (the config-time plan of
:meth:`perception.models.model_config.ModelConfig.plan`), and the built module's ``output_shape()`` returns that
very computation for its own settings. The detector's fit check compares ``output_shape()`` of one stage with
``input_shape()`` of the next, and nothing re-derives a shape from a config with its own rule.

Strides are x/y strides relative to the input voxel grid (:class:`~perception.grid.VoxelGrid`); a map's stride may
be fractional after upsampling inside the 2D backbone, so it is a :class:`~fractions.Fraction`.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    from perception.grid import VoxelGrid
    from perception.structures import Detections, SparseFeatures

__all__ = ["Backbone3D", "BEVStage", "DetectionHead", "MapShape", "SparseShape", "SparseStage", "check_fit"]


@dataclass(frozen=True)
class SparseShape:
    """Sparse voxel features: ``(M, channels)`` on a grid.

    Attributes:
        channels: feature channels ``C``.
        grid: grid ``(nz, ny, nx)`` the voxel coordinates index.
        stride: x/y stride of that grid relative to the input voxel grid (1 for the VFE output).
    """

    channels: int
    grid: tuple[int, int, int]
    stride: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", tuple(int(v) for v in self.grid))


@dataclass(frozen=True)
class MapShape:
    """A dense ``(B, channels, H, W)`` BEV map.

    Attributes:
        channels: ``C``.
        size: ``(H, W)``.
        stride: x/y stride relative to the input voxel grid (one map cell is ``stride`` voxels wide).
    """

    channels: int
    size: tuple[int, int]
    stride: Fraction = Fraction(1)

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", tuple(int(v) for v in self.size))
        object.__setattr__(self, "stride", Fraction(self.stride).limit_denominator(1000))


def check_fit(producer: str, produced: Any, consumer: str, expected: Any) -> None:
    """Raise ``ValueError`` naming both stages when ``produced`` (an output shape) differs from ``expected``."""
    if produced != expected:
        raise ValueError(f"{consumer} expects {expected}, but {producer} outputs {produced}")


@runtime_checkable
class SparseStage(Protocol):
    """A VFE: points or hard voxels -> :class:`SparseFeatures` on the voxel grid.

    Attributes:
        voxel_mode: ``"hard"`` (reads hard voxels) or ``"dynamic"`` (voxelizes the points itself).
        grid: the voxel grid it works on.
        num_point_features: point columns it reads.
    """

    voxel_mode: str
    grid: VoxelGrid
    num_point_features: int

    def output_shape(self) -> SparseShape: ...

    def __call__(self, *args: Any, **kwargs: Any) -> SparseFeatures: ...


@runtime_checkable
class Backbone3D(Protocol):
    """Sparse voxels -> sparse voxels (spconv ResNet, DSVT)."""

    def input_shape(self) -> SparseShape: ...

    def output_shape(self) -> SparseShape: ...

    def __call__(self, sparse: SparseFeatures) -> SparseFeatures: ...


@runtime_checkable
class BEVStage(Protocol):
    """A step to or on the BEV map (sparse -> dense scatter, or the 2D backbone)."""

    def input_shape(self) -> SparseShape | MapShape: ...

    def output_shape(self) -> MapShape: ...


@runtime_checkable
class DetectionHead(Protocol):
    """BEV map -> raw outputs -> losses / decoded detections."""

    def input_shape(self) -> MapShape: ...

    def __call__(self, bev: torch.Tensor) -> Any: ...

    def loss(self, output: Any, boxes: Any, labels: Any) -> dict[str, torch.Tensor]: ...

    def decode(self, output: Any) -> list[Detections]: ...

    def predict(self, bev: torch.Tensor) -> list[Detections]: ...
