"""Camera images in the data path: loading at the network size (JPEG draft, crop from the top) with the intrinsics
updated, image augmentation and the global 3D transforms keeping every box on its image content per camera,
cameras off, missing files, view dropout and the collate's normalisation."""

from __future__ import annotations

import itertools
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from perception.config import ConfigError, load_config
from perception.datasets import transforms as T
from perception.datasets.image_transforms import ImageAugment, ImageLoader, ViewDropout
from perception.datasets.kitti import KittiDataset
from perception.datasets.nuscenes import NuScenesDataset
from perception.datasets.nuscenes_infos import create_nuscenes_infos
from perception.datasets.synthetic import SyntheticParams, generate
from perception.datasets.synthetic.camera import CAM_AXES
from perception.datasets.synthetic.classes import CLASSES
from perception.datasets.synthetic.geometry import make_pose, rot_z
from perception.engine.data import build_dataset, build_train_transforms, collate_for
from perception.formats.nuscenes_names import CAMERA_ORDER
from perception.grid import VoxelGrid
from perception.structures import IMAGENET_NORM, Batch, Boxes3D, CameraRig, ImageNorm, Points, Sample

H, W = 128, 256
NAMES = tuple(c.name for c in CLASSES)
GRID = VoxelGrid((-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), (0.2, 0.2, 8.0))
#: (camera yaw deg) of the three test cameras; boxes are placed in front of each.
YAWS = (0.0, 120.0, -120.0)
COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255], [0, 255, 255]])


def _rig(f: float = 160.0, cx: float = 121.3, cy: float = 70.6, size: tuple[int, int] = (H, W)) -> CameraRig:
    k = torch.tensor([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]]).expand(len(YAWS), 3, 3).contiguous()
    poses = [make_pose(rot_z(np.deg2rad(y)) @ CAM_AXES, [0.5, 0.1, 1.6]) for y in YAWS]
    return CameraRig(
        tuple(f"CAM_{i}" for i in range(len(YAWS))),
        k,
        torch.tensor(np.stack(poses), dtype=torch.float32),
        torch.tensor([size] * len(YAWS)),
    )


def _boxes() -> Boxes3D:
    """Two boxes in front of each camera, 9 to 16 m away, velocities set."""
    rows = []
    for yaw in YAWS:
        for dist, side in ((9.0, 1.5), (16.0, -2.5)):
            a = np.deg2rad(yaw)
            x, y = dist * np.cos(a) - side * np.sin(a), dist * np.sin(a) + side * np.cos(a)
            rows.append([x, y, 0.8, 4.0, 1.8, 1.6, a + 0.3, 1.0, -0.5])
    return Boxes3D(torch.tensor(rows, dtype=torch.float32))


def _key_points(boxes: Boxes3D) -> torch.Tensor:
    """float32 ``(N, 9, 3)``: each box's centre and 8 corners."""
    return torch.cat([boxes.center[:, None], boxes.corners()], dim=1)


