"""Inference over a data set, saving / loading detections, and official evaluation of them.

Detections files (``--save-dets``) are ``torch.save`` dicts loadable with ``weights_only=True``:
``{"format_version": 1, "class_names": [...], "detections": {token: {"boxes": (N, 7|9) float32,
"scores": (N,) float32, "labels": (N,) int64}}}`` in each sample's LiDAR frame, so ``tools/test.py --from-dets``
re-scores them without running the model.

Evaluation: nuScenes through the official devkit (:func:`perception.evaluation.nuscenes.evaluate_nuscenes`,
``metrics_summary.json`` in the output folder); KITTI by writing the official 16-column result files
(``<out>/data/<frame>.txt``) and scoring them against ``training/label_2`` with the devkit's semantics
(:func:`perception.evaluation.kitti.evaluate`, strict and loose IoU thresholds), the AP blocks of the devkit's
Python port logged and written to ``<out>/kitti_ap.txt`` (:mod:`perception.evaluation.kitti_report`); the KITTI
test split has no labels, :func:`write_kitti_results` writes its result files only. Both first check the
ground truth they read (:mod:`perception.evaluation.gt_checks`): a NaN / inf or zero-size box is a
``ValueError`` naming it.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from perception.config_schema import ExperimentConfig
from perception.engine.amp import MixedPrecision
from perception.engine.checkpoint import atomic_torch_save
from perception.engine.data import collate_for
from perception.engine.distributed import DistInfo, gather_object
from perception.engine.logger import progress
from perception.engine.precision import InferencePrecision
from perception.structures import Boxes3D, Detections

__all__ = [
    "DETS_FORMAT_VERSION",
    "evaluate_detections",
    "load_detections",
    "run_inference",
    "save_detections",
    "write_kitti_results",
]

logger = logging.getLogger(__name__)
DETS_FORMAT_VERSION = 1


@torch.no_grad()
def run_inference(
    model: torch.nn.Module,
    dataset: torch.utils.data.Dataset[Any],
    *,
    batch_size: int = 1,
    workers: int = 0,
    device: torch.device | str = "cpu",
    amp: bool = False,
    precision: InferencePrecision | None = None,
    show_progress: bool = True,
    dist: DistInfo | None = None,
) -> dict[str, Detections]:
    """``model.predict`` on every sample of ``dataset`` in order, in eval mode.

    Args:
        amp: mixed precision as in training (:class:`~perception.engine.amp.MixedPrecision`: bf16 on the CPU,
            fp16 on a GPU).
        precision: the inference precision (:func:`~perception.engine.precision.resolve_precision`); used instead
            of ``amp`` when given.
        dist: a multi-process job (``tools/test.py --launcher pytorch``): rank ``r`` of ``W`` runs the samples
            ``r, r + W, r + 2W, ...`` (no padding, no sample twice) and rank 0 gathers every rank's detections
            (a collective: every rank must call it). None or a single process: all samples here.

    Returns:
        sample token -> :class:`Detections` (on the CPU), in dataset order; on ranks other than 0 of a
        multi-process job an empty dict (rank 0 holds them all).

    Raises:
        ValueError: the model returns a wrong number of detections or a duplicate token appears.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if dist is not None and dist.distributed:
        size = len(dataset)  # type: ignore[arg-type]
        shard = torch.utils.data.Subset(dataset, range(dist.rank, size, dist.world_size))
        mine = run_inference(
            model, shard, batch_size=batch_size, workers=workers, device=device, amp=amp, precision=precision,
            show_progress=show_progress and dist.is_main,
        )  # fmt: skip
        parts = gather_object(list(mine.items()), dist)
        return {} if parts is None else _interleave(parts, size)
    device = torch.device(device)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_for(dataset),
        generator=torch.Generator().manual_seed(
            0
        ),  # the loader's seed draw leaves the global generator alone
    )
    mp = MixedPrecision(amp, device)
    was_training = model.training
    model.eval()
    out: dict[str, Detections] = {}
    try:
        for batch in progress(loader, total=len(loader), desc="inference", enabled=show_progress):
            batch = batch.to(device)
            with mp.autocast() if precision is None else precision.autocast(device):
                dets = model.predict(batch)  # type: ignore[operator]
            if len(dets) != batch.batch_size:
                raise ValueError(
                    f"model.predict returned {len(dets)} results for a batch of {batch.batch_size}"
                )
            for token, d in zip(batch.tokens, dets, strict=True):
                if token in out:
                    raise ValueError(f"sample token {token!r} appears twice in the data set")
                out[token] = Detections(
                    Boxes3D(d.boxes.tensor.detach().float().cpu()),
                    d.scores.detach().float().cpu(),
                    d.labels.detach().cpu(),
                )
    finally:
        model.train(was_training)
    return out


