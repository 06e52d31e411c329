"""Datasets, augmentation and samplers for training and testing, built from an :class:`ExperimentConfig`.

* :func:`prepare_data` generates the synthetic data set of the config's ``synthetic`` section when
  ``data.root`` lacks it, and writes the info files (and the train GT database) when they are missing.
* :func:`build_dataset` returns a :class:`~perception.datasets.nuscenes.NuScenesDataset` or
  :class:`~perception.datasets.kitti.KittiDataset` for an info split (``train`` / ``val``; ``test`` for KITTI).
* :func:`build_train_transforms` turns ``train.augment`` into the transform list (GT sampling with its fade,
  flip, rotation, scaling, translation, and a final point-range / object-range filter).
* :func:`build_train_sampler` returns the sharded training sampler (class-balanced with ``train.cbgs``).
* :func:`collate_for` is the ``DataLoader`` collate of a data set: ``Batch.collate`` with the data set's
  :class:`~perception.structures.ImageNorm` when it loads cameras (float32 normalised images in the batch, what
  ``Batch.camera_batch()`` needs), plain ``Batch.collate`` otherwise.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from perception.config_schema import ExperimentConfig
from perception.engine.distributed import DistInfo, ShardedSampler
from perception.structures import Batch, Sample
from perception.train_config import TrainConfig

__all__ = [
    "build_dataset",
    "build_train_sampler",
    "build_train_transforms",
    "collate_for",
    "eval_set_name",
    "prepare_data",
]

logger = logging.getLogger(__name__)
Mode = Literal["train", "val", "test"]


def _infos_file(cfg: ExperimentConfig, split: str) -> Path:
    d = cfg.data
    if d.dataset == "nuscenes":
        from perception.formats.nuscenes_infos import infos_path
        from perception.formats.nuscenes_points import sweep_chain

        assert d.version is not None
        return infos_path(d.root, d.version, sweep_chain(d.max_sweeps, d.sweep_stride), split)
    from perception.datasets.kitti_infos import infos_path as kitti_infos_path

    return kitti_infos_path(d.root, split)


def _gt_database_dir(cfg: ExperimentConfig) -> Path:
    d = cfg.data
    if d.dataset == "nuscenes":
        from perception.formats.nuscenes_infos import gt_database_dir

        assert d.version is not None
        return gt_database_dir(d.root, d.version, d.max_sweeps, d.sweep_stride)
    from perception.datasets.kitti_infos import GT_DATABASE_DIR

    return Path(d.root) / GT_DATABASE_DIR


def eval_set_name(cfg: ExperimentConfig, split: str) -> str:
    """The nuScenes devkit's ``eval_set`` for an info split (``val`` -> ``mini_val`` on v1.0-mini); KITTI: as is."""
    if cfg.data.dataset != "nuscenes":
        return split
    from perception.formats.nuscenes_infos import split_names

    assert cfg.data.version is not None
    train, val = split_names(cfg.data.version)
    names = {"train": train, "val": val}
    if split not in names:
        raise ValueError(f"nuScenes info splits are 'train' and 'val', got {split!r}")
    return names[split]


def prepare_data(cfg: ExperimentConfig, *, workers: int = 0, progress: bool = False) -> None:
    """Make sure ``data.root`` holds the data set and its info files (generate / create what is missing).

    Call it on one process only (rank 0), then synchronise. A synthetic set is generated into a hidden sibling
    folder and moved into place when complete (:func:`perception.datasets.synthetic.generate`), so a run killed
    while generating leaves ``data.root`` without it, and the next run generates it again.

    Raises:
        FileNotFoundError: ``data.root`` lacks the data set and the config has no ``synthetic`` section; or
            (synthetic KITTI) it holds ``training/`` without the split files, as a generation killed by an older
            version of this code left it.
    """
    from perception.datasets.synthetic import dataset_marker

    d = cfg.data
    root = Path(d.root)
    present = (root / dataset_marker(d.dataset, d.version)).is_dir()
    if present and cfg.synthetic is not None and d.dataset == "kitti":
        missing = [s for s in ("train", "val") if not (root / "ImageSets" / f"{s}.txt").is_file()]
        if missing:
            raise FileNotFoundError(
                f"data.root {root} holds training/ but not ImageSets/{missing[0]}.txt: a synthetic generation "
                f"was interrupted there (before generation became atomic); delete {root} and run again to "
                "generate it anew"
            )
    if present and cfg.synthetic is not None:
        _check_synthetic_identity(cfg, root / dataset_marker(d.dataset, d.version))
    if not present:
        if cfg.synthetic is None:
            raise FileNotFoundError(
                f"data.root {root} holds no {d.dataset} data set and the config has no 'synthetic' section"
            )
        from perception.datasets.synthetic import generate

        logger.info("generating a synthetic %s data set in %s", cfg.synthetic.format, root)
        generate(synthetic_params(cfg), root)
    from perception.datasets.gt_database import FORMAT_VERSION, index_format_version

    db_version = index_format_version(_gt_database_dir(cfg))
    if all(_infos_file(cfg, split).is_file() for split in ("train", "val")) and db_version == FORMAT_VERSION:
        return
    if db_version is not None and db_version != FORMAT_VERSION:
        logger.info(
            "the GT database in %s has format version %s, this code writes %d: building it again",
            _gt_database_dir(cfg), db_version, FORMAT_VERSION,
        )  # fmt: skip
    logger.info("creating info files and the GT database in %s", root)
    if d.dataset == "nuscenes":
        from perception.datasets.nuscenes_infos import create_nuscenes_infos

        assert d.version is not None
        create_nuscenes_infos(
            root,
            d.version,
            max_sweeps=d.max_sweeps,
            sweep_stride=d.sweep_stride,
            workers=workers,
            progress=progress,
        )
    else:
        from perception.datasets.kitti_infos import create_kitti_infos

        create_kitti_infos(root, workers=workers, progress=progress)


