"""Multi-scale deformable attention (Zhu et al., "Deformable DETR", ICLR 2021) in plain torch.

Each query attends to ``P`` sampled points per head and feature level around its reference point instead of to
every key: the sampling offsets (in level cells) and the attention weights (softmax over levels x points) are
linear functions of the query. The sampling is bilinear with zero padding, ``grid_sample`` with
``align_corners=False``, so a normalised location ``(x, y)`` in ``[0, 1]^2`` is the same image point on every
level (the convention of :class:`~perception.models.image.shapes.ImageFeatureShape`). No compiled op: the
authors' CUDA kernel computes the same sum, and :func:`multi_scale_deformable_attention_reference` computes it
with explicit loops for the tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MSDeformAttn", "multi_scale_deformable_attention", "multi_scale_deformable_attention_reference"]


def _check(values: Sequence[torch.Tensor], locations: torch.Tensor, weights: torch.Tensor) -> None:
    if locations.ndim != 6 or locations.shape[-1] != 2:
        raise ValueError(f"locations must be (N, M, heads, L, P, 2), got {tuple(locations.shape)}")
    n, m, h, lv, p, _ = locations.shape
    if tuple(weights.shape) != (n, m, h, lv, p):
        raise ValueError(f"weights must be {(n, m, h, lv, p)}, got {tuple(weights.shape)}")
    if len(values) != lv:
        raise ValueError(f"need {lv} value levels, got {len(values)}")
    for i, v in enumerate(values):
        if v.ndim != 5 or v.shape[0] != n or v.shape[1] != h:
            raise ValueError(f"values[{i}] must be (N={n}, heads={h}, C_h, H_l, W_l), got {tuple(v.shape)}")


def multi_scale_deformable_attention(
    values: Sequence[torch.Tensor], locations: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Weighted sum of bilinear samples (module docstring), by ``grid_sample``.

    Args:
        values: ``L`` tensors ``(N, heads, C_h, H_l, W_l)`` per-head value maps.
        locations: ``(N, M, heads, L, P, 2)`` normalised sampling points ``(x, y)``; outside ``[0, 1]`` samples 0.
        weights: ``(N, M, heads, L, P)`` attention weights.

    Returns:
        ``(N, M, heads * C_h)``.
    """
    _check(values, locations, weights)
    n, m, h, _, p, _ = locations.shape
    grids = 2.0 * locations - 1.0
    out: torch.Tensor | None = None
    for lvl, v in enumerate(values):
        ch, hh, ww = v.shape[2:]
        g = grids[:, :, :, lvl].permute(0, 2, 1, 3, 4).reshape(n * h, m, p, 2).to(v.dtype)
        s = F.grid_sample(
            v.reshape(n * h, ch, hh, ww), g, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        w = weights[:, :, :, lvl].permute(0, 2, 1, 3).reshape(n * h, 1, m, p).to(v.dtype)
        term = (s * w).sum(-1)  # (N * heads, C_h, M)
        out = term if out is None else out + term
    assert out is not None
    ch = values[0].shape[2]
    return out.reshape(n, h, ch, m).permute(0, 3, 1, 2).reshape(n, m, h * ch)


def multi_scale_deformable_attention_reference(
    values: Sequence[torch.Tensor], locations: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """The same sum with explicit loops and hand-written bilinear interpolation (tests only; slow).

    Pixel ``(i, j)`` of a ``H x W`` map has its centre at normalised ``((j + 0.5) / W, (i + 0.5) / H)``; a point
    mixes its four neighbouring pixel centres, and neighbours outside the map contribute zero."""
    _check(values, locations, weights)
    n, m, h, lv, p, _ = locations.shape
    ch = values[0].shape[2]
    out = torch.zeros(n, m, h, ch, dtype=torch.float64)
    for b in range(n):
        for q in range(m):
            for head in range(h):
                for lvl in range(lv):
                    v = values[lvl][b, head].double()
                    hh, ww = v.shape[1:]
                    for k in range(p):
                        x = float(locations[b, q, head, lvl, k, 0]) * ww - 0.5
                        y = float(locations[b, q, head, lvl, k, 1]) * hh - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        fx, fy = x - x0, y - y0
                        sample = torch.zeros(ch, dtype=torch.float64)
                        for dy, wy in ((0, 1 - fy), (1, fy)):
                            for dx, wx in ((0, 1 - fx), (1, fx)):
                                r, c = y0 + dy, x0 + dx
                                if 0 <= r < hh and 0 <= c < ww:
                                    sample += wy * wx * v[:, r, c]
                        out[b, q, head] += float(weights[b, q, head, lvl, k]) * sample
    return out.reshape(n, m, h * ch).to(values[0].dtype)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention module (Deformable DETR's ``MSDeformAttn``, same initialisation).

    Args:
        d_model: query width ``C``.
        value_channels: channels of the value maps (projected to ``C``).
        num_heads: heads (divide ``C``).
        num_levels: feature levels ``L``.
        num_points: sampling points ``P`` per head and level.
    """

    def __init__(
        self, *, d_model: int, value_channels: int, num_heads: int, num_levels: int, num_points: int
    ) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide d_model ({d_model})")
        self.d_model, self.num_heads, self.num_levels, self.num_points = (
            d_model,
            num_heads,
            num_levels,
            num_points,
        )
        self.sampling_offsets = nn.Linear(d_model, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(d_model, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(value_channels, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        nn.init.zeros_(self.sampling_offsets.weight)
        angle = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([angle.cos(), angle.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid[:, None, None, :].repeat(1, self.num_levels, self.num_points, 1)
        grid = grid * torch.arange(1, self.num_points + 1, dtype=torch.float32)[None, None, :, None]
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self, query: torch.Tensor, reference: torch.Tensor, values: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """Attend.

        Args:
            query: ``(N, M, C)`` queries (position encoding already added).
            reference: ``(N, M, 2)`` normalised reference points ``(x, y)`` in ``[0, 1]``.
            values: ``L`` maps ``(N, C_v, H_l, W_l)``.

        Returns:
            ``(N, M, C)``.
        """
        n, m, c = query.shape
        if len(values) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} value levels, got {len(values)}")
        if tuple(reference.shape) != (n, m, 2):
            raise ValueError(f"reference must be {(n, m, 2)}, got {tuple(reference.shape)}")
        h, lv, p = self.num_heads, self.num_levels, self.num_points
        maps = []
        sizes = []
        for v in values:
            hh, ww = v.shape[-2:]
            proj = self.value_proj(v.flatten(2).transpose(1, 2))  # (N, H*W, C)
            maps.append(proj.transpose(1, 2).reshape(n, h, c // h, hh, ww))
            sizes.append((ww, hh))
        norm = torch.tensor(sizes, dtype=query.dtype, device=query.device)  # (L, 2) [W, H]
        offsets = self.sampling_offsets(query).reshape(n, m, h, lv, p, 2)
        locations = reference[:, :, None, None, None, :] + offsets / norm[None, None, None, :, None, :]
        weights = self.attention_weights(query).reshape(n, m, h, lv * p).softmax(-1).reshape(n, m, h, lv, p)
        return self.output_proj(multi_scale_deformable_attention(maps, locations, weights))
