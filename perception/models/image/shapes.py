"""What an image backbone + neck outputs: the multi-scale feature levels every camera-side stage is built from."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ImageFeatureShape"]


@dataclass(frozen=True)
class ImageFeatureShape:
    """Multi-scale image features of ``L`` levels, all with ``channels`` channels.

    Level ``l`` of an input image ``(H, W)`` (both multiples of ``max(strides)``) is a map
    ``(B, V, channels, H / strides[l], W / strides[l])``; feature cell ``j`` covers input pixels
    ``[j * s, (j + 1) * s)``, so a pixel coordinate ``u`` is at feature coordinate ``u / s`` and at
    ``grid_sample`` coordinate ``2 * u / W - 1`` (``align_corners=False``) on every level.

    Attributes:
        channels: feature channels ``C`` of every level.
        strides: ``L`` strides w.r.t. the input image, increasing (SparseFusion: ``(4, 8, 16, 32)``).
    """

    channels: int
    strides: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.channels < 1:
            raise ValueError(f"ImageFeatureShape.channels must be >= 1, got {self.channels}")
        if (
            not self.strides
            or any(s < 1 for s in self.strides)
            or list(self.strides) != sorted(set(self.strides))
        ):
            raise ValueError(
                f"ImageFeatureShape.strides must be increasing positive ints, got {self.strides}"
            )

    @property
    def num_levels(self) -> int:
        return len(self.strides)

    def level_sizes(self, image_size: tuple[int, int]) -> tuple[tuple[int, int], ...]:
        """``(H_l, W_l)`` of each level for an input ``image_size`` ``(H, W)``; ``ValueError`` unless both are
        multiples of the largest stride."""
        h, w = image_size
        top = self.strides[-1]
        if h % top or w % top:
            raise ValueError(f"image size {h}x{w} must be a multiple of the largest feature stride {top}")
        return tuple((h // s, w // s) for s in self.strides)