def _interleave(parts: list[list[tuple[str, Detections]]], size: int) -> dict[str, Detections]:
    """Rank ``r``'s results of samples ``r, r + W, ...`` (``W = len(parts)``) -> one dict in dataset order."""
    world = len(parts)
    if sum(len(p) for p in parts) != size:
        raise ValueError(f"the ranks returned {[len(p) for p in parts]} results for a data set of {size}")
    out: dict[str, Detections] = {}
    for i in range(size):
        token, d = parts[i % world][i // world]
        if token in out:
            raise ValueError(f"sample token {token!r} appears twice in the data set")
        out[token] = d
    return out


def save_detections(
    dets: Mapping[str, Detections], class_names: tuple[str, ...] | list[str], path: str | os.PathLike[str]
) -> Path:
    """Write detections atomically (see the module docstring for the format)."""
    data = {
        "format_version": DETS_FORMAT_VERSION,
        "class_names": list(class_names),
        "detections": {
            t: {"boxes": d.boxes.tensor.cpu(), "scores": d.scores.cpu(), "labels": d.labels.cpu()}
            for t, d in dets.items()
        },
    }
    return atomic_torch_save(data, path)


def load_detections(path: str | os.PathLike[str]) -> tuple[dict[str, Detections], tuple[str, ...]]:
    """Read a file of :func:`save_detections`: (token -> detections, class names).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a detections file of this format (the message says what is wrong).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"detections file not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"{path}: cannot be loaded as a detections file ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(data, dict) or data.get("format_version") != DETS_FORMAT_VERSION:
        raise ValueError(f"{path}: not a detections file of format version {DETS_FORMAT_VERSION}")
    out = {}
    for token, d in data["detections"].items():
        try:
            out[token] = Detections(Boxes3D(d["boxes"]), d["scores"], d["labels"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: detections of sample {token!r} are malformed: {exc}") from exc
    return out, tuple(data["class_names"])


# ------------------------------------------------------------------------------------------------------------
def evaluate_detections(
    cfg: ExperimentConfig, dets: Mapping[str, Detections], split: str, out_dir: str | os.PathLike[str]
) -> dict[str, float]:
    """Score ``dets`` of info split ``split`` officially; results go to ``out_dir``.

    Returns:
        flat metrics (nuScenes: ``mAP``, ``NDS``, ``mATE``, ..., ``<class>_AP``; KITTI: AP in percent such as
        ``Car_3d_R40_moderate``); also written to ``out_dir/metrics.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.data.dataset == "nuscenes":
        metrics = _evaluate_nuscenes(cfg, dets, split, out)
    else:
        metrics = _evaluate_kitti(cfg, dets, split, out)
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
    (out / "metrics.json").write_text(json.dumps(clean, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return metrics


def _evaluate_nuscenes(
    cfg: ExperimentConfig, dets: Mapping[str, Detections], split: str, out: Path
) -> dict[str, float]:
    from nuscenes import NuScenes

    from perception.engine.data import eval_set_name
    from perception.evaluation.gt_checks import check_nuscenes_ground_truth
    from perception.evaluation.nuscenes import (
        detections_to_nusc_results,
        evaluate_nuscenes,
        format_metrics,
        write_results_json,
    )

    nusc = NuScenes(version=cfg.data.version, dataroot=str(cfg.data.root), verbose=False)
    check_nuscenes_ground_truth(nusc, eval_set_name(cfg, split))  # a ValueError, not the devkit's assert
    results = detections_to_nusc_results(nusc, dets, cfg.data.class_names)
    path = write_results_json(results, out / "results_nusc.json")
    metrics = evaluate_nuscenes(nusc, path, eval_set_name(cfg, split), out)
    logger.info("nuScenes evaluation (%s):\n%s", eval_set_name(cfg, split), format_metrics(metrics))
    return metrics.to_flat_dict()


def _evaluate_kitti(
    cfg: ExperimentConfig, dets: Mapping[str, Detections], split: str, out: Path
) -> dict[str, float]:
    from perception.evaluation.gt_checks import check_kitti_labels, kitti_label_dir
    from perception.evaluation.kitti import evaluate as kitti_evaluate
    from perception.evaluation.kitti_report import REPORT_FILE, official_report
    from perception.formats.kitti_labels import load_label_dirs

    gt_dir = kitti_label_dir(cfg.data.root)
    frame_ids = sorted(_kitti_split_infos(cfg, dets, split))
    check_kitti_labels(gt_dir, frame_ids)
    data_dir = write_kitti_results(cfg, dets, split, out)
    classes = [
        c for c in cfg.data.class_names if c.lower() in ("car", "pedestrian", "cyclist", "van", "truck")
    ]
    names, gts, dts = load_label_dirs(gt_dir, data_dir, frame_ids)
    result = kitti_evaluate(gts, dts, classes, loose=True, frame_ids=names)
    report = official_report(result)
    (out / REPORT_FILE).write_text(report, encoding="utf-8")
    logger.info("KITTI evaluation (%s, %d frames):\n%s", split, len(names), report.rstrip("\n"))
    return dict(result.ap)


def _kitti_split_infos(cfg: ExperimentConfig, dets: Mapping[str, Detections], split: str) -> dict[str, Any]:
    """frame id -> info of KITTI split ``split``; ``ValueError`` unless ``dets`` covers exactly its frames."""
    from perception.datasets.kitti_infos import infos_path, load_kitti_infos

    infos = {i.frame_id: i for i in load_kitti_infos(infos_path(cfg.data.root, split))}
    missing = sorted(set(infos) - set(dets))
    extra = sorted(set(dets) - set(infos))
    if missing or extra:
        raise ValueError(
            f"detections must cover exactly the {len(infos)} frames of KITTI split {split!r}: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(extra)} extra (e.g. {extra[:3]})"
        )
    return infos


def write_kitti_results(
    cfg: ExperimentConfig, dets: Mapping[str, Detections], split: str, out_dir: str | os.PathLike[str]
) -> Path:
    """Write one KITTI result file per frame of KITTI split ``split`` to ``out_dir/data/<frame>.txt``.

    The official 16-column format (camera-2 rectified frame, see :func:`kitti_objects`); a frame without
    detections gets an empty file, as the benchmark's submission format needs. This is all ``--split test``
    does (no labels: nothing is scored); ``val`` scores these files.

    Returns:
        the ``data`` folder.

    Raises:
        ValueError: ``dets`` does not cover exactly the split's frames.
    """
    from perception.formats.kitti_labels import write_result_file

    infos = _kitti_split_infos(cfg, dets, split)
    data_dir = Path(out_dir) / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    for fid, info in infos.items():
        write_result_file(data_dir / f"{fid}.txt", kitti_objects(dets[fid], info, cfg.data.class_names))
    return data_dir


def kitti_objects(dets: Detections, info: Any, class_names: tuple[str, ...]) -> Any:
    """LiDAR-frame detections of one KITTI frame -> :class:`KittiObjects` for a result file.

    Boxes go to the rectified camera frame (bottom centre, ``[h, w, l]``, ``rotation_y``); the 2D box is the
    bounding rectangle of the projected 3D corners clipped to the image; ``alpha = rotation_y - atan2(x, z)``.
    Boxes entirely behind the camera or projecting outside the image are dropped (they cannot be matched).
    """
    from perception.datasets.kitti_calib import boxes_lidar_to_camera
    from perception.formats.kitti_labels import KittiObjects

    boxes = dets.boxes.tensor.double().numpy()
    if len(boxes) == 0:
        return KittiObjects.empty(with_score=True)
    calib, (h, w) = info.calib, info.image_size
    corners = dets.boxes.corners().double().numpy().reshape(-1, 3)
    uv, depth = calib.project_velo(corners)
    uv, depth = uv.reshape(-1, 8, 2), depth.reshape(-1, 8)
    front = (depth > 0).all(axis=1)
    uv = np.where(front[:, None, None], uv, 0.0)
    bbox = np.stack(
        [
            np.clip(uv[:, :, 0].min(1), 0, w - 1),
            np.clip(uv[:, :, 1].min(1), 0, h - 1),
            np.clip(uv[:, :, 0].max(1), 0, w - 1),
            np.clip(uv[:, :, 1].max(1), 0, h - 1),
        ],
        axis=1,
    )
    keep = front & (bbox[:, 2] > bbox[:, 0]) & (bbox[:, 3] > bbox[:, 1])
    loc, dims, ry = boxes_lidar_to_camera(boxes[keep], calib)
    alpha = ry - np.arctan2(loc[:, 0], loc[:, 2])
    alpha = alpha - np.floor(alpha / (2 * np.pi) + 0.5) * 2 * np.pi
    labels = dets.labels.numpy()[keep]
    n = int(keep.sum())
    return KittiObjects(
        names=np.array([class_names[i] for i in labels], dtype=object) if n else np.zeros(0, "<U1"),
        truncated=np.full(n, -1.0),
        occluded=np.full(n, -1),
        alpha=alpha,
        bbox=bbox[keep],
        dimensions=dims,
        location=loc,
        rotation_y=ry,
        score=dets.scores.double().numpy()[keep],
    )
