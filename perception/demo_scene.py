"""The demo's steps: load one keyframe of a nuScenes-format dataset through the dataset class
(:class:`~perception.datasets.nuscenes.NuScenesDataset`, the one nuScenes loader), draw / summarise it; run
the shipped detector on the validation split and score it with the official devkit. Used by ``tools/demo.py``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from nuscenes import NuScenes

from perception.datasets.nuscenes import NuScenesDataset, infos_path_for
from perception.datasets.nuscenes_infos import create_nuscenes_infos
from perception.evaluation.nuscenes import NuScenesMetrics
from perception.formats.nuscenes_points import pick_sweeps, sweep_chain
from perception.grid import VoxelGrid
from perception.structures import Detections, Sample
from perception.viz.frames import LidarAxes, lidar_axes


@dataclass
class LoadedSample:
    """The first keyframe of the validation split, loaded through :class:`NuScenesDataset`.

    Attributes:
        sample: the dataset's typed sample (``val`` mode: points with ``time_lag`` and boxes ``(K, 9)`` in the
            LiDAR frame, both inside the grid by its rule; the camera rig and images when the keyframe has
            cameras).
        scene_name: nuScenes scene name.
        num_sweeps: LiDAR sweeps merged into ``sample.points`` (keyframe included): ``max_sweeps`` where the data
            has that many, fewer where the keyframe has fewer earlier sweeps on disk (see :attr:`sweeps_note`).
        max_sweeps: sweeps asked for (the config's ``data.max_sweeps``, keyframe included).
        num_keyframe_points: points of the keyframe sweep in ``sample.points``.
        num_lidar_pts: the annotations' ``num_lidar_pts`` for the ``K`` boxes, in order.
        annotation_tokens: the ``sample_annotation`` tokens of the ``K`` boxes, in order.
        skipped: annotations the sample leaves out, by detection name (``"ignore"`` for categories outside the
            ten detection classes): other classes than ``class_names``, or centre outside the grid.
        table_counts: number of records per devkit table.
        frame: the LiDAR frame of the data (nuScenes ``LIDAR_TOP``: x right, y forward), for picture labels.
    """

    sample: Sample
    scene_name: str
    num_sweeps: int
    max_sweeps: int
    num_keyframe_points: int
    num_lidar_pts: list[int]
    annotation_tokens: list[str]
    skipped: Counter[str]
    table_counts: dict[str, int]
    frame: LidarAxes

    @property
    def sweeps_note(self) -> str | None:
        """Why fewer sweeps than ``data.max_sweeps`` were merged, or None when all of them were."""
        if self.num_sweeps >= self.max_sweeps:
            return None
        return (
            f"data.max_sweeps is {self.max_sweeps} but this keyframe has only {self.num_sweeps - 1} earlier "
            f"sweep(s) on disk, so {self.num_sweeps} were merged. A synthetic data set written with fewer sweeps "
            f"than the config asks for (e.g. by 'create_data.py synthetic' without --sweeps, default 2): write it "
            f"again with the config's synthetic.sweeps (or remove the folder and the demo writes it), or set "
            f"data.max_sweeps={self.num_sweeps}"
        )


def load_demo_sample(
    root: Path,
    version: str,
    class_names: Sequence[str],
    grid: VoxelGrid,
    max_sweeps: int,
    sweep_stride: int = 1,
) -> LoadedSample:
    """Load the first keyframe of the validation split (``mini_val`` / ``val``) through the dataset.

    Creates the info files of ``max_sweeps`` at ``sweep_stride`` (the config's ``data`` keys) in ``root`` first
    when they are missing (:func:`~perception.datasets.nuscenes_infos.create_nuscenes_infos`, without the GT
    database). Cameras are loaded when the keyframe has any.

    Raises:
        ValueError: the validation split has no sample.
    """
    root = Path(root)
    path = infos_path_for(root, version, sweep_chain(max_sweeps, sweep_stride), "val")
    if not path.is_file():
        create_nuscenes_infos(
            root,
            version,
            max_sweeps=max_sweeps,
            sweep_stride=sweep_stride,
            progress=False,
            with_gt_database=False,
        )
    dataset = NuScenesDataset(
        infos_path=path,
        root=root,
        class_names=class_names,
        grid=grid,
        max_sweeps=max_sweeps,
        sweep_stride=sweep_stride,
        mode="val",
    )
    if len(dataset) == 0:
        raise ValueError(f"{path} holds no sample")
    info = dataset.infos[0]
    dataset.use_cameras = bool(info.cameras)
    sample = dataset[0]
    kept = dataset.box_mask(0)  # the annotations ``sample`` holds as boxes, in order
    nusc = NuScenes(version=version, dataroot=str(root), verbose=False)
    return LoadedSample(
        sample=sample,
        scene_name=info.scene_name,
        num_sweeps=1 + len(pick_sweeps(info.sweeps, max_sweeps, sweep_stride)),
        max_sweeps=max_sweeps,
        num_keyframe_points=int((sample.points.channel("time_lag") == 0).sum()),
        num_lidar_pts=[int(n) for n in info.num_lidar_pts[kept]],
        annotation_tokens=[str(t) for t in info.annotation_tokens[kept]],
        skipped=Counter(str(n) for n in info.gt_names[~kept]),
        table_counts={t: len(getattr(nusc, t)) for t in nusc.table_names},
        frame=lidar_axes("nuscenes"),
    )


def write_pictures(
    loaded: LoadedSample, point_range: Sequence[float], out_dir: Path
) -> tuple[Path, Path | None]:
    """Write ``render.png`` (open3d off-screen render), ``bev.png`` and (when the sample has cameras)
    ``cameras.png`` into ``out_dir``; returns the BEV and camera paths.

    Where open3d cannot render off-screen, ``render.png`` is left out and the reason printed (the BEV and camera
    pictures are written in any case); see :mod:`perception.viz.pictures`.
    """
    import matplotlib.pyplot as plt

    from perception.viz.bev import draw_bev, draw_camera, save_figure
    from perception.viz.o3d_render import OffscreenUnavailableError, render_scene, save_png
    from perception.viz.pictures import view_camera
    from perception.viz.scene import scene_from_sample

    s = loaded.sample
    try:
        image = render_scene(scene_from_sample(s), view_camera("chase", point_range, (1280, 960)))
        print(f"open3d render:  {save_png(image, out_dir / 'render.png')}")
    except OffscreenUnavailableError as e:
        print(f"open3d render:  not written ({e}); see the BEV and camera pictures")
    fig, ax = plt.subplots(figsize=(10, 10))
    draw_bev(ax, s.points, s.boxes, s.labels, s.class_names, point_range, frame=loaded.frame)
    ax.set_title(
        f"{loaded.scene_name} sample {s.token[:8]}: {len(s.points)} points from {loaded.num_sweeps} sweeps, "
        f"{len(s.boxes)} boxes"
    )
    bev = save_figure(fig, out_dir / "bev.png")
    cams = None
    if s.images is not None and s.cameras is not None:
        n = len(s.cameras)
        fig, axes = plt.subplots(2, (n + 1) // 2, figsize=(6 * ((n + 1) // 2), 7), squeeze=False)
        for i, ax in enumerate(axes.flat):
            if i < n:
                draw_camera(ax, s.images[i], s.cameras, i, s.boxes, s.labels, s.class_names)
            else:
                ax.axis("off")
        cams = save_figure(fig, out_dir / "cameras.png")
    return bev, cams


def summarize(loaded: LoadedSample, t_generate: float, t_load: float) -> str:
    """Markdown tables: dataset size, the loaded sample, and boxes per class with their LiDAR points."""
    s = loaded.sample
    lines = [
        "| dataset table | records |",
        "|---|---:|",
        *[f"| {k} | {v} |" for k, v in loaded.table_counts.items()],
        "",
        "| loaded sample | value |",
        "|---|---:|",
        f"| scene | {loaded.scene_name} |",
        f"| sweeps merged (keyframe + earlier) | {loaded.num_sweeps} of data.max_sweeps {loaded.max_sweeps} |",
        f"| keyframe points (inside the point-cloud range) | {loaded.num_keyframe_points} |",
        f"| all points (inside the point-cloud range) | {len(s.points)} |",
        f"| max time lag (s) | {float(s.points.channel('time_lag').max()) if len(s.points) else 0.0:.3f} |",
        f"| ground-truth boxes (detection classes) | {len(s.boxes)} |",
        f"| annotations left out (other classes, outside the range) | {sum(loaded.skipped.values())} |",
        f"| cameras | {0 if s.cameras is None else len(s.cameras)} |",
        f"| generate time (s) | {t_generate:.1f} |",
        f"| load time (s) | {t_load:.1f} |",
        "",
        "| class | boxes | LiDAR points in boxes (num_lidar_pts) | mean speed (m/s) |",
        "|---|---:|---:|---:|",
    ]
    speeds = torch.linalg.norm(s.boxes.tensor[:, 7:9], dim=1) if len(s.boxes) else torch.zeros(0)
    for i, name in enumerate(s.class_names):
        m = s.labels == i
        n = int(m.sum())
        pts = sum(p for p, keep in zip(loaded.num_lidar_pts, m.tolist(), strict=True) if keep)
        mean_speed = float(speeds[m].mean()) if n else 0.0
        lines.append(f"| {name} | {n} | {pts} | {mean_speed:.2f} |")
    return "\n".join(lines)


@dataclass
class DemoDetections:
    """What :func:`detect_and_score` found and how the official devkit scored it.

    Attributes:
        detections: sample token -> :class:`Detections` (boxes ``(D, 9)`` in the LiDAR frame, scores, labels) for
            every sample of the evaluated split.
        metrics: the devkit's metrics (``metrics.output_dir`` holds ``metrics_summary.json``).
        eval_set: devkit split that was scored (``mini_val`` for v1.0-mini).
        results_path: the nuScenes results JSON that was scored.
        seconds_inference: wall time of model building, weight loading and inference.
        seconds_eval: wall time of the devkit evaluation.
    """

    detections: dict[str, Detections]
    metrics: NuScenesMetrics
    eval_set: str
    results_path: Path
    seconds_inference: float
    seconds_eval: float


def detect_and_score(
    checkpoint: Path,
    detector_config: Path,
    data_root: Path,
    out_dir: Path,
    *,
    overrides: Sequence[str] = (),
) -> DemoDetections:
    """Run a trained detector on the validation split of a nuScenes-format data set and score it officially.

    Args:
        checkpoint: a ``tools/train.py`` checkpoint (or a bare ``state_dict`` file) of ``detector_config``'s model.
        detector_config: the experiment YAML the checkpoint was trained with; its ``data.root`` is replaced by
            ``data_root`` (the model's own voxel size, range and ``max_sweeps`` are kept).
        data_root: nuScenes dataroot holding ``<data.version>/`` of the detector config; info files of the
            detector's ``max_sweeps`` are created there when missing.
        out_dir: receives ``results_nusc.json`` and the devkit's ``metrics_summary.json`` /
            ``metrics_details.json``.
        overrides: further ``--set`` items for the detector config.

    Raises:
        FileNotFoundError: a missing checkpoint, config or data set.
        ValueError: the checkpoint was trained on other classes than the config names.
        perception.engine.checkpoint.CheckpointError: the weights do not fit the model.
    """
    import time

    from perception.config import load_config
    from perception.engine.checkpoint import load_model_weights
    from perception.engine.data import build_dataset, eval_set_name, prepare_data
    from perception.engine.inference import run_inference
    from perception.engine.precision import resolve_precision
    from perception.evaluation.nuscenes import (
        detections_to_nusc_results,
        evaluate_nuscenes,
        write_results_json,
    )
    from perception.models.build import build_detector

    checkpoint, data_root = Path(checkpoint).absolute(), Path(data_root).absolute()
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    cfg = load_config(detector_config, [f"data.root={data_root}", *overrides])
    if cfg.model is None or cfg.data.dataset != "nuscenes" or cfg.data.version is None:
        raise ValueError(f"{detector_config}: needs a 'model:' section and nuScenes data with a version")
    if not (data_root / cfg.data.version).is_dir():
        raise FileNotFoundError(f"{data_root} holds no {cfg.data.version} data set")
    t0 = time.perf_counter()
    prepare_data(cfg)
    dataset = build_dataset(cfg, "val", "val")
    model = build_detector(cfg.model, cfg.data)
    load_model_weights(model, checkpoint, strict=True).check_class_names(cfg.data.class_names)
    dets = run_inference(model, dataset, precision=resolve_precision("auto", "cpu"), show_progress=False)
    t1 = time.perf_counter()
    nusc = NuScenes(version=cfg.data.version, dataroot=str(data_root), verbose=False)
    eval_set = eval_set_name(cfg, "val")
    results = write_results_json(
        detections_to_nusc_results(nusc, dets, cfg.data.class_names), Path(out_dir) / "results_nusc.json"
    )
    metrics = evaluate_nuscenes(nusc, results, eval_set, out_dir)
    return DemoDetections(dets, metrics, eval_set, results, t1 - t0, time.perf_counter() - t1)


def write_detection_pictures(
    loaded: LoadedSample,
    detections: Detections,
    point_range: Sequence[float],
    out_dir: Path,
    *,
    score_threshold: float = 0.2,
) -> list[Path]:
    """Pictures of predictions vs ground truth of one sample: ``detections_render.png`` (open3d, when it can
    render off-screen) and ``detections_bev.png`` (matplotlib top view, always); returns the files written.

    Args:
        detections: predictions in ``loaded.sample``'s LiDAR frame; those below ``score_threshold`` are not drawn.
    """
    from perception.viz.pictures import write_sample_pictures

    pics = write_sample_pictures(
        loaded.sample,
        out_dir,
        point_range,
        detections=detections,
        stem="detections_",
        matplotlib_too=True,
        score_threshold=score_threshold,
        frame=loaded.frame,
    )
    return pics.paths