def _render(rig: CameraRig, boxes: Boxes3D, size: tuple[int, int], radius: float) -> torch.Tensor:
    """uint8 ``(V, 3, H, W)``: grey, with a disk of box ``i``'s colour at each projected key point of box ``i``."""
    h, w = size
    images = np.full((len(rig), h, w, 3), 128, np.uint8)
    pts = _key_points(boxes)
    uv, _, visible = rig.project(pts.reshape(-1, 3))
    vv, uu = np.mgrid[0:h, 0:w] + 0.5
    for v in range(len(rig)):
        for j in range(pts.shape[0] * pts.shape[1]):
            if bool(visible[v, j]):
                u0, v0 = uv[v, j].tolist()
                images[v][(uu - u0) ** 2 + (vv - v0) ** 2 <= radius**2] = COLOURS[j // pts.shape[1]]
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def _check_on_content(sample: Sample, margin: float = 4.0, tol: int = 8) -> int:
    """Every key point of every box that projects into a valid view (``margin`` px inside) lands on its box's
    colour; returns how many were checked."""
    assert sample.images is not None and sample.cameras is not None
    pts = _key_points(sample.boxes)
    uv, _, visible = sample.cameras.project(pts.reshape(-1, 3))
    _, _, h, w = sample.images.shape
    checked = 0
    for v in range(len(sample.cameras)):
        if not bool(sample.cameras.valid[v]):
            continue
        for j in range(uv.shape[1]):
            u0, v0 = uv[v, j].tolist()
            if not (bool(visible[v, j]) and margin <= u0 < w - margin and margin <= v0 < h - margin):
                continue
            pixel = sample.images[v, :, int(v0), int(u0)].numpy().astype(int)
            expected = COLOURS[j // pts.shape[1]]
            assert np.abs(pixel - expected).max() <= tol, (v, j, pixel.tolist(), expected.tolist())
            checked += 1
    return checked


def _sample() -> Sample:
    rig, boxes = _rig(), _boxes()
    images = _render(rig, boxes, (H, W), radius=4.5)
    pts = Points(torch.zeros((10, 5)))
    labels = torch.zeros(len(boxes), dtype=torch.int64)
    return Sample("s0", pts, boxes, labels, NAMES, images, rig)


TRANSFORMS = {
    "rotate": T.GlobalRotation((-0.8, 0.8)),
    "flip": T.RandomFlip(x=True, y=True, probability=0.5),
    "scale": T.GlobalScaling((0.9, 1.1)),
    "translate": T.GlobalTranslation((0.5, 0.5, 0.2)),
    "image": ImageAugment((0.8, 1.25), random_crop=True, flip_probability=0.5),
}


def test_rendered_scene_sees_every_box() -> None:
    sample = _sample()
    assert _check_on_content(sample) >= 30  # the reference: the fixture puts boxes in every camera


@pytest.mark.parametrize(
    "order", [list(p) for p in itertools.permutations(TRANSFORMS, 3)][::7] + [list(TRANSFORMS)]
)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_boxes_project_onto_the_same_content_after_augmentation(order: list[str], seed: int) -> None:
    """3D (rotation, flip, scale, translation) and image (resize, crop, flip) augmentation in any order: every
    box's centre and corners still project onto that box's colour in every camera."""
    sample = _sample()
    rng = np.random.default_rng(seed)
    for name in order:
        sample = TRANSFORMS[name](sample, rng)
    assert sample.images is not None and sample.images.dtype == torch.uint8
    assert _check_on_content(sample) >= 10


def test_image_flip_is_a_mirrored_virtual_camera() -> None:
    sample = _sample()
    out = ImageAugment((1.0, 1.0), random_crop=False, flip_probability=1.0)(sample, np.random.default_rng(0))
    assert out.cameras is not None and sample.cameras is not None and out.images is not None
    torch.testing.assert_close(out.images, sample.images.flip(-1))
    k0, k1 = sample.cameras.intrinsics, out.cameras.intrinsics
    torch.testing.assert_close(k1[:, 0, 2], W - k0[:, 0, 2])
    torch.testing.assert_close(k1[:, [0, 1], [0, 1]], k0[:, [0, 1], [0, 1]])  # fx, fy stay positive
    mirror = torch.diag(torch.tensor([-1.0, 1.0, 1.0, 1.0]))
    torch.testing.assert_close(out.cameras.cam_to_lidar, sample.cameras.cam_to_lidar @ mirror)
    assert _check_on_content(out) >= 30


# ---------------------------------------------------------------- loading


def _write_views(
    folder: Path, rig: CameraRig, boxes: Boxes3D, size: tuple[int, int], suffix: str
) -> list[Path]:
    images = _render(rig, boxes, size, radius=26.0)
    paths = []
    for v in range(len(rig)):
        path = folder / f"view{v}.{suffix}"
        Image.fromarray(images[v].permute(1, 2, 0).numpy()).save(path, quality=95)
        paths.append(path)
    return paths


@pytest.mark.parametrize("file_size", [(900, 1600), (903, 1605)])
@pytest.mark.parametrize("suffix", ["jpg", "png"])
def test_loader_resizes_crops_and_updates_intrinsics(
    tmp_path: Path, file_size: tuple[int, int], suffix: str
) -> None:
    """Full-resolution files (JPEG: DCT-domain draft by 1/4; PNG: plain resize) to 128x256 at scale 0.16, rows
    cut from the top: the boxes' key points land on their colours through the updated intrinsics."""
    full = _rig(f=1000.0, cx=790.0, cy=480.0, size=file_size)
    boxes = _boxes()
    paths = _write_views(tmp_path, full, boxes, file_size, suffix)
    loader = ImageLoader(size=(H, W), scale=0.16)
    images, rig = loader.load(
        token="t",
        names=full.names,
        paths=paths,
        intrinsics=full.intrinsics.numpy(),
        cam_to_lidar=full.cam_to_lidar.numpy(),
        file_sizes=[file_size] * len(full),
    )
    assert images.shape == (3, 3, H, W) and images.dtype == torch.uint8
    assert rig.image_sizes.tolist() == [[H, W]] * 3 and bool(rig.valid.all())
    hr = round(file_size[0] * 0.16)
    np.testing.assert_allclose(rig.intrinsics[0, 1, 2], 480.0 * hr / file_size[0] - (hr - H), rtol=0.02)
    sample = Sample("t", Points(torch.zeros((1, 5))), boxes, torch.zeros(len(boxes), dtype=torch.int64), NAMES,
                    images, rig)  # fmt: skip
    assert _check_on_content(sample, margin=5.0, tol=40) >= 20


def test_loader_draft_is_exact_for_a_ceil_sized_reduction(tmp_path: Path) -> None:
    """A 1605x903 JPEG drafts to 402x226 (ceil of 1/4): the map is u / 4 * 257 / 402, not u * 257 / 1605."""
    Image.new("RGB", (1605, 903)).save(tmp_path / "a.jpg")
    _, a = ImageLoader(size=(H, W), scale=0.16)._read(tmp_path / "a.jpg")
    np.testing.assert_allclose(a[0, 0], 257 / (402 * 4))
    np.testing.assert_allclose(a[1, 1], 144 / (226 * 4))
    np.testing.assert_allclose(a[:2, 2], [-0.0, -(144 - H)])


def test_loader_native_size_and_scale_checks() -> None:
    with pytest.raises(ValueError, match="scale needs a size"):
        ImageLoader(scale=0.5)
    with pytest.raises(ValueError, match="missing must be"):
        ImageLoader(missing="skip")  # type: ignore[arg-type]
    assert ImageLoader(size=(H, W)).geometry((900, 1600)) == ((144, 256), (0, 16), (H, W))


# ---------------------------------------------------------------- view dropout and collate


def test_view_dropout_marks_views_invalid_and_zeroes_them() -> None:
    sample = _sample()
    out = ViewDropout(probability=0.0, all_probability=1.0)(sample, np.random.default_rng(0))
    assert out.cameras is not None and out.images is not None
    assert not bool(out.cameras.valid.any()) and not bool(out.images.any())
    dropped = [0, 0, 0]
    for seed in range(200):
        o = ViewDropout(probability=0.3)(sample, np.random.default_rng(seed))
        assert o.cameras is not None and o.images is not None
        for v in range(3):
            if not bool(o.cameras.valid[v]):
                dropped[v] += 1
                assert not bool(o.images[v].any())
            else:
                torch.testing.assert_close(o.images[v], sample.images[v])  # type: ignore[index]
    assert all(30 <= d <= 90 for d in dropped), dropped
    assert _check_on_content(ViewDropout(0.5)(sample, np.random.default_rng(1))) >= 5  # rigs untouched
    with pytest.raises(ValueError, match="probability"):
        ViewDropout(probability=1.5)


def test_collate_normalises_uint8_into_float32() -> None:
    samples = [_sample(), _sample()]
    norm = ImageNorm((100.0, 110.0, 120.0), (50.0, 60.0, 70.0))
    batch = Batch.collate(samples, norm)
    assert samples[0].images is not None and samples[0].images.dtype == torch.uint8
    assert batch.images is not None and batch.images.dtype == torch.float32
    expected = (samples[1].images.float() - torch.tensor([100.0, 110.0, 120.0]).view(3, 1, 1)) / torch.tensor(  # type: ignore[union-attr]
        [50.0, 60.0, 70.0]
    ).view(3, 1, 1)
    torch.testing.assert_close(batch.images[1], expected)
    cams = batch.camera_batch()
    assert cams is not None and cams.valid.shape == (2, 3)


# ---------------------------------------------------------------- datasets and config


@pytest.fixture(scope="module")
def nus_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("nus_images")
    generate(SyntheticParams(format="nuscenes", scenes=2, samples=2, sweeps=0, cameras="all",
                             objects_per_scene=6, seed=3), out)  # fmt: skip
    create_nuscenes_infos(out, "v1.0-mini", max_sweeps=1, workers=0, progress=False, with_gt_database=False)
    return out


def _nus(root: Path, **kw: object) -> NuScenesDataset:
    return NuScenesDataset(root=root, version="v1.0-mini", split="val", class_names=NAMES, grid=GRID,
                           use_cameras=True, mode="val", **kw)  # type: ignore[arg-type]  # fmt: skip


def test_nuscenes_six_cameras_at_network_size(nus_root: Path) -> None:
    ds = _nus(nus_root, images=ImageLoader(size=(H, W), scale=0.16))
    sample = ds[0]
    assert sample.images is not None and sample.cameras is not None
    assert sample.images.shape == (6, 3, H, W) and sample.images.dtype == torch.uint8
    assert sample.cameras.names == CAMERA_ORDER and bool(sample.cameras.valid.all())
    info = ds.infos[0]
    k = info.cameras[0].intrinsics
    np.testing.assert_allclose(sample.cameras.intrinsics[0, 0, 0], k[0, 0] * 0.16, rtol=1e-5)
    np.testing.assert_allclose(sample.cameras.intrinsics[0, 1, 2], k[1, 2] * 0.16 - 16, rtol=1e-5)
    native = _nus(nus_root)[0]
    assert native.images is not None and native.images.shape == (6, 3, 900, 1600)
    # the network image is the native one resized and cropped: compare at a few pixels (JPEG tolerance)
    small = np.asarray(Image.fromarray(native.images[0].permute(1, 2, 0).numpy()).resize((256, 144)))[16:]
    assert np.abs(small.astype(int) - sample.images[0].permute(1, 2, 0).numpy()).mean() < 6


def test_nuscenes_cameras_off(nus_root: Path) -> None:
    ds = _nus(nus_root, images=ImageLoader(size=(H, W), scale=0.16, cameras_off=("CAM_BACK", "CAM_FRONT")))
    s = ds[0]
    assert s.images is not None and s.cameras is not None
    off = [CAMERA_ORDER.index("CAM_BACK"), CAMERA_ORDER.index("CAM_FRONT")]
    assert [bool(v) for v in s.cameras.valid] == [i not in off for i in range(6)]
    on = [i for i in range(6) if i not in off]
    assert not bool(s.images[off].any()) and all(bool(s.images[i].any()) for i in on)
    with pytest.raises(ValueError, match=r"cameras_off names cameras \['CAM_TOP'\]"):
        _nus(nus_root, images=ImageLoader(cameras_off=("CAM_TOP",)))


@pytest.fixture
def broken_root(nus_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "nus"
    shutil.copytree(nus_root, root)
    return root


@pytest.mark.parametrize("how", ["delete", "corrupt"])
def test_nuscenes_missing_camera_file(broken_root: Path, how: str, caplog: pytest.LogCaptureFixture) -> None:
    ds = _nus(broken_root, images=ImageLoader(size=(H, W), scale=0.16))
    cam = ds.infos[0].cameras[2]
    path = broken_root / cam.path
    if how == "delete":
        path.unlink()
    else:
        path.write_bytes(b"not a jpeg")
    with pytest.raises(FileNotFoundError) as err:
        ds[0]
    for part in (str(path), ds.infos[0].token, cam.name, "data.images.missing"):
        assert part in str(err.value)
    ds = _nus(broken_root, images=ImageLoader(size=(H, W), scale=0.16, missing="invalid"))
    with caplog.at_level(logging.WARNING, logger="perception.datasets.image_transforms"):
        s = ds[0]
    assert s.cameras is not None and s.images is not None
    assert [bool(v) for v in s.cameras.valid] == [i != 2 for i in range(6)] and not bool(s.images[2].any())
    assert cam.name in caplog.text and "invalid" in caplog.text
    ok = _nus(broken_root, images=ImageLoader(size=(H, W), scale=0.16))[1]  # other samples unaffected
    assert ok.cameras is not None and bool(ok.cameras.valid.all())


def test_kitti_image_2_at_network_size(tmp_path: Path) -> None:
    from perception.datasets.kitti_infos import create_kitti_infos

    generate(SyntheticParams(format="kitti", scenes=3, samples=1, cameras="front", objects_per_scene=4, seed=1),
             tmp_path)  # fmt: skip
    create_kitti_infos(tmp_path, workers=0, progress=False, with_gt_database=False)
    grid = VoxelGrid((0.0, -40.0, -3.0, 70.4, 40.0, 1.0), (0.2, 0.2, 4.0))
    kw = dict(root=tmp_path, split="train", class_names=("Car",), grid=grid, use_cameras=True, mode="val")
    s = KittiDataset(**kw, images=ImageLoader(size=(128, 416)))[0]  # type: ignore[arg-type]
    native = KittiDataset(**kw)[0]  # type: ignore[arg-type]
    assert s.images is not None and s.cameras is not None and native.cameras is not None
    assert s.images.shape == (1, 3, 128, 416) and s.cameras.names == ("image_2",)
    sx = 416 / float(native.cameras.image_sizes[0, 1])
    np.testing.assert_allclose(
        s.cameras.intrinsics[0, 0, 0], native.cameras.intrinsics[0, 0, 0] * sx, rtol=1e-4
    )


CONFIG = """\
data:
  dataset: nuscenes
  root: {root}
  version: v1.0-mini
  class_names: [car, pedestrian]
  point_cloud_range: [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0]
  voxel_size: [0.2, 0.2, 8.0]
  use_cameras: true
  images: {{size: [128, 256], scale: 0.16}}
train:
  augment:
    rotation: [-0.3, 0.3]
    image: {{resize: [0.9, 1.1], flip: 0.5}}
    view_dropout: {{probability: 0.2, all_probability: 0.1}}
"""


def test_config_images_section_and_loaders(nus_root: Path, tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG.format(root=nus_root))
    cfg = load_config(path)
    assert cfg.data.images is not None and cfg.data.image_norm == IMAGENET_NORM
    assert cfg.train is not None
    kinds = [type(t).__name__ for t in build_train_transforms(cfg, cfg.train)]
    assert kinds[:3] == ["GlobalRotation", "ImageAugment", "ViewDropout"]
    ds = build_dataset(cfg, "val", "val")
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate_for(ds))
    batch = next(iter(loader))
    cams = batch.camera_batch()
    assert cams is not None and cams.images.shape == (2, 6, 3, H, W) and cams.images.dtype == torch.float32
    off = load_config(path, ("data.images.cameras_off=[CAM_FRONT]",))
    s = build_dataset(off, "val", "val")[0]
    assert s.cameras is not None and [bool(v) for v in s.cameras.valid] == [
        n != "CAM_FRONT" for n in CAMERA_ORDER
    ]
    lidar_only = load_config(path, ("data.use_cameras=false",))
    assert collate_for(build_dataset(lidar_only, "val", "val")) is Batch.collate


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("data.images.size=[100,256]", "multiples of 32"),
        ("data.images.missing=skip", "data.images.missing"),
        ("data.images.cameras_off=[CAM_FRONT,CAM_FRONT]", "repeats"),
        ("train.augment.image.resize=[1.2,0.9]", "resize"),
        ("train.augment.view_dropout.probability=1.5", "probability"),
        ("train.augment.gt_sampling={sample_counts: {car: 2}}", "pasted objects would be"),
    ],
)
def test_config_errors(nus_root: Path, tmp_path: Path, override: str, expected: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG.format(root=nus_root))
    with pytest.raises(ConfigError, match=expected):
        load_config(path, (override,))