def synthetic_params(cfg: ExperimentConfig) -> Any:
    """The :class:`~perception.datasets.synthetic.SyntheticParams` of the config's ``synthetic`` section."""
    from perception.datasets.synthetic import SyntheticParams

    s = cfg.synthetic
    if s is None:
        raise ValueError("the config has no 'synthetic' section")
    return SyntheticParams(
        format=s.format,
        version=s.version,
        scenes=s.scenes,
        samples=s.samples,
        sweeps=s.sweeps if s.format == "nuscenes" else 0,
        cameras=s.cameras,
        seed=s.seed,
        lidar_beams=s.lidar_beams,
    )


def _check_synthetic_identity(cfg: ExperimentConfig, marker_dir: Path) -> None:
    """``ValueError`` when the synthetic data set in ``marker_dir``'s root was generated with another LiDAR than
    the config's ``synthetic`` section asks for (a set without a parameters record counts as the default LiDAR);
    other differing settings are logged."""
    from perception.datasets.synthetic import read_params_record

    wanted = synthetic_params(cfg)
    recorded = read_params_record(marker_dir)
    default = type(wanted)(format=wanted.format).lidar_spec  # what sets without a record were made with
    have_lidar = recorded.lidar_spec if recorded is not None else default
    if have_lidar != wanted.lidar_spec:
        root = marker_dir.parent
        raise ValueError(
            f"data.root {root} holds a synthetic data set generated with the LiDAR {have_lidar.name} "
            f"({have_lidar.beams} beams), but the config's synthetic section asks for {wanted.lidar_spec.name} "
            f"({wanted.lidar_spec.beams} beams; synthetic.lidar_beams): point data.root at another folder, or "
            f"delete {root} to generate it anew"
        )
    if recorded is not None:
        fields = ("scenes", "samples", "sweeps", "cameras", "seed")
        differ = [f"{k}: {getattr(recorded, k)} (config {getattr(wanted, k)})" for k in fields
                  if getattr(recorded, k) != getattr(wanted, k)]  # fmt: skip
        if differ:
            logger.warning(
                "data.root %s holds a synthetic data set generated with other settings (%s); using it as it is",
                marker_dir.parent,
                ", ".join(differ),
            )


def build_train_transforms(cfg: ExperimentConfig, train: TrainConfig) -> list[Any]:
    """Augmentation transforms of ``train.augment`` in order, then the point-range and object-range filters."""
    from perception.datasets import transforms as T

    aug = train.augment
    out: list[Any] = []
    if aug.gt_sampling is not None:
        from perception.datasets.gt_database import GTDatabase
        from perception.datasets.gt_sampling import GTSampling

        g = aug.gt_sampling
        unknown = sorted(set(g.sample_counts) - set(cfg.data.class_names))
        if unknown:
            raise ValueError(
                f"train.augment.gt_sampling.sample_counts names classes not in data.class_names: {unknown}"
            )
        out.append(
            GTSampling(
                GTDatabase(_gt_database_dir(cfg)),
                cfg.data.class_names,
                g.sample_counts,
                min_points=g.min_points,
                drop_difficulties={-1} if cfg.data.dataset == "kitti" else (),
                remove_extra_width=g.remove_extra_width,
                fade_last_epochs=g.fade_last_epochs,
                total_epochs=train.epochs,
            )
        )
    if aug.flip_x or aug.flip_y:
        out.append(T.RandomFlip(x=aug.flip_x, y=aug.flip_y))
    if aug.rotation is not None:
        out.append(T.GlobalRotation(aug.rotation))
    if aug.scaling is not None:
        out.append(T.GlobalScaling(aug.scaling))
    if aug.translation_std is not None:
        out.append(T.GlobalTranslation(aug.translation_std))
    if cfg.data.use_cameras and aug.image is not None:
        out.append(T.ImageAugment(aug.image.resize, aug.image.random_crop, aug.image.flip))
    if cfg.data.use_cameras and aug.view_dropout is not None:
        out.append(T.ViewDropout(aug.view_dropout.probability, aug.view_dropout.all_probability))
    if out:
        out.append(T.PointRangeFilter(cfg.data.grid))
        out.append(T.ObjectRangeFilter(cfg.data.grid))
    return out


