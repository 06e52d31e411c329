"""DSVT inference path: the chunked set-attention layer equals the reference (all sets at once) path."""

from __future__ import annotations

import pytest
import torch
from test_dsvt import CFGS, C, model_of, pillar_cfg, random_sparse

from perception.models.backbones import dsvt_chunked
from perception.models.backbones.dsvt_blocks import SetAttentionLayer
from perception.models.backbones.dsvt_chunked import chunked_inference_applies
from perception.models.backbones.dsvt_input import PosEmbedding, SetIndex
from perception.ops.set_partition import set_partition


def _sets(n: int, set_size: int, seed: int = 0) -> SetIndex:
    sparse = random_sparse(pillar_cfg(), n, seed=seed)
    part = set_partition(sparse.coords, pillar_cfg().sparse_shape, (1, 10, 12), set_size)
    return SetIndex.from_partition(part, n)


def test_read_back_indices() -> None:
    """read_slot lists every voxel's first-copy slot in ascending order, read_voxel the voxel there."""
    n = 400
    sets = _sets(n, 30)
    for order in range(2):
        index, _, first = sets.order(order)
        read_slot, read_voxel = sets.reads(order)
        assert bool((read_slot[1:] > read_slot[:-1]).all())
        assert torch.equal(torch.sort(read_voxel).values, torch.arange(n))
        assert torch.equal(first[read_voxel], read_slot)
        assert torch.equal(index.reshape(-1)[read_slot], read_voxel)


def test_pos_embedding_rows() -> None:
    g = torch.Generator().manual_seed(0)
    table, index = torch.randn(7, C, generator=g), torch.randint(0, 7, (20,), generator=g)
    voxels = torch.tensor([3, 3, 0, 19])
    for pos in (PosEmbedding(table, index), PosEmbedding(table[index], None)):
        assert torch.equal(pos.dense(), table[index])
        assert torch.equal(pos.rows(voxels), table[index][voxels])


def _layer(activation: str, seed: int = 0) -> SetAttentionLayer:
    torch.manual_seed(seed)
    layer = SetAttentionLayer(d_model=C, num_heads=4, dim_feedforward=32, activation=activation).eval()
    with torch.no_grad():  # non-trivial LayerNorm affine parameters and biases
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return layer


@pytest.mark.parametrize("activation", ["gelu", "relu"])
@pytest.mark.parametrize("chunk_slots", [1, 100, 1 << 20])  # one set per chunk, a few sets, all sets
@pytest.mark.parametrize("table", [True, False])
@pytest.mark.parametrize("masked", [True, False])
def test_chunked_layer_equals_reference(
    monkeypatch: pytest.MonkeyPatch, activation: str, chunk_slots: int, table: bool, masked: bool
) -> None:
    monkeypatch.setattr(dsvt_chunked, "CHUNK_SLOTS", chunk_slots)
    n = 500
    sets = _sets(n, 30, seed=1)  # padded to 32 slots on the CPU, repeated slots masked
    if not masked:  # no mask at all (every slot a key): the chunked path must pass None through as well
        sets = SetIndex.from_index(sets.voxel_index, None, n)
    layer = _layer(activation)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(n, C, generator=g)
    key = torch.randint(0, 60, (n,), generator=g)
    pos_table = torch.randn(60, C, generator=g)
    pos = PosEmbedding(pos_table, key) if table else PosEmbedding(pos_table[key], None)
    for order in range(2):
        with torch.no_grad():
            assert chunked_inference_applies(layer, x)
            got = layer(x, pos, sets, order)
        with torch.enable_grad():  # autograd recording: the reference path
            assert not chunked_inference_applies(layer, x)
            want = layer(x, pos, sets, order)
        torch.testing.assert_close(got, want.detach(), atol=2e-5, rtol=2e-5)


def test_chunked_path_only_at_inference_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    layer, x = _layer("gelu"), torch.randn(5, C)
    with torch.no_grad():
        assert chunked_inference_applies(layer, x)
        assert not chunked_inference_applies(layer, x[:0])  # no voxels
        assert not chunked_inference_applies(layer.train(), x)  # training: dropout, reference path
        layer.eval()
        monkeypatch.setattr(torch.jit, "is_tracing", lambda: True)
        assert not chunked_inference_applies(layer, x)  # exported graphs keep the reference path


@pytest.mark.parametrize("chunk_slots", [64, dsvt_chunked.CHUNK_SLOTS])
@pytest.mark.parametrize("name", ["voxel", "pillar"])
def test_backbone_inference_equals_reference(
    monkeypatch: pytest.MonkeyPatch, name: str, chunk_slots: int
) -> None:
    """Whole backbone in eval mode: without autograd (chunked layers) == with autograd (reference path)."""
    monkeypatch.setattr(dsvt_chunked, "CHUNK_SLOTS", chunk_slots)
    cfg = CFGS[name]()
    model = model_of(cfg).eval()
    sparse = random_sparse(cfg, 700)  # more voxels than window positions: positional tables at inference
    geo = model.geometry(sparse)
    with torch.no_grad():
        got = model(sparse, geo)
    want = model(sparse, geo)
    assert torch.equal(got.coords, want.coords)
    torch.testing.assert_close(got.features, want.features.detach(), atol=1e-4, rtol=1e-4)


def test_backbone_inference_under_bf16_autocast() -> None:
    cfg = pillar_cfg()
    model = model_of(cfg).eval()
    sparse = random_sparse(cfg, 700)
    geo = model.geometry(sparse)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            got = model(sparse, geo).features
        want = model(sparse, geo).features.detach()
    assert got.dtype == want.dtype
    err = (got.float() - want.float()).norm() / want.float().norm()
    assert err < 1e-2, f"chunked vs reference under bf16 autocast: relative error {err:.4f}"


@pytest.mark.parametrize("masked", [True, False])
def test_bmm_attention_equals_sdpa(masked: bool) -> None:
    """The float32 batched-product attention equals torch's SDPA on the same chunk (both read at the same slots)."""
    n, k, h, c = 5, 32, 4, C
    g = torch.Generator().manual_seed(3)
    qk, v = torch.randn(n * k, 2 * c, generator=g), torch.randn(n * k, c, generator=g)
    keep = torch.rand(n, 1, 1, k, generator=g) > 0.3
    keep[..., 0] = True  # every set keeps a key
    local = torch.randperm(n * k, generator=g)[:100]
    with torch.no_grad():
        neg = dsvt_chunked._additive_mask(keep)
        got = dsvt_chunked._attention_bmm(qk, v, neg if masked else None, (n, k, h), local)
        want = dsvt_chunked._attention_sdpa(qk, v, keep if masked else None, (n, k, h), local)
    assert got.shape == (100, c)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
