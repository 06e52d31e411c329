"""Building blocks of the TransFusion-L head: learned BEV position encoding, the query decoder layer, the
per-query prediction branches and the dense heatmap branch.

TransFusion (Bai et al., CVPR 2022) initialises object queries at heatmap peaks of the BEV map and refines them
with one transformer decoder layer (self-attention among queries, cross-attention to the flattened BEV map,
feed-forward network). Positions enter the attention as *learned* encodings: a small MLP applied to the BEV-cell
coordinates ``[u, v]`` (column, row in feature-map cells; cell centres are ``col + 0.5, row + 0.5``, see
:meth:`perception.models.heads.box_coder.CenterBoxCoder.cell_centers`).

Tensors in this module are batch-first: queries ``(B, P, C)``, keys ``(B, H * W, C)``, positions ``(B, N, 2)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from perception._validate import check_tensor

__all__ = [
    "PositionEncoding",
    "QueryDecoderLayer",
    "PredictionBranch",
    "HeatmapBranch",
    "select_queries",
]


def select_queries(
    heatmap: torch.Tensor,
    num_proposals: int,
    *,
    kernel_size: int = 3,
    exempt_classes: Sequence[int] = (),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pick the ``num_proposals`` highest class-specific local maxima of a heatmap as query seeds.

    A cell of class ``k`` is a peak when its probability equals the maximum of its ``kernel_size`` x
    ``kernel_size`` neighbourhood of the same class (cells outside the map do not count, so border cells can be
    peaks; the authors exclude a border of ``kernel_size // 2`` cells instead). Non-peaks are set to 0. Classes in
    ``exempt_classes`` are not suppressed at all: every cell is a candidate (TransFusion does this for small,
    densely packed objects: pedestrian and traffic cone on nuScenes, pedestrian and cyclist on Waymo). The
    ``num_proposals`` largest values over all classes and cells are taken (a cell can seed one query per class);
    with fewer peaks than proposals the remaining queries take suppressed cells (value 0), as the authors' do.

    Args:
        heatmap: float ``(B, K, H, W)`` class probabilities (sigmoid of the dense heatmap logits).
        num_proposals: ``P``, ``1 <= P <= K * H * W``.
        kernel_size: odd neighbourhood size of the local-maximum test (1 disables suppression).
        exempt_classes: class indices in ``[0, K)`` exempt from suppression.

    Returns:
        scores: ``(B, P)`` heatmap value of each selected (class, cell), descending, heatmap dtype.
        labels: int64 ``(B, P)`` class of each query.
        index: int64 ``(B, P)`` flat cell index ``row * W + col``.

    Raises:
        ValueError: bad shapes, an even or non-positive kernel, too many proposals, exempt classes out of range.
    """
    check_tensor("heatmap", heatmap, ndim=4)
    b, k, h, w = heatmap.shape
    if (
        isinstance(kernel_size, bool)
        or not isinstance(kernel_size, int)
        or kernel_size < 1
        or kernel_size % 2 == 0
    ):
        raise ValueError(f"kernel_size must be an odd int >= 1, got {kernel_size!r}")
    if not (1 <= num_proposals <= k * h * w):
        raise ValueError(
            f"num_proposals must be in [1, K * H * W = {k * h * w}] for a heatmap of shape {tuple(heatmap.shape)}, "
            f"got {num_proposals}"
        )
    exempt = sorted({int(c) for c in exempt_classes})
    if exempt and (exempt[0] < 0 or exempt[-1] >= k):
        raise ValueError(f"exempt_classes must lie in [0, {k}), got {list(exempt_classes)}")
    local_max = F.max_pool2d(heatmap, kernel_size, stride=1, padding=kernel_size // 2)
    if exempt:
        local_max[:, exempt] = heatmap[:, exempt]
    peaks = torch.where(heatmap == local_max, heatmap, torch.zeros_like(heatmap))
    scores, flat = peaks.reshape(b, k * h * w).topk(num_proposals, dim=1, sorted=True)
    return scores, flat // (h * w), flat % (h * w)


class _TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d over the last dimension of a ``(..., C)`` tensor (statistics over all leading positions)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        shape = x.shape
        return super().forward(x.reshape(-1, shape[-1])).reshape(shape)


class PositionEncoding(nn.Module):
    """Learned positional encoding: ``Linear(2, C) -> BatchNorm -> ReLU -> Linear(C, C)`` on BEV-cell positions.

    Args:
        channels: output size ``C``.
        in_dims: size of a position (2 for BEV ``(x, y)``).
    """

    def __init__(self, *, channels: int, in_dims: int = 2) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_dims, channels), _TokenBatchNorm(channels), nn.ReLU(), nn.Linear(channels, channels)
        )

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """``(B, N, in_dims)`` float positions (feature-map cells) -> ``(B, N, C)`` encodings."""
        return self.layers(positions)


