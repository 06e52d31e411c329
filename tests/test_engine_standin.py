"""A tiny stand-in detector and synthetic dataset for the engine tests (plus tests of the loss protocol).

The stand-in implements the engine's protocol (``loss(batch)``, ``predict(batch)``) with a per-point MLP, a
per-sample mean pool and a linear layer that regresses the mean ground-truth box centre of each sample. It has
dropout (so restoring the torch generator matters for exact resumption) and BatchNorm (buffers in the state).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from perception.engine.trainer import TrainableModel
from perception.models.detector import total_loss
from perception.structures import Batch, Boxes3D, Detections, Points, Sample

CLASS_NAMES = ("car", "pedestrian")


class StandInDetector(torch.nn.Module):
    """Regress each sample's mean box centre ``(3,)`` from its points ``(N, 5)``."""

    def __init__(self, channels: int = 16, dropout: float = 0.1) -> None:
        super().__init__()
        self.point_mlp = torch.nn.Sequential(
            torch.nn.Linear(5, channels), torch.nn.BatchNorm1d(channels), torch.nn.ReLU()
        )
        self.drop = torch.nn.Dropout(dropout)
        self.out = torch.nn.Linear(channels, 3)
        self.nan_next = False  # tests set this to make the next loss NaN

    def _centres(self, batch: Batch) -> torch.Tensor:
        feats = self.point_mlp(batch.points)
        pooled = torch.zeros(batch.batch_size, feats.shape[1], dtype=feats.dtype, device=feats.device)
        pooled.index_add_(0, batch.batch_index, feats)
        counts = torch.bincount(batch.batch_index, minlength=batch.batch_size).clamp(min=1)
        return self.out(self.drop(pooled / counts[:, None].to(pooled.dtype)))

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        pred = self._centres(batch).float()
        target = torch.stack([b.center.mean(0) for b in batch.boxes]).to(pred)
        err = pred - target
        losses = {"loss_xy": (err[:, :2] ** 2).mean(), "loss_z": (err[:, 2] ** 2).mean()}
        if self.nan_next:
            self.nan_next = False
            losses["loss_z"] = losses["loss_z"] * math.nan
        return losses

    @torch.no_grad()
    def predict(self, batch: Batch) -> list[Detections]:
        centres = self._centres(batch).float()
        out = []
        for c in centres:
            box = torch.cat([c, torch.tensor([4.0, 2.0, 1.5, 0.0], device=c.device)])[None]
            out.append(Detections(Boxes3D(box), torch.ones(1), torch.zeros(1, dtype=torch.int64)))
        return out


class SyntheticSet(torch.utils.data.Dataset[Sample]):
    """``size`` samples; sample ``i`` has points scattered around boxes whose centres depend on ``i``."""

    def __init__(self, size: int = 16, points: int = 64, seed: int = 0) -> None:
        self.size, self.points, self.seed = size, points, seed
        self.epochs_seen: list[int] = []

    def __len__(self) -> int:
        return self.size

    def set_epoch(self, epoch: int) -> None:
        self.epochs_seen.append(epoch)

    def __getitem__(self, index: int) -> Sample:
        rng = np.random.default_rng([self.seed, index])
        centres = rng.uniform(-10, 10, size=(2, 3)).astype(np.float32)
        centres[:, 2] = rng.uniform(-1, 1, size=2)
        owner = rng.integers(0, 2, size=self.points)
        xyz = centres[owner] + rng.normal(0, 0.5, size=(self.points, 3)).astype(np.float32)
        pts = np.concatenate([xyz, rng.uniform(0, 1, (self.points, 1)), np.zeros((self.points, 1))], axis=1)
        boxes = np.concatenate([centres, np.tile([[4.0, 2.0, 1.5, 0.0]], (2, 1))], axis=1).astype(np.float32)
        return Sample(
            token=f"s{index:04d}",
            points=Points(torch.from_numpy(pts.astype(np.float32))),
            boxes=Boxes3D(torch.from_numpy(boxes)),
            labels=torch.zeros(2, dtype=torch.int64),
            class_names=CLASS_NAMES,
        )


def test_standin_follows_protocol() -> None:
    model = StandInDetector()
    assert isinstance(model, TrainableModel)
    batch = Batch.collate([SyntheticSet()[i] for i in range(3)])
    losses = model.loss(batch)
    assert set(losses) == {"loss_xy", "loss_z"}
    total = total_loss(losses)
    assert torch.allclose(total, losses["loss_xy"] + losses["loss_z"])
    model.eval()
    dets = model.predict(batch)
    assert len(dets) == 3 and all(len(d) == 1 for d in dets)


def test_total_loss_rejects_bad_terms() -> None:
    with pytest.raises(ValueError, match="non-empty dict"):
        total_loss({})
    with pytest.raises(TypeError, match="'loss_a' must be a torch.Tensor"):
        total_loss({"loss_a": 1.0})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="'loss_b' must be a scalar"):
        total_loss({"loss_b": torch.ones(3)})
    total = total_loss({"a": torch.tensor(1.5, dtype=torch.bfloat16), "b": torch.tensor([2.0])})
    assert total.dtype == torch.float32 and total.shape == () and float(total) == 3.5
