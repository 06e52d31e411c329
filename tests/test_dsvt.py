"""DSVT backbone: shapes, gradients, order invariance, masks, edge inputs, autocast, flags (configs: test_dsvt_config)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from perception.models.backbones.dsvt import DSVTBackbone, build_dsvt
from perception.models.backbones.dsvt_blocks import AttentionPooling, SetAttentionLayer
from perception.models.backbones.dsvt_config import DSVTConfig, DSVTStageConfig
from perception.models.backbones.dsvt_convert import convert_authors_state_dict, to_authors_state_dict
from perception.models.backbones.dsvt_input import SetIndex, first_slots
from perception.ops._backend import cuda_simulator_enabled
from perception.ops.pool_windows import pool_windows
from perception.ops.set_partition import set_partition
from perception.shapes import SparseShape
from perception.structures import SparseFeatures

C = 16


def voxel_cfg(**overrides: object) -> DSVTConfig:
    """3 stages (2, 1, 2 blocks), pooling strides (2, 2, 2) and (4, 1, 1), non-square grid, z shifts."""

    def stage(window, shift, set_size, blocks, heads, stride=None):
        return DSVTStageConfig(
            window_shape=window,
            hybrid_factor=(1, 2, 2),
            shift=shift,
            set_size=set_size,
            num_blocks=blocks,
            d_model=C,
            num_heads=heads,
            dim_feedforward=32,
            downsample_stride=stride,
        )

    fields: dict[str, object] = dict(
        sparse_shape=(8, 18, 20),
        stages=(
            stage((4, 4, 5), (2, 2, 3), 8, 2, 2, (2, 2, 2)),
            stage((4, 3, 4), (0, 1, 2), 6, 1, 4, (4, 1, 1)),
            stage((1, 5, 5), (0, 5, 5), 5, 2, 2),
        ),
        bev_shape=(9, 10),
        pool_num_heads=4,
    )
    fields.update(overrides)
    return DSVTConfig(**fields)  # type: ignore[arg-type]


def pillar_cfg(**overrides: object) -> DSVTConfig:
    """One stage, 3 blocks, 12 x 10 windows and a 24 x 20 configuration shifted by (6, 5)."""
    stage = DSVTStageConfig(
        window_shape=(1, 10, 12),
        hybrid_factor=(1, 2, 2),
        shift=(0, 5, 6),
        set_size=12,
        num_blocks=3,
        d_model=C,
        num_heads=4,
        dim_feedforward=32,
    )
    fields: dict[str, object] = dict(
        sparse_shape=(1, 36, 48),
        stages=(stage,),
        bev_shape=(36, 48),
    )
    fields.update(overrides)
    return DSVTConfig(**fields)  # type: ignore[arg-type]


def input_of(cfg: DSVTConfig) -> SparseShape:
    """The test configs write their input grid out (``sparse_shape``); the input has ``C`` channels."""
    assert cfg.sparse_shape is not None
    return SparseShape(C, cfg.sparse_shape)


def random_sparse(cfg: DSVTConfig, n: int, batch: int = 2, seed: int = 0) -> SparseFeatures:
    g = torch.Generator().manual_seed(seed)
    inp = input_of(cfg)
    nz, ny, nx = inp.grid
    flat = torch.randperm(batch * nz * ny * nx, generator=g)[:n]
    b, r = flat // (nz * ny * nx), flat % (nz * ny * nx)
    coords = torch.stack([b, r // (ny * nx), (r // nx) % ny, r % nx], 1).int()
    return SparseFeatures(torch.randn(n, inp.channels, generator=g), coords, inp.grid, batch)


def model_of(cfg: DSVTConfig, seed: int = 0) -> DSVTBackbone:
    torch.manual_seed(seed)
    return build_dsvt(cfg, input_shape=input_of(cfg))


CFGS = {"voxel": voxel_cfg, "pillar": pillar_cfg}


# ------------------------------------------------------------------------------------------------ shapes, gradients


@pytest.mark.parametrize("name", ["voxel", "pillar"])
def test_shapes_and_dtypes(name: str) -> None:
    cfg = CFGS[name]()
    sparse = random_sparse(cfg, 300)
    model = model_of(cfg)
    out = model(sparse)
    shape = model.output_shape()
    assert shape == cfg.output_shape(input_of(cfg))
    assert out.features.dtype == torch.float32 and out.coords.dtype == torch.int32
    assert out.grid_shape == shape.grid and out.batch_size == 2
    assert out.features.shape == (out.coords.shape[0], shape.channels)
    if name == "pillar":  # one stage: the input voxels in input order
        assert torch.equal(out.coords, sparse.coords)
    else:  # distinct input voxels after the strides (2, 2, 2) then (4, 1, 1)
        c = sparse.coords.long()
        pooled = torch.stack([c[:, 0], c[:, 1] // 8, c[:, 2] // 2, c[:, 3] // 2], 1)
        assert torch.equal(torch.unique(pooled, dim=0), torch.unique(out.coords.long(), dim=0))
        assert out.coords.shape[0] == torch.unique(pooled, dim=0).shape[0]
    assert torch.isfinite(out.features).all()


@pytest.mark.parametrize("authors", [False, True])
@pytest.mark.parametrize("name", ["voxel", "pillar"])
def test_gradients_reach_every_parameter(name: str, authors: bool) -> None:
    cfg = CFGS[name](authors_pos_embed=authors, pool_mask_empty=not authors)
    model = model_of(cfg).train()
    sparse = random_sparse(cfg, 500)
    feats = sparse.features.clone().requires_grad_(True)
    out = model(sparse.replace_features(feats))
    (out.features * torch.randn_like(out.features)).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} got an all-zero gradient"
    assert feats.grad is not None and feats.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------ invariance, masks


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("name", ["voxel", "pillar"])
def test_output_invariant_to_voxel_order(name: str, train: bool) -> None:
    cfg = CFGS[name]()
    model = model_of(cfg).train(train)
    sparse = random_sparse(cfg, 400, seed=3)
    perm = torch.randperm(400, generator=torch.Generator().manual_seed(5))
    permuted = SparseFeatures(sparse.features[perm], sparse.coords[perm], sparse.grid_shape, 2)
    with torch.no_grad():
        out, out_p = model(sparse), model(permuted)
    if name == "pillar":  # per-voxel outputs follow the voxels
        torch.testing.assert_close(out_p.features, out.features[perm], atol=1e-5, rtol=1e-5)
    else:  # pooled voxels come in a fixed order whatever the input order
        assert torch.equal(out_p.coords, out.coords)
        torch.testing.assert_close(out_p.features, out.features, atol=1e-5, rtol=1e-5)


def _mha_reference(layer: SetAttentionLayer, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Plain multi-head attention (torch's module, no mask) of all of ``x`` with itself, layer's weights."""
    mha = nn.MultiheadAttention(layer.d_model, layer.num_heads, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(layer.in_proj.weight)
        mha.in_proj_bias.copy_(layer.in_proj.bias)
        mha.out_proj.weight.copy_(layer.out_proj.weight)
        mha.out_proj.bias.copy_(layer.out_proj.bias)
    qk = (x + pos)[None]
    return mha(qk, qk, x[None], need_weights=False)[0][0]


@pytest.mark.parametrize("n", [1, 3, 5, 7])
def test_repeated_slot_mask_excludes_repeats(n: int) -> None:
    """A window padded by repetition (n voxels in 8 slots) gives plain attention over its n distinct voxels."""
    torch.manual_seed(n)
    cells = torch.randperm(36)[:n]
    coords = torch.stack([torch.zeros(n).long(), torch.zeros(n).long(), cells // 6, cells % 6], 1).int()
    part = set_partition(coords, (1, 6, 6), (1, 6, 6), 8)
    assert part.num_sets == 1 and (part.mask.sum(-1) == 8 - n).all()  # really padded by repetition
    sets = SetIndex.from_partition(part, n)
    layer = SetAttentionLayer(d_model=C, num_heads=4, dim_feedforward=32)
    x, pos = torch.randn(n, C), torch.randn(n, C)
    ref = _mha_reference(layer, x, pos)
    for order in range(2):
        with torch.no_grad():
            index, keep, first = sets.order(order)
            got = layer.attention(x, pos, index, keep, first)
            unmasked = layer.attention(x, pos, index, None, first)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
        if n < 8 and n > 1:  # without the mask, repeated voxels weigh more: the result differs
            assert (unmasked - ref).abs().max() > 1e-4


def test_first_slots_point_at_first_copy() -> None:
    cfg = pillar_cfg()
    sparse = random_sparse(cfg, 200)
    part = set_partition(sparse.coords, cfg.sparse_shape, (1, 10, 12), 12)
    first = first_slots(part.voxel_index, 200)
    for order in range(2):
        flat = part.voxel_index[order].reshape(-1)
        assert torch.equal(flat[first[order]], torch.arange(200))
        for v in (0, 17, 199):
            assert first[order, v] == (flat == v).nonzero()[0, 0]


@pytest.mark.parametrize("mask_empty", [True, False])
def test_attention_pooling_matches_reference(mask_empty: bool) -> None:
    """Per region: query = max over its (occupied / all) slots, keys = slots + slot embedding, one MHA, LN."""
    torch.manual_seed(0)
    coords = torch.tensor(
        [[0, 0, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1], [0, 3, 2, 3], [1, 2, 2, 2]], dtype=torch.int32
    )
    pool = pool_windows(coords, (4, 4, 4), (2, 2, 2))
    layer = AttentionPooling(d_model=C, pool_volume=8, num_heads=4, mask_empty=mask_empty)
    x = torch.randn(5, C) - 1.0  # mostly negative: the max over empty zero slots would differ
    with torch.no_grad():
        got = layer(x, pool)
    mha = nn.MultiheadAttention(C, 4, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(layer.in_proj.weight)
        mha.in_proj_bias.copy_(layer.in_proj.bias)
        mha.out_proj.load_state_dict(layer.out_proj.state_dict())
    assert got.shape == (pool.num_pooled, C)
    for p in range(pool.num_pooled):
        slots = pool.index[p]
        keep = slots >= 0 if mask_empty else torch.ones_like(slots, dtype=torch.bool)
        vals = torch.zeros(8, C)
        vals[slots >= 0] = x[slots[slots >= 0]]
        vals, emb = vals[keep], layer.slot_embed.detach()[keep]
        query = vals.max(dim=0).values[None, None]
        with torch.no_grad():
            att = mha(query, (vals + emb)[None], vals[None], need_weights=False)[0][0, 0]
            want = layer.norm(att + query[0, 0])
        torch.testing.assert_close(got[p], want, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ edge inputs


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("n", [0, 1])
@pytest.mark.parametrize("name", ["voxel", "pillar"])
def test_empty_and_single_voxel(name: str, n: int, train: bool) -> None:
    cfg = CFGS[name]()
    model = model_of(cfg).train(train)
    sparse = random_sparse(cfg, n, batch=1)
    feats = sparse.features.clone().requires_grad_(True)
    out = model(sparse.replace_features(feats))
    assert out.features.shape == (n, C) and out.coords.shape == (n, 4)
    assert out.grid_shape == model.output_shape().grid
    assert torch.isfinite(out.features).all()
    out.features.sum().backward()  # backward works (a no-op gradient when empty)
    if n == 1:
        assert feats.grad is not None and torch.isfinite(feats.grad).all()
        if name == "voxel":
            c = sparse.coords[0]
            assert out.coords[0].tolist() == [0, int(c[1]) // 8, int(c[2]) // 2, int(c[3]) // 2]


def test_single_voxel_training_keeps_batchnorm_statistics() -> None:
    cfg = pillar_cfg()
    model = model_of(cfg).train()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    model(random_sparse(cfg, 1, batch=1))
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())


def test_bad_inputs_raise_clear_errors() -> None:
    cfg = pillar_cfg()
    model = model_of(cfg)
    sparse = random_sparse(cfg, 50)
    with pytest.raises(ValueError, match="grid_shape"):
        model(SparseFeatures(sparse.features, sparse.coords, (1, 36, 40), 2))
    with pytest.raises(ValueError, match="sparse.features"):
        model(SparseFeatures(torch.randn(50, C + 1), sparse.coords, cfg.sparse_shape, 2))
    for value in (float("nan"), float("inf"), -float("inf")):
        bad = sparse.features.clone()
        bad[3, 2] = value
        with pytest.raises(ValueError, match="NaN or inf"):
            model(sparse.replace_features(bad))
    huge = torch.full_like(sparse.features, 3e38)  # finite entries whose sum overflows: accepted
    assert model.eval()(sparse.replace_features(huge)).features.shape == (50, C)
    coords = sparse.coords.clone()
    coords[0, 3] = 48
    with pytest.raises(ValueError, match="x"):
        model(SparseFeatures(sparse.features, coords, cfg.sparse_shape, 2))
    with pytest.raises(TypeError, match="floating"):
        model(sparse.replace_features(sparse.features.long()))


# ------------------------------------------------------------------------------------------------ autocast


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["voxel", "pillar"])
def test_bf16_autocast_forward_backward(name: str, input_dtype: torch.dtype) -> None:
    cfg = CFGS[name]()
    model = model_of(cfg).train()
    sparse = random_sparse(cfg, 300)
    ref = model(sparse).features.detach()
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(sparse.replace_features(sparse.features.to(input_dtype)))
        loss = out.features.float().square().mean()
    loss.backward()
    assert out.features.dtype in (torch.float32, torch.bfloat16)
    err = (out.features.float() - ref).norm() / ref.norm()
    assert err < 0.05, f"bf16 output relative error {err:.3f}"
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


# ------------------------------------------------------------------------------------------------ flags


def test_blocks_alternate_window_configuration_across_stages() -> None:
    """Blocks are counted across stages: block k uses configuration k % 2 (blocks 0, 1 | 2 | 3, 4 here)."""
    assert model_of(voxel_cfg()).input_layer.block_configs == ((0, 1), (0,), (1, 0))
    one = voxel_cfg().stages[0].model_copy(update={"num_blocks": 1})
    model = model_of(voxel_cfg(stages=(one,) + voxel_cfg().stages[1:]))
    assert model.input_layer.block_configs == ((0,), (1,), (0, 1))


def test_authors_pos_embed_flag_changes_only_mismatched_layers() -> None:
    correct = model_of(voxel_cfg()).eval()
    authors = model_of(voxel_cfg(authors_pos_embed=True)).eval()
    authors.load_state_dict(correct.state_dict())
    sparse = random_sparse(voxel_cfg(), 300)
    geo = correct.geometry(sparse)
    with torch.no_grad():
        pc, pa = correct.input_layer.pos_embeddings(geo), authors.input_layer.pos_embeddings(geo)
    for s, blocks in enumerate(correct.input_layer.block_configs):
        for b, cfg in enumerate(blocks):
            for i in range(2):
                same = torch.equal(pc[s][b][i], pa[s][b][i])
                # the authors' embedding is the right one only when the block's configuration == layer index
                assert same == (cfg == i), (s, b, i)
    with torch.no_grad():
        assert (correct(sparse).features - authors(sparse).features).abs().max() > 1e-3


def test_authors_pos_embed_irrelevant_when_configurations_coincide() -> None:
    stage = pillar_cfg().stages[0].model_copy(update=dict(hybrid_factor=(1, 1, 1), shift=(0, 0, 0)))
    a = model_of(pillar_cfg(stages=(stage,))).eval()
    b = model_of(pillar_cfg(stages=(stage,), authors_pos_embed=True)).eval()
    b.load_state_dict(a.state_dict())
    sparse = random_sparse(pillar_cfg(), 200)
    with torch.no_grad():
        torch.testing.assert_close(a(sparse).features, b(sparse).features, atol=1e-6, rtol=0)


def test_pool_mask_empty_flag() -> None:
    masked = model_of(voxel_cfg()).eval()
    authors = model_of(voxel_cfg(pool_mask_empty=False)).eval()
    authors.load_state_dict(masked.state_dict())
    sparse = random_sparse(voxel_cfg(), 300)  # sparse: pooling regions have empty slots
    with torch.no_grad():
        assert (masked(sparse).features - authors(sparse).features).abs().max() > 1e-3
    # Fully occupied grid: no empty slot anywhere, the flag changes nothing.
    z, y, x = torch.meshgrid(torch.arange(8), torch.arange(18), torch.arange(20), indexing="ij")
    coords = torch.stack([torch.zeros_like(z), z, y, x], -1).reshape(-1, 4).int()
    dense = SparseFeatures(torch.randn(coords.shape[0], C), coords, (8, 18, 20), 1)
    with torch.no_grad():
        torch.testing.assert_close(masked(dense).features, authors(dense).features, atol=1e-5, rtol=1e-5)


def test_inference_position_table_equals_per_voxel_embedding() -> None:
    cfg = pillar_cfg()
    model = model_of(cfg).eval()
    sparse = random_sparse(cfg, 1500, batch=3)  # more voxels than window positions: the table path
    geo = model.geometry(sparse)
    with torch.no_grad():
        table = model.input_layer.pos_embeddings(geo)
        windows = geo[0].partitions[1].windows
        loc = model.input_layer._centred(windows.coords_in_window, windows.window_shape, 0)
        direct = model.input_layer.pos_embeds[0][1][0](loc)  # block 1 uses configuration 1
    torch.testing.assert_close(table[0][1][0], direct, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ converter


def test_state_dict_converter_round_trip() -> None:
    model = model_of(voxel_cfg())
    ours = model.state_dict()
    theirs = to_authors_state_dict(ours, prefix="backbone_3d.")
    assert "backbone_3d.stage_0.1.encoder_list.1.win_attn.self_attn.in_proj_weight" in theirs
    assert "backbone_3d.input_layer.posembed_layers.2.1.0.position_embedding_head.3.bias" in theirs
    assert "backbone_3d.stage_1_reduction.pos_embedding" in theirs
    assert "backbone_3d.residual_norm_stage_2.1.weight" in theirs
    theirs["vfe.pfn_layers.0.linear.weight"] = torch.zeros(3)  # other detector modules are skipped
    back = convert_authors_state_dict(theirs)
    assert back.keys() == ours.keys()
    assert all(back[k] is ours[k] for k in ours)


def test_state_dict_converter_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="not DSVT backbone keys"):
        convert_authors_state_dict({"stage_0.0.encoder_list.0.win_attn.foo.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="no DSVT backbone weights"):
        convert_authors_state_dict({})
    with pytest.raises(ValueError, match="not a DSVTBackbone"):
        to_authors_state_dict({"blocks.0.weight": torch.zeros(1)})


@pytest.mark.parametrize("backend", ["torch", "cpu", "cuda"])
def test_geometry_backends_give_the_same_output(backend: str) -> None:
    """The preprocessing runs on every op backend (numba CUDA in the simulator on CPU) with identical results."""
    if backend == "cuda" and not (cuda_simulator_enabled() or torch.cuda.is_available()):
        pytest.skip("backend='cuda' needs a GPU or NUMBA_ENABLE_CUDASIM=1 set before numba is imported")
    cfg = voxel_cfg()
    model = model_of(cfg).eval()
    sparse = random_sparse(cfg, 120)
    with torch.no_grad():
        ref = model(sparse)
        out = model(sparse, model.geometry(sparse, backend=backend))
    assert torch.equal(out.coords, ref.coords)
    assert torch.equal(out.features, ref.features)


def test_cpu_set_padding_is_exact() -> None:
    """Sets of 30 are padded to 32 masked slots on the CPU; the attention output equals the unpadded one."""
    cfg = pillar_cfg()
    sparse = random_sparse(cfg, 600)
    part = set_partition(sparse.coords, cfg.sparse_shape, (1, 10, 12), 30)
    padded = SetIndex.from_partition(part, 600)
    assert padded.voxel_index.shape == (2, part.num_sets, 32)
    assert padded.keep is not None and not padded.keep[..., 30:].any()
    plain = SetIndex.from_index(part.voxel_index, (~part.mask)[:, :, None, None, :], 600)
    assert (
        SetIndex.from_partition(
            set_partition(sparse.coords, cfg.sparse_shape, (1, 10, 12), 28), 600
        ).voxel_index.shape[-1]
        == 28
    )
    layer = SetAttentionLayer(d_model=C, num_heads=4, dim_feedforward=32)
    x, pos = torch.randn(600, C), torch.randn(600, C)
    with torch.no_grad():
        for order in range(2):
            got = layer.attention(x, pos, *padded.order(order))
            want = layer.attention(x, pos, *plain.order(order))
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
