"""Ground-truth sampling ("copy-paste"): paste database objects into a scene, without collisions.

Per class, in the order of ``sample_counts``, the transform draws ``target - present`` objects of the class
(without replacement, uniformly from the filtered database) and pastes those that fit. An object is pasted at
its **original** position in its source sample's LiDAR frame (as OpenPCDet's ``DataBaseSampler``; no road-plane
adjustment). A candidate is accepted only if its bird's-eye-view rotated box has zero IoU
(:func:`perception.ops.iou3d.boxes_iou_bev`) with every box already in the scene (ground truth and objects
pasted before it), so pasted objects never collide. Candidates are checked greedily in draw order, so of two
candidates that overlap each other the first is kept (OpenPCDet rejects both). With ``rounds > 1`` the draw is
repeated for the classes still short of their target (OpenPCDet: one round).

For the accepted objects the scene's points inside their boxes (enlarged by ``remove_extra_width``) are removed
(:func:`perception.ops.points_in_boxes.points_in_boxes`; in a multi-sweep cloud with a ``time_lag`` channel and
boxes with velocity also those inside a box at their own time, :mod:`perception.datasets.box_motion`, the rule
the database cut the objects by, so a pasted object's trail replaces the scene there), the objects' points are
moved from box-relative to LiDAR coordinates and appended (their channels picked by name from the database's channels; ``time_lag`` is kept
as stored), and the boxes and labels are appended after the existing ones.

The "fade": ``set_epoch(epoch)`` switches the transform off (identity) from ``stop_epoch`` on, e.g. for the last
N epochs as TransFusion trains. With ``torch.utils.data.DataLoader`` workers, call ``set_epoch`` on the
dataset's transform before creating the epoch's iterator and do not use ``persistent_workers`` (workers hold a
copy of the transform made when they start).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping, Sequence

import numpy as np
import torch

from perception.ops.iou3d import boxes_iou_bev
from perception.ops.points_in_boxes import points_in_boxes
from perception.structures import TIME_LAG, Boxes3D, Points, Sample

from .box_motion import points_in_moving_box
from .gt_database import GTDatabase, GTDatabaseEntry

__all__ = ["GTSampling"]


class GTSampling:
    """Paste ground-truth objects from a :class:`GTDatabase` so each class reaches a target count per scene.

    Args:
        database: the object database.
        class_names: the detector's class list; samples must carry exactly this ``class_names``.
        sample_counts: class name -> target number of objects of that class per scene (present + pasted), e.g.
            ``{"car": 2, "pedestrian": 2, ...}`` (CenterPoint nuScenes) or ``{"Car": 15}`` (KITTI).
        min_points: class name -> minimum points of a database object to be pasted (classes not listed: 0).
        max_difficulty: paste only objects with ``difficulty <= max_difficulty`` (None: any).
        drop_difficulties: difficulty values never pasted (e.g. ``{-1}`` for KITTI).
        remove_extra_width: ``(3,)`` metres added to ``dx, dy, dz`` of a pasted box when removing the scene's
            points inside it (default no enlargement).
        rounds: draw rounds per class (1 = OpenPCDet; more rounds retry for classes still below target).
        stop_epoch: from this (0-based) epoch on the transform is off; None: never off.
        fade_last_epochs: alternative to ``stop_epoch``: off for the last N of ``total_epochs`` epochs.
        total_epochs: needed with ``fade_last_epochs``.

    Raises:
        ValueError: an unknown class, a negative count, a class with a positive count but no database objects
            left after filtering, or inconsistent epoch arguments.
    """

    def __init__(
        self,
        database: GTDatabase,
        class_names: Sequence[str],
        sample_counts: Mapping[str, int],
        min_points: Mapping[str, int] | None = None,
        max_difficulty: int | None = None,
        drop_difficulties: Collection[int] = (),
        remove_extra_width: Sequence[float] = (0.0, 0.0, 0.0),
        rounds: int = 1,
        stop_epoch: int | None = None,
        fade_last_epochs: int = 0,
        total_epochs: int | None = None,
    ) -> None:
        if not isinstance(database, GTDatabase):
            raise TypeError(f"GTSampling.database must be a GTDatabase, got {type(database).__name__}")
        self.class_names = tuple(class_names)
        self.sample_counts: dict[str, int] = {}
        for name, count in sample_counts.items():
            if name not in self.class_names:
                raise ValueError(
                    f"GTSampling.sample_counts has class {name!r} not in class_names {self.class_names}"
                )
            if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 0:
                raise ValueError(f"GTSampling.sample_counts[{name!r}] must be an int >= 0, got {count!r}")
            self.sample_counts[name] = int(count)
        self.database = database.filter(min_points or {}, max_difficulty, drop_difficulties)
        for name, count in self.sample_counts.items():
            if count > 0 and not self.database.entries(name):
                raise ValueError(
                    f"GTSampling: no database objects of class {name!r} left after filtering "
                    f"(min_points={dict(min_points or {})}, max_difficulty={max_difficulty}); set its count to 0"
                )
        width = tuple(float(v) for v in remove_extra_width)
        if len(width) != 3 or not all(math.isfinite(v) and v >= 0 for v in width):
            raise ValueError(
                f"GTSampling.remove_extra_width must be 3 finite values >= 0, got {remove_extra_width!r}"
            )
        self.remove_extra_width = width
        if not isinstance(rounds, int) or rounds < 1:
            raise ValueError(f"GTSampling.rounds must be an int >= 1, got {rounds!r}")
        self.rounds = rounds
        if fade_last_epochs:
            if stop_epoch is not None:
                raise ValueError("GTSampling: give either stop_epoch or fade_last_epochs, not both")
            if total_epochs is None or not 0 <= fade_last_epochs <= total_epochs:
                raise ValueError(
                    f"GTSampling.fade_last_epochs={fade_last_epochs} needs total_epochs >= it, got {total_epochs}"
                )
            stop_epoch = total_epochs - fade_last_epochs
        if stop_epoch is not None and stop_epoch < 0:
            raise ValueError(f"GTSampling.stop_epoch must be >= 0, got {stop_epoch}")
        self.stop_epoch = stop_epoch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Tell the transform the current (0-based) epoch; it is off when ``epoch >= stop_epoch``."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    @property
    def active(self) -> bool:
        return self.stop_epoch is None or self.epoch < self.stop_epoch

    def _channel_columns(self, channels: tuple[str, ...]) -> list[int]:
        missing = [c for c in channels if c not in self.database.point_channels]
        if missing:
            raise ValueError(
                f"GTSampling: sample point channels {channels} include {missing}, which the GT database "
                f"(channels {self.database.point_channels}) does not store"
            )
        return [self.database.point_channels.index(c) for c in channels]

    def _boxes_for(self, name: str, width: int) -> np.ndarray:
        boxes = self.database.boxes(name)
        if len(boxes) and boxes.shape[1] < width:
            raise ValueError(
                f"GTSampling: the scene's boxes have {width} columns (with velocity) but the GT database stores "
                f"{boxes.shape[1]}-column boxes"
            )
        return boxes[:, :width]

    def sample_objects(
        self, boxes: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator
    ) -> tuple[list[GTDatabaseEntry], torch.Tensor, torch.Tensor]:
        """Choose the objects to paste into a scene with ground truth ``boxes`` ``(K, 7|9)`` / ``labels`` ``(K,)``.

        Returns:
            The chosen database records, their boxes float32 ``(P, 7|9)`` (the scene's width) and labels int64
            ``(P,)``.
        """
        width = boxes.shape[1]
        occupied = boxes[:, :7].detach().cpu().float()
        chosen: list[GTDatabaseEntry] = []
        chosen_boxes: list[np.ndarray] = []
        chosen_labels: list[int] = []
        for name, target in self.sample_counts.items():
            label = self.class_names.index(name)
            pool = self._boxes_for(name, width)  # checks the box width even when nothing is needed
            need = target - int((labels == label).sum())
            if need <= 0:
                continue
            entries = self.database.entries(name)
            used: list[int] = []  # database indices drawn before (never drawn twice for one scene)
            for _ in range(self.rounds):
                available = np.setdiff1d(np.arange(len(pool)), np.asarray(used, dtype=np.int64))
                if need <= 0 or len(available) == 0:
                    break
                picks = available[rng.choice(len(available), size=min(need, len(available)), replace=False)]
                used.extend(int(p) for p in picks)
                cand = torch.from_numpy(pool[picks])
                free = (boxes_iou_bev(cand[:, :7], occupied) == 0).all(dim=1) if len(occupied) else None
                among = boxes_iou_bev(cand[:, :7], cand[:, :7]) > 0
                accepted: list[int] = []
                for i in range(len(cand)):
                    if (free is None or bool(free[i])) and not any(bool(among[i, j]) for j in accepted):
                        accepted.append(i)
                if accepted:
                    idx = torch.tensor(accepted)
                    occupied = torch.cat([occupied, cand[idx, :7]])
                    for i in accepted:
                        chosen.append(entries[int(picks[i])])
                        chosen_boxes.append(pool[int(picks[i])])
                        chosen_labels.append(label)
                    need -= len(accepted)
        out_boxes = (
            torch.from_numpy(np.stack(chosen_boxes))
            if chosen_boxes
            else torch.zeros((0, width), dtype=torch.float32)
        )
        return chosen, out_boxes, torch.tensor(chosen_labels, dtype=torch.int64)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if not self.active or not self.sample_counts:
            return sample
        if sample.class_names != self.class_names:
            raise ValueError(
                f"GTSampling was built for class_names {self.class_names}, sample {sample.token} has "
                f"{sample.class_names}"
            )
        columns = self._channel_columns(sample.points.channels)
        chosen, new_boxes, new_labels = self.sample_objects(sample.boxes.tensor, sample.labels, rng)
        if not chosen:
            return sample
        device = sample.points.tensor.device
        pasted = []
        for entry in chosen:
            obj = self.database.load(entry)
            pts = obj.points[:, columns].copy()
            pts[:, :3] += obj.box[:3]
            pasted.append(pts)
        scene = sample.points.tensor
        removal = new_boxes.clone()
        removal[:, 3:6] += torch.tensor(self.remove_extra_width)
        inside, _ = points_in_boxes(scene.detach().cpu(), removal[:, :7].contiguous())
        hit = (inside >= 0).numpy()
        # and the trails: each point tested at its own time
        if TIME_LAG in sample.points.channels and removal.shape[1] >= 9:
            xyz = scene[:, :3].detach().cpu().numpy()
            lag = sample.points.channel(TIME_LAG).detach().cpu().numpy()
            for box in removal[:, :9].numpy():
                hit |= points_in_moving_box(xyz, lag, box)
        keep = torch.from_numpy(~hit).to(device)
        points = torch.cat([scene[keep], torch.from_numpy(np.concatenate(pasted)).to(device)])
        return dataclasses.replace(
            sample,
            points=Points(points, sample.points.channels),
            boxes=Boxes3D(torch.cat([sample.boxes.tensor, new_boxes.to(device)])),
            labels=torch.cat([sample.labels, new_labels.to(device)]),
        )

    def __repr__(self) -> str:
        return (
            f"GTSampling(sample_counts={self.sample_counts}, rounds={self.rounds}, stop_epoch={self.stop_epoch}, "
            f"objects={len(self.database)})"
        )