def build_dataset(
    cfg: ExperimentConfig,
    split: str,
    mode: Mode,
    *,
    train: TrainConfig | None = None,
) -> torch.utils.data.Dataset[Sample]:
    """The data set of info split ``split`` (``train`` / ``val``, KITTI also ``test``).

    Args:
        mode: ``train`` (augmentation of ``train.augment``, ``train.min_points_in_gt``), ``val`` (ground truth,
            no augmentation) or ``test`` (no ground truth).
        train: the ``train:`` section (needed for ``mode="train"``).

    Raises:
        ValueError: in ``val`` mode, the ground truth the evaluation of ``split`` reads holds a NaN / inf or
            zero-size box (:mod:`perception.evaluation.gt_checks`): checked here, before any inference.
    """
    d = cfg.data
    if mode == "train" and train is None:
        raise ValueError("build_dataset(mode='train') needs the train config")
    common: dict[str, Any] = dict(
        class_names=d.class_names,
        grid=d.grid,
        infos_path=_infos_file(cfg, split),
        root=d.root,
        max_sweeps=d.max_sweeps,
        use_cameras=d.use_cameras,
        mode=mode,
    )
    if d.use_cameras:
        common["images"] = image_loader(cfg)
    if mode == "train":
        assert train is not None
        common.update(
            transforms=build_train_transforms(cfg, train),
            min_points_in_gt=train.min_points_in_gt,
            seed=train.seed,
        )
    if d.dataset == "nuscenes":
        from perception.datasets.nuscenes import NuScenesDataset
        from perception.evaluation.gt_checks import check_nuscenes_split

        nus = NuScenesDataset(**common, sweep_stride=d.sweep_stride, missing_sweeps=d.missing_sweeps)
        if mode == "val":
            assert d.version is not None
            check_nuscenes_split(d.root, d.version, eval_set_name(cfg, split))
        return nus
    from perception.datasets.kitti import KittiDataset
    from perception.evaluation.gt_checks import check_kitti_labels, kitti_label_dir

    kitti = KittiDataset(**common)
    if mode == "val":
        check_kitti_labels(kitti_label_dir(d.root), [i.frame_id for i in kitti.infos])
    return kitti


def image_loader(cfg: ExperimentConfig) -> Any:
    """The :class:`~perception.datasets.image_transforms.ImageLoader` of ``data.images`` (None: the files'
    resolution, ImageNet normalisation)."""
    from perception.datasets.image_transforms import ImageLoader

    im = cfg.data.images
    if im is None:
        return ImageLoader()
    return ImageLoader(
        size=im.size, scale=im.scale, cameras_off=im.cameras_off, missing=im.missing, norm=im.norm
    )


def collate_for(dataset: torch.utils.data.Dataset[Sample]) -> Callable[[Sequence[Sample]], Batch]:
    """The collate of ``dataset`` (a ``Subset`` is looked through): ``Batch.collate`` with its
    ``image_norm`` when it loads cameras, else ``Batch.collate``."""
    from perception.datasets.base import DetectionDataset

    base: Any = dataset
    while isinstance(base, torch.utils.data.Subset):
        base = base.dataset
    norm = base.image_norm if isinstance(base, DetectionDataset) else None
    return Batch.collate if norm is None else functools.partial(Batch.collate, image_norm=norm)


def build_train_sampler(
    dataset: torch.utils.data.Dataset[Sample], train: TrainConfig, dist: DistInfo
) -> torch.utils.data.Sampler[int]:
    """Sharded shuffled sampler, or CBGS (:class:`~perception.datasets.cbgs.ClassBalancedSampler`) with
    ``train.cbgs`` (the dataset must have ``info_class_names(index)``)."""
    n = len(dataset)  # type: ignore[arg-type]
    if not train.cbgs:
        return ShardedSampler(n, dist.world_size, dist.rank, shuffle=True, seed=train.seed)
    from perception.datasets.cbgs import ClassBalancedSampler

    names_of = getattr(dataset, "info_class_names", None)
    if names_of is None:
        raise TypeError(
            f"train.cbgs needs a dataset with info_class_names(index), got {type(dataset).__name__}"
        )
    return ClassBalancedSampler(
        [names_of(i) for i in range(n)],
        dataset.class_names,  # type: ignore[attr-defined]
        seed=train.seed,
        num_replicas=dist.world_size,
        rank=dist.rank,
    )