class QueryDecoderLayer(nn.Module):
    """One TransFusion decoder layer (post-norm, as the authors').

    ``q = LN(q + SelfAttn(q + pq, q + pq, q + pq))``;
    ``q = LN(q + CrossAttn(q + pq, k + pk, k + pk))``; ``q = LN(q + FFN(q))``, where ``pq`` / ``pk`` are the learned
    encodings of the query / key positions. (The authors add the position encoding to the values too; we do the
    same so their weights would behave identically.)

    Args:
        d_model: feature size ``C``.
        num_heads: attention heads (``C`` divisible by it).
        ffn_channels: hidden size of the feed-forward network.
        dropout: dropout probability inside the attention and after each residual branch.
        activation: ``"relu"`` or ``"gelu"`` for the FFN.
    """

    def __init__(
        self,
        *,
        d_model: int,
        num_heads: int,
        ffn_channels: int,
        dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        if activation not in ("relu", "gelu"):
            raise ValueError(f"activation must be 'relu' or 'gelu', got {activation!r}")
        self.self_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, ffn_channels),
            nn.ReLU() if activation == "relu" else nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(ffn_channels, d_model),
        )
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.drop1 = nn.Dropout(dropout)
        self.drop2 = nn.Dropout(dropout)
        self.drop3 = nn.Dropout(dropout)
        self.query_pos = PositionEncoding(channels=d_model)
        self.key_pos = PositionEncoding(channels=d_model)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        query_xy: torch.Tensor,
        key_xy: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Refine the queries.

        Args:
            query: float ``(B, P, C)`` query features.
            key: float ``(B, L, C)`` BEV features (flattened map, ``L = H * W``).
            query_xy: float ``(B, P, 2)`` query positions in feature-map cells.
            key_xy: float ``(B, L, 2)`` or ``(1, L, 2)`` key positions in feature-map cells.
            key_padding_mask: optional bool ``(B, L)``, True for keys to ignore.

        Returns:
            float ``(B, P, C)`` refined query features.
        """
        pq = self.query_pos(query_xy)
        pk = self.key_pos(key_xy)
        if pk.shape[0] != key.shape[0]:
            pk = pk.expand(key.shape[0], -1, -1)
        q = query + pq
        q2 = self.self_attn(q, q, q, need_weights=False)[0]
        query = self.norm1(query + self.drop1(q2))
        k = key + pk
        q2 = self.cross_attn(query + pq, k, k, key_padding_mask=key_padding_mask, need_weights=False)[0]
        query = self.norm2(query + self.drop2(q2))
        return self.norm3(query + self.drop3(self.ffn(query)))


class PredictionBranch(nn.Module):
    """Per-query FFN branch: ``num_layers - 1`` x (Linear -> BatchNorm -> ReLU), then Linear to ``out_channels``.

    Args:
        in_channels: query feature size ``C``.
        hidden_channels: hidden size (the authors use 64).
        out_channels: predicted values per query.
        num_layers: total linear layers, ``>= 1``.
        bias_init: initial bias of the last layer (e.g. ``-2.19`` for class logits, prior probability 0.1).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        hidden_channels: int,
        out_channels: int,
        num_layers: int = 2,
        bias_init: float = 0.0,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        layers: list[nn.Module] = []
        c = in_channels
        for _ in range(num_layers - 1):
            layers += [nn.Linear(c, hidden_channels, bias=False), _TokenBatchNorm(hidden_channels), nn.ReLU()]
            c = hidden_channels
        last = nn.Linear(c, out_channels)
        nn.init.constant_(last.bias, bias_init)
        layers.append(last)
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, P, C)`` -> ``(B, P, out_channels)``."""
        return self.layers(x)


class HeatmapBranch(nn.Module):
    """Dense class heatmap on the BEV map: conv3x3 -> BatchNorm -> ReLU -> conv3x3 to ``num_classes`` logits.

    Args:
        channels: input feature size.
        num_classes: ``K`` output maps.
        bias_init: initial bias of the output conv (``-2.19``: prior probability 0.1).
    """

    def __init__(self, *, channels: int, num_classes: int, bias_init: float = -2.19) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(channels)
        self.out = nn.Conv2d(channels, num_classes, 3, padding=1)
        assert self.out.bias is not None
        nn.init.constant_(self.out.bias, bias_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, K, H, W)`` logits."""
        return self.out(F.relu(self.norm(self.conv(x))))
