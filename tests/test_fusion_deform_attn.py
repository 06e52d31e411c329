"""Multi-scale deformable attention: the grid_sample implementation against the explicit loop reference (inside,
on the border and outside the maps), the module's shapes, locality and gradients, and its shape checks."""

from __future__ import annotations

import pytest
import torch

from perception.models.fusion.deform_attn import (
    MSDeformAttn,
    multi_scale_deformable_attention,
    multi_scale_deformable_attention_reference,
)

SIZES = [(4, 6), (2, 3), (1, 2)]


def _inputs(seed: int, n: int = 2, m: int = 3, heads: int = 2, ch: int = 3, points: int = 2):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    values = [torch.randn(n, heads, ch, h, w, generator=g) for h, w in SIZES]
    # locations in [-0.2, 1.2]: some outside the map (zero padding), some between the border pixel and the edge
    locations = torch.rand(n, m, heads, len(SIZES), points, 2, generator=g) * 1.4 - 0.2
    weights = torch.rand(n, m, heads, len(SIZES), points, generator=g)
    return values, locations, weights


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grid_sample_matches_loop_reference(seed: int) -> None:
    values, locations, weights = _inputs(seed)
    fast = multi_scale_deformable_attention(values, locations, weights)
    ref = multi_scale_deformable_attention_reference(values, locations, weights)
    assert fast.shape == (2, 3, 2 * 3)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


def test_pixel_centres_sample_exact_values() -> None:
    """A location on a pixel centre with weight 1 returns exactly that pixel (the align_corners=False convention)."""
    values, locations, weights = _inputs(3, n=1, m=1, heads=1, ch=2, points=1)
    weights.zero_()
    weights[0, 0, 0, 0, 0] = 1.0
    h, w = SIZES[0]
    locations[0, 0, 0, 0, 0] = torch.tensor([(4 + 0.5) / w, (1 + 0.5) / h])
    out = multi_scale_deformable_attention(values, locations, weights)
    torch.testing.assert_close(out[0, 0], values[0][0, 0, :, 1, 4])


def test_module_shapes_gradients_and_locality() -> None:
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=8, value_channels=5, num_heads=2, num_levels=2, num_points=2)
    query = torch.randn(3, 4, 8, requires_grad=True)
    reference = torch.full((3, 4, 2), 0.25)
    maps = [torch.randn(3, 5, 16, 16, requires_grad=True), torch.randn(3, 5, 8, 8, requires_grad=True)]
    out = attn(query, reference, maps)
    assert out.shape == (3, 4, 8)
    out.square().sum().backward()
    assert query.grad is not None and maps[0].grad is not None
    assert all(p.grad is not None for p in attn.parameters())
    # with the initial offsets (at most num_points cells from the reference), the far corner is never sampled
    assert not bool(maps[0].grad[..., 12:, 12:].any())
    with torch.no_grad():
        far = [maps[0].clone(), maps[1].clone()]
        far[0][..., 12:, 12:] += 100.0
        torch.testing.assert_close(attn(query, reference, far), attn(query, reference, maps))


def test_shape_errors() -> None:
    values, locations, weights = _inputs(0)
    with pytest.raises(ValueError, match="weights"):
        multi_scale_deformable_attention(values, locations, weights[..., :1])
    with pytest.raises(ValueError, match="levels"):
        multi_scale_deformable_attention(values[:2], locations, weights)
    attn = MSDeformAttn(d_model=8, value_channels=8, num_heads=2, num_levels=2, num_points=1)
    with pytest.raises(ValueError, match="reference"):
        attn(torch.zeros(1, 2, 8), torch.zeros(1, 3, 2), [torch.zeros(1, 8, 4, 4), torch.zeros(1, 8, 2, 2)])
    with pytest.raises(ValueError, match="divide"):
        MSDeformAttn(d_model=6, value_channels=8, num_heads=4, num_levels=1, num_points=1)
